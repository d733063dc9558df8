//! Checks the published X-Authentication test vectors both ways.

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use serde::Deserialize;
use tower::{ServiceBuilder, ServiceExt, service_fn};
use tower_courier::auth::{
    Key, KeyId, KeyRing, SignatureHeader, SignedParts, VerifyLayer, body_digest,
};
use tower_courier::clock::ManualClock;

#[derive(Debug, Deserialize)]
struct VectorFile {
    vectors: Vec<Vector>,
}

#[derive(Debug, Deserialize)]
struct Vector {
    name: String,
    secret: String,
    kid: String,
    ts: String,
    nonce: String,
    method: String,
    path_and_query: String,
    body: String,
    body_digest: String,
    string_to_sign: String,
    signature: String,
    header: String,
}

impl Vector {
    fn body_bytes(&self) -> Vec<u8> {
        STANDARD.decode(&self.body).expect("vector body is base64")
    }

    fn key(&self) -> Key {
        Key::from_base64(&self.kid, &self.secret).expect("vector secret is a valid key")
    }
}

fn vectors() -> Vec<Vector> {
    let text = include_str!("vectors/x-authentication.json");
    let file: VectorFile = serde_json::from_str(text).expect("vector file is valid JSON");
    assert!(file.vectors.len() >= 5, "expected at least five vectors");
    file.vectors
}

#[test]
fn vectors_compute_from_inputs() {
    for vector in vectors() {
        let name = &vector.name;
        let digest = body_digest(&vector.body_bytes());
        assert_eq!(digest, vector.body_digest, "{name}: body digest");

        let parts = SignedParts {
            kid: &vector.kid,
            ts: &vector.ts,
            nonce: &vector.nonce,
            method: &vector.method,
            path_and_query: &vector.path_and_query,
            body_digest: &digest,
        };
        let string_to_sign = parts.string_to_sign();
        assert_eq!(
            string_to_sign, vector.string_to_sign,
            "{name}: string to sign"
        );

        let signature = vector.key().sign(string_to_sign.as_bytes());
        assert_eq!(
            STANDARD.encode(signature),
            vector.signature,
            "{name}: signature"
        );

        let timestamp = vector.ts.parse().unwrap();
        let header =
            SignatureHeader::new(&vector.kid, timestamp, &vector.nonce, signature).unwrap();
        assert_eq!(header.to_string(), vector.header, "{name}: header");
    }
}

#[test]
fn vectors_parse_to_their_fields() {
    for vector in vectors() {
        let header = SignatureHeader::parse(vector.header.as_bytes()).unwrap();

        assert_eq!(header.kid(), vector.kid, "{}", vector.name);
        assert_eq!(header.ts(), vector.ts, "{}", vector.name);
        assert_eq!(header.nonce(), vector.nonce, "{}", vector.name);
        assert_eq!(
            STANDARD.encode(header.signature()),
            vector.signature,
            "{}",
            vector.name
        );
    }
}

#[tokio::test]
async fn vectors_verify_once_then_replay() {
    let vectors = vectors();
    let mut builder = KeyRing::builder().signing_key(vectors[0].key());
    let mut kids = vec![vectors[0].kid.clone()];
    for vector in &vectors {
        if !kids.contains(&vector.kid) {
            builder = builder.key(vector.key());
            kids.push(vector.kid.clone());
        }
    }
    let keys = builder.build().unwrap();
    let clock = ManualClock::new(UNIX_EPOCH);
    let layer = VerifyLayer::new(keys).clock(Arc::new(clock.clone()));

    for vector in &vectors {
        let ts: u64 = vector.ts.parse().unwrap();
        clock.set(UNIX_EPOCH + Duration::from_secs(ts));

        let first = send(&layer, vector).await;
        assert_eq!(
            first.status(),
            StatusCode::OK,
            "{}: first send",
            vector.name
        );
        let echoed = http_body_util::BodyExt::collect(first.into_body())
            .await
            .unwrap();
        let expected = format!("{} {}", vector.kid, vector.body_bytes().len());
        assert_eq!(echoed.to_bytes(), expected, "{}: handler saw", vector.name);

        let second = send(&layer, vector).await;
        assert_eq!(
            second.status(),
            StatusCode::UNAUTHORIZED,
            "{}: replay",
            vector.name
        );
    }
}

/// Sends a vector's request through the layer to a handler that returns
/// the key id and the body length it received.
async fn send(
    layer: &VerifyLayer,
    vector: &Vector,
) -> Response<tower_courier::body::ResponseBody<Full<Bytes>>> {
    let service = ServiceBuilder::new()
        .layer(layer.clone())
        .service(service_fn(|request: Request<Full<Bytes>>| async move {
            let kid = request.extensions().get::<KeyId>().unwrap().clone();
            let body = http_body_util::BodyExt::collect(request.into_body()).await?;
            let text = format!("{kid} {}", body.to_bytes().len());
            Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from(text))))
        }));

    let request = Request::builder()
        .method(vector.method.as_str())
        .uri(vector.path_and_query.as_str())
        .header("X-Authentication", vector.header.as_str())
        .body(Full::new(Bytes::from(vector.body_bytes())))
        .unwrap();
    service.oneshot(request).await.unwrap()
}
