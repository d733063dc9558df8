//! Adversarial cases of the X-Authentication layers, driven in process
//! over a small handler with `oneshot`.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, WWW_AUTHENTICATE};
use http::{Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Full};
use tower::{Service, ServiceBuilder, ServiceExt, service_fn};
use tower_courier::BoxError;
use tower_courier::auth::{
    Key, KeyId, KeyRing, RejectReason, SignError, SignLayer, SignedParts, VerifyLayer, body_digest,
};
use tower_courier::body::ResponseBody;
use tower_courier::clock::ManualClock;
use tower_courier::store::memory::MemoryReplayStore;
use tower_courier::store::{ReplayStore, StoreError, StoreErrorKind};

const SECRET: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
const KID: &str = "orders";
const NOW: u64 = 1_700_000_000;
const UNAUTHORIZED_BODY: &str = r#"{"type":"about:blank","title":"Unauthorized","status":401}"#;

type TestResponse = Response<ResponseBody<Full<Bytes>>>;

fn at(seconds: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(seconds)
}

fn key() -> Key {
    Key::from_base64(KID, SECRET).unwrap()
}

/// A verifying layer over a handler that counts its calls and echoes the
/// key id and the body it received.
struct Server {
    clock: ManualClock,
    layer: VerifyLayer,
    calls: Arc<AtomicUsize>,
}

impl Server {
    fn new() -> Self {
        Self::with_keys(KeyRing::single(key()))
    }

    fn with_keys(keys: KeyRing) -> Self {
        let clock = ManualClock::new(at(NOW));
        let layer = VerifyLayer::new(keys).clock(Arc::new(clock.clone()));
        Self::with_layer(clock, layer)
    }

    fn with_layer(clock: ManualClock, layer: VerifyLayer) -> Self {
        Self {
            clock,
            layer,
            calls: Arc::new(AtomicUsize::new(0)),
        }
    }

    async fn send<B>(&self, request: Request<B>) -> TestResponse
    where
        B: Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        let calls = self.calls.clone();
        let handler = service_fn(move |request: Request<Full<Bytes>>| {
            calls.fetch_add(1, Ordering::SeqCst);
            async move {
                let kid = request.extensions().get::<KeyId>().cloned();
                let body = request.into_body().collect().await?.to_bytes();
                let mut echo = kid
                    .map_or_else(String::new, |kid| kid.to_string())
                    .into_bytes();
                echo.push(b' ');
                echo.extend_from_slice(&body);
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(echo))))
            }
        });

        let service = ServiceBuilder::new()
            .layer(self.layer.clone())
            .service(handler);
        service.oneshot(request).await.unwrap()
    }

    fn handler_calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

static NONCES: AtomicUsize = AtomicUsize::new(0);

fn fresh_nonce() -> String {
    format!("test-nonce-{:010}", NONCES.fetch_add(1, Ordering::SeqCst))
}

/// The parts of a request to sign, with `ts` as text so that tests can
/// sign non-canonical values.
struct Draft {
    kid: String,
    ts: String,
    nonce: String,
    method: &'static str,
    target: String,
    body: Vec<u8>,
}

impl Draft {
    fn new(method: &'static str, target: &str, body: &[u8]) -> Self {
        Self {
            kid: KID.to_owned(),
            ts: NOW.to_string(),
            nonce: fresh_nonce(),
            method,
            target: target.to_owned(),
            body: body.to_vec(),
        }
    }

    fn ts(mut self, ts: impl ToString) -> Self {
        self.ts = ts.to_string();
        self
    }

    fn signature_with(&self, key: &Key) -> String {
        let digest = body_digest(&self.body);
        let parts = SignedParts {
            kid: &self.kid,
            ts: &self.ts,
            nonce: &self.nonce,
            method: self.method,
            path_and_query: &self.target,
            body_digest: &digest,
        };
        STANDARD.encode(key.sign(parts.string_to_sign().as_bytes()))
    }

    fn header_with_sig(&self, sig: &str) -> String {
        format!(
            "v1; kid={}; ts={}; nonce={}; sig={sig}",
            self.kid, self.ts, self.nonce
        )
    }

    fn header(&self) -> String {
        self.header_with_sig(&self.signature_with(&key()))
    }

    fn request_with(&self, header: Option<&str>) -> Request<Full<Bytes>> {
        let mut builder = Request::builder()
            .method(self.method)
            .uri(self.target.as_str());
        if let Some(header) = header {
            builder = builder.header("X-Authentication", header);
        }
        builder
            .body(Full::new(Bytes::from(self.body.clone())))
            .unwrap()
    }

    fn request(&self) -> Request<Full<Bytes>> {
        self.request_with(Some(&self.header()))
    }
}

async fn assert_uniform_401(response: TestResponse) {
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(response.headers()[WWW_AUTHENTICATE], "X-Authentication");
    assert_eq!(response.headers()[CONTENT_TYPE], "application/problem+json");
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, UNAUTHORIZED_BODY);
}

async fn body_text(response: TestResponse) -> Bytes {
    response.into_body().collect().await.unwrap().to_bytes()
}

#[tokio::test]
async fn signed_request_reaches_handler_with_key_id() {
    let server = Server::new();
    let draft = Draft::new("POST", "/orders?expand=lines", b"{\"sku\":\"A-1\"}");

    let response = server.send(draft.request()).await;

    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(body_text(response).await, "orders {\"sku\":\"A-1\"}");
    assert_eq!(server.layer.metrics().accepted(), 1);
}

#[tokio::test]
async fn handler_sees_header_marked_sensitive() {
    let layer = VerifyLayer::new(KeyRing::single(key())).clock(Arc::new(ManualClock::new(at(NOW))));
    let handler = service_fn(|request: Request<Full<Bytes>>| async move {
        let sensitive = request.headers()["x-authentication"].is_sensitive();
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(sensitive.to_string()))))
    });
    let service = ServiceBuilder::new().layer(layer).service(handler);

    let response = service
        .oneshot(Draft::new("GET", "/", b"").request())
        .await
        .unwrap();

    assert_eq!(body_text(response).await, "true");
}

#[tokio::test]
async fn layer_debug_omits_nonces_and_secret() {
    let server = Server::new();
    let draft = Draft::new("GET", "/", b"");
    assert_eq!(server.send(draft.request()).await.status(), StatusCode::OK);

    let text = format!("{:?}", server.layer);

    assert!(!text.contains(&draft.nonce), "{text}");
    assert!(!text.contains(SECRET), "{text}");
    assert!(text.contains("orders"), "{text}");
}

#[tokio::test]
async fn timestamp_300s_either_way_is_accepted() {
    let server = Server::new();

    for ts in [NOW - 300, NOW + 300] {
        let response = server
            .send(Draft::new("GET", "/", b"").ts(ts).request())
            .await;
        assert_eq!(response.status(), StatusCode::OK, "ts {ts}");
    }
}

#[tokio::test]
async fn timestamp_301s_either_way_is_rejected() {
    let server = Server::new();

    let old = server
        .send(Draft::new("GET", "/", b"").ts(NOW - 301).request())
        .await;
    assert_uniform_401(old).await;
    let ahead = server
        .send(Draft::new("GET", "/", b"").ts(NOW + 301).request())
        .await;
    assert_uniform_401(ahead).await;

    let metrics = server.layer.metrics();
    assert_eq!(metrics.rejected(RejectReason::Expired), 1);
    assert_eq!(metrics.rejected(RejectReason::FromFuture), 1);
    assert_eq!(server.handler_calls(), 0);
}

#[tokio::test]
async fn custom_tolerance_moves_the_window() {
    let clock = ManualClock::new(at(NOW));
    let layer = VerifyLayer::new(KeyRing::single(key()))
        .clock(Arc::new(clock.clone()))
        .tolerance(Duration::from_secs(30));
    let server = Server::with_layer(clock, layer);

    let inside = server
        .send(Draft::new("GET", "/", b"").ts(NOW - 30).request())
        .await;
    let outside = server
        .send(Draft::new("GET", "/", b"").ts(NOW - 31).request())
        .await;

    assert_eq!(inside.status(), StatusCode::OK);
    assert_eq!(outside.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn non_canonical_timestamps_are_rejected() {
    let server = Server::new();
    let cases = [
        "+1700000000".to_owned(),
        "01700000000".to_owned(),
        "1700000000000".to_owned(),
        "-1".to_owned(),
        "0".to_owned(),
        "1700000000.0".to_owned(),
        "1.7e9".to_owned(),
        " 1700000000".to_owned(),
        u64::MAX.to_string(),
        "18446744073709551616".to_owned(),
        "99999999999999999999999999999999".to_owned(),
    ];

    for ts in cases {
        // Signed over the very characters sent, so only the grammar can
        // reject them.
        let response = server
            .send(Draft::new("GET", "/", b"").ts(&ts).request())
            .await;
        assert_uniform_401(response).await;
    }

    assert_eq!(server.layer.metrics().rejected(RejectReason::Malformed), 11);
    assert_eq!(server.handler_calls(), 0);
}

#[tokio::test]
async fn signature_for_other_request_is_rejected() {
    let server = Server::new();
    let original = Draft::new("POST", "/orders/42?expand=lines", b"{\"qty\":1}");
    let header = original.header();
    let variants = [
        ("PUT", "/orders/42?expand=lines", &b"{\"qty\":1}"[..]),
        ("POST", "/orders/43?expand=lines", &b"{\"qty\":1}"[..]),
        ("POST", "/orders/42?expand=none", &b"{\"qty\":1}"[..]),
        ("POST", "/orders/42", &b"{\"qty\":1}"[..]),
        ("POST", "/orders/42?expand=lines", &b"{\"qty\":9}"[..]),
        ("POST", "/orders/42?expand=lines", &b""[..]),
    ];

    for (method, target, body) in variants {
        let mut tampered = Draft::new(method, target, body);
        tampered.nonce = original.nonce.clone();
        let response = server.send(tampered.request_with(Some(&header))).await;
        assert_uniform_401(response).await;
    }

    assert_eq!(
        server.layer.metrics().rejected(RejectReason::BadSignature),
        6
    );
    assert_eq!(server.handler_calls(), 0);
}

#[tokio::test]
async fn signature_with_other_secret_is_rejected() {
    let server = Server::new();
    let draft = Draft::new("GET", "/", b"");
    let impostor = Key::from_bytes(KID, &[7; 32]).unwrap();

    let header = draft.header_with_sig(&draft.signature_with(&impostor));
    let response = server.send(draft.request_with(Some(&header))).await;

    assert_uniform_401(response).await;
}

#[tokio::test]
async fn binary_body_is_accepted_byte_for_byte() {
    let server = Server::new();
    let body = [0x00, 0xff, 0xfe, 0xc3, 0x28, 0x80, b'\n', 0x7f];
    let draft = Draft::new("PUT", "/blobs/7", &body);

    let response = server.send(draft.request()).await;

    assert_eq!(response.status(), StatusCode::OK);
    let mut expected = b"orders ".to_vec();
    expected.extend_from_slice(&body);
    assert_eq!(body_text(response).await, expected);
}

#[tokio::test]
async fn malformed_signatures_are_rejected() {
    let server = Server::new();
    let draft = Draft::new("GET", "/", b"");
    let good = draft.signature_with(&key());
    assert_eq!(good.len(), 44);

    let cases = [
        ("truncated", good[..43].to_owned()),
        ("truncated by four", good[..40].to_owned()),
        ("overlong", format!("{good}AAAA")),
        ("no padding", good.trim_end_matches('=').to_owned()),
        ("non-canonical trailing bits", with_trailing_bit(&good)),
        ("url-safe alphabet", url_safe_variant(&draft)),
        ("non-base64", format!("!{}", &good[1..])),
        ("empty", String::new()),
    ];

    for (name, sig) in cases {
        let response = server
            .send(draft.request_with(Some(&draft.header_with_sig(&sig))))
            .await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{name}");
    }

    assert_eq!(server.layer.metrics().rejected(RejectReason::Malformed), 8);
    let accepted = server.send(draft.request()).await;
    assert_eq!(accepted.status(), StatusCode::OK);
}

/// Sets an unused low bit of the last base64 character: the same 32 bytes
/// in a spelling the canonical form forbids.
fn with_trailing_bit(sig: &str) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let last = sig.as_bytes()[42];
    let index = ALPHABET.iter().position(|c| *c == last).unwrap();
    assert_eq!(
        index & 0b11,
        0,
        "a canonical 32-byte encoding ends in zero bits"
    );
    format!("{}{}=", &sig[..42], ALPHABET[index | 1] as char)
}

/// Finds a nonce whose signature uses `+` or `/`, and spells it with the
/// URL-safe alphabet instead.
fn url_safe_variant(draft: &Draft) -> String {
    let good = draft.signature_with(&key());
    if good.contains(['+', '/']) {
        return good.replace('+', "-").replace('/', "_");
    }
    // Without either character, an `_` in place of the first character
    // is still outside the standard alphabet.
    format!("_{}", &good[1..])
}

#[tokio::test]
async fn two_header_fields_are_rejected() {
    let server = Server::new();
    let draft = Draft::new("GET", "/", b"");
    let header = draft.header();

    let mut request = draft.request_with(Some(&header));
    request
        .headers_mut()
        .append("x-authentication", header.parse().unwrap());
    let response = server.send(request).await;

    assert_uniform_401(response).await;
    assert_eq!(server.layer.metrics().rejected(RejectReason::Multiple), 1);
    assert_eq!(server.handler_calls(), 0);
}

#[tokio::test]
async fn header_name_in_any_case_is_verified() {
    let server = Server::new();

    for name in [
        "x-authentication",
        "X-AUTHENTICATION",
        "X-Authentication",
        "x-AuThEnTiCaTiOn",
    ] {
        let draft = Draft::new("GET", "/", b"");
        let request = Request::get("/")
            .header(name, draft.header())
            .body(Full::new(Bytes::new()))
            .unwrap();
        let response = server.send(request).await;
        assert_eq!(response.status(), StatusCode::OK, "{name}");
    }
}

#[tokio::test]
async fn missing_header_never_reaches_handler() {
    let server = Server::new();

    let response = server
        .send(Draft::new("POST", "/orders", b"{}").request_with(None))
        .await;

    assert_uniform_401(response).await;
    assert_eq!(server.handler_calls(), 0);
    assert_eq!(server.layer.metrics().rejected(RejectReason::Missing), 1);
}

#[tokio::test]
async fn reused_nonce_is_rejected() {
    let server = Server::new();
    let draft = Draft::new("POST", "/orders", b"{}");

    let first = server.send(draft.request()).await;
    let replay = server.send(draft.request()).await;

    assert_eq!(first.status(), StatusCode::OK);
    assert_uniform_401(replay).await;
    assert_eq!(server.layer.metrics().rejected(RejectReason::Replayed), 1);
    assert_eq!(server.handler_calls(), 1);
}

#[tokio::test]
async fn reused_nonce_with_new_timestamp_is_rejected() {
    let server = Server::new();
    let first = Draft::new("POST", "/orders", b"{}");
    let mut second = Draft::new("POST", "/orders", b"{}").ts(NOW + 1);
    second.nonce = first.nonce.clone();

    assert_eq!(server.send(first.request()).await.status(), StatusCode::OK);
    server.clock.advance(Duration::from_secs(1));
    let response = server.send(second.request()).await;

    assert_uniform_401(response).await;
}

#[tokio::test]
async fn nonce_is_kept_for_twice_the_tolerance() {
    let server = Server::new();
    let first = Draft::new("GET", "/", b"");
    assert_eq!(server.send(first.request()).await.status(), StatusCode::OK);

    // The same nonce under a fresh timestamp is a replay until 600 s have
    // passed, and by then the first request has expired.
    server.clock.set(at(NOW + 599));
    let mut late = Draft::new("GET", "/", b"").ts(NOW + 599);
    late.nonce = first.nonce.clone();
    assert_uniform_401(server.send(late.request()).await).await;
    assert_eq!(server.layer.metrics().rejected(RejectReason::Replayed), 1);

    server.clock.set(at(NOW + 600));
    let mut later = Draft::new("GET", "/", b"").ts(NOW + 600);
    later.nonce = first.nonce.clone();
    assert_eq!(server.send(later.request()).await.status(), StatusCode::OK);
    assert_uniform_401(server.send(first.request()).await).await;
    assert_eq!(server.layer.metrics().rejected(RejectReason::Expired), 1);
}

#[tokio::test]
async fn unknown_key_id_is_rejected() {
    let server = Server::new();
    let mut draft = Draft::new("GET", "/", b"");
    draft.kid = "billing".to_owned();

    let response = server.send(draft.request()).await;

    assert_uniform_401(response).await;
    assert_eq!(server.layer.metrics().rejected(RejectReason::UnknownKey), 1);
}

#[tokio::test]
async fn expired_and_future_keys_are_rejected() {
    let expired = key().not_after(at(NOW - 1));
    let future = key().not_before(at(NOW + 1));

    for key in [expired, future] {
        let server = Server::with_keys(KeyRing::single(key));
        let response = server.send(Draft::new("GET", "/", b"").request()).await;
        assert_uniform_401(response).await;
        assert_eq!(
            server.layer.metrics().rejected(RejectReason::InactiveKey),
            1
        );
    }
}

#[tokio::test]
async fn rotation_accepts_both_keys_in_overlap() {
    let old = key().not_after(at(NOW + 100));
    let new = Key::from_bytes("orders-2", &[9; 48])
        .unwrap()
        .not_before(at(NOW - 100));
    let keys = KeyRing::builder()
        .signing_key(new.clone())
        .key(old)
        .build()
        .unwrap();
    let server = Server::with_keys(keys);

    let signed_by_old = Draft::new("GET", "/", b"");
    let mut signed_by_new = Draft::new("GET", "/", b"");
    signed_by_new.kid = "orders-2".to_owned();
    let new_header = signed_by_new.header_with_sig(&signed_by_new.signature_with(&new));

    assert_eq!(
        server.send(signed_by_old.request()).await.status(),
        StatusCode::OK
    );
    let response = server
        .send(signed_by_new.request_with(Some(&new_header)))
        .await;
    assert_eq!(body_text(response).await, "orders-2 ");

    server.clock.set(at(NOW + 101));
    let late = Draft::new("GET", "/", b"").ts(NOW + 101);
    assert_eq!(
        server.send(late.request()).await.status(),
        StatusCode::UNAUTHORIZED
    );
}

/// A body that records whether anyone polled it.
struct WatchedBody {
    polled: Arc<AtomicBool>,
    chunks: Vec<Bytes>,
    exact_len: Option<u64>,
}

impl Body for WatchedBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.polled.store(true, Ordering::SeqCst);
        if self.chunks.is_empty() {
            return Poll::Ready(None);
        }
        Poll::Ready(Some(Ok(Frame::data(self.chunks.remove(0)))))
    }

    fn size_hint(&self) -> SizeHint {
        self.exact_len
            .map_or_else(SizeHint::new, SizeHint::with_exact)
    }
}

fn watched(chunks: Vec<Bytes>, exact_len: Option<u64>) -> (WatchedBody, Arc<AtomicBool>) {
    let polled = Arc::new(AtomicBool::new(false));
    let body = WatchedBody {
        polled: polled.clone(),
        chunks,
        exact_len,
    };
    (body, polled)
}

#[tokio::test]
async fn rejected_header_reads_no_body() {
    let server = Server::new();
    let (body, polled) = watched(vec![Bytes::from_static(b"{}")], None);
    let request = Request::post("/orders").body(body).unwrap();

    let response = server.send(request).await;

    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert!(
        !polled.load(Ordering::SeqCst),
        "body was read before the header checks"
    );
}

#[tokio::test]
async fn content_length_over_limit_is_413_without_reading() {
    let clock = ManualClock::new(at(NOW));
    let layer = VerifyLayer::new(KeyRing::single(key()))
        .clock(Arc::new(clock.clone()))
        .body_limit(16);
    let server = Server::with_layer(clock, layer);
    let draft = Draft::new("POST", "/upload", &[b'x'; 17]);
    let (body, polled) = watched(vec![Bytes::from(vec![b'x'; 17])], None);
    let request = Request::post("/upload")
        .header("X-Authentication", draft.header())
        .header(CONTENT_LENGTH, "17")
        .body(body)
        .unwrap();

    let response = server.send(request).await;

    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(response.headers()[CONTENT_TYPE], "application/problem+json");
    assert!(!polled.load(Ordering::SeqCst), "an oversized body was read");
    assert_eq!(server.layer.metrics().too_large(), 1);
}

#[tokio::test]
async fn streamed_body_over_limit_is_413() {
    let clock = ManualClock::new(at(NOW));
    let layer = VerifyLayer::new(KeyRing::single(key()))
        .clock(Arc::new(clock.clone()))
        .body_limit(16);
    let server = Server::with_layer(clock, layer);
    let draft = Draft::new("POST", "/upload", &[b'x'; 24]);
    let chunks = vec![Bytes::from(vec![b'x'; 12]), Bytes::from(vec![b'x'; 12])];
    let (body, _) = watched(chunks, None);
    let request = Request::post("/upload")
        .header("X-Authentication", draft.header())
        .body(body)
        .unwrap();

    let response = server.send(request).await;

    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(server.handler_calls(), 0);
}

#[tokio::test]
async fn body_at_limit_is_accepted() {
    let clock = ManualClock::new(at(NOW));
    let layer = VerifyLayer::new(KeyRing::single(key()))
        .clock(Arc::new(clock.clone()))
        .body_limit(16);
    let server = Server::with_layer(clock, layer);

    let response = server
        .send(Draft::new("POST", "/upload", &[b'x'; 16]).request())
        .await;

    assert_eq!(response.status(), StatusCode::OK);
}

/// A replay store whose backend is down.
#[derive(Debug)]
struct UnreachableStore;

#[async_trait]
impl ReplayStore for UnreachableStore {
    async fn insert(&self, _kid: &str, _nonce: &str, _ttl: Duration) -> Result<bool, StoreError> {
        Err(StoreError::new(
            StoreErrorKind::Unavailable,
            "connection refused",
        ))
    }
}

#[tokio::test]
async fn replay_store_failure_is_503() {
    let clock = ManualClock::new(at(NOW));
    let layer = VerifyLayer::new(KeyRing::single(key()))
        .replay_store(Arc::new(UnreachableStore))
        .clock(Arc::new(clock.clone()));
    let server = Server::with_layer(clock, layer);

    let response = server.send(Draft::new("GET", "/", b"").request()).await;

    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(response.headers()[CONTENT_TYPE], "application/problem+json");
    assert_eq!(server.handler_calls(), 0);
    assert_eq!(server.layer.metrics().store_errors(), 1);
}

#[tokio::test]
async fn shared_replay_store_spans_layers() {
    let clock = ManualClock::new(at(NOW));
    let shared: Arc<dyn ReplayStore> =
        Arc::new(MemoryReplayStore::with_clock(100, Arc::new(clock.clone())));
    let replica = |clock: &ManualClock| {
        let layer = VerifyLayer::new(KeyRing::single(key()))
            .clock(Arc::new(clock.clone()))
            .replay_store(shared.clone());
        Server::with_layer(clock.clone(), layer)
    };
    let (first, second) = (replica(&clock), replica(&clock));
    let draft = Draft::new("POST", "/orders", b"{}");

    let accepted = first.send(draft.request()).await;
    let replayed = second.send(draft.request()).await;

    assert_eq!(accepted.status(), StatusCode::OK);
    assert_uniform_401(replayed).await;
    assert_eq!(second.layer.metrics().rejected(RejectReason::Replayed), 1);
    assert_eq!(first.handler_calls() + second.handler_calls(), 1);
}

/// A handler behind the signing layer that returns the header it got.
async fn sign_through(layer: SignLayer, request: Request<Full<Bytes>>) -> Result<String, BoxError> {
    let capture = service_fn(|request: Request<Full<Bytes>>| async move {
        let values: Vec<_> = request
            .headers()
            .get_all("x-authentication")
            .iter()
            .cloned()
            .collect();
        assert_eq!(values.len(), 1, "exactly one signature header");
        assert!(
            values[0].is_sensitive(),
            "signature header is marked sensitive"
        );
        Ok::<_, Infallible>(values[0].to_str().unwrap().to_owned())
    });
    ServiceBuilder::new()
        .layer(layer)
        .service(capture)
        .oneshot(request)
        .await
}

#[tokio::test]
async fn each_call_signs_afresh() {
    let clock = ManualClock::new(at(NOW));
    let layer = SignLayer::new(KeyRing::single(key())).clock(Arc::new(clock.clone()));

    let first = sign_through(layer.clone(), Request::new(Full::new(Bytes::new())))
        .await
        .unwrap();
    clock.advance(Duration::from_secs(5));
    let second = sign_through(layer, Request::new(Full::new(Bytes::new())))
        .await
        .unwrap();

    assert!(first.contains(&format!("ts={NOW};")), "{first}");
    assert!(second.contains(&format!("ts={};", NOW + 5)), "{second}");
    let nonce = |header: &str| header.split("nonce=").nth(1).unwrap()[..32].to_owned();
    assert_ne!(nonce(&first), nonce(&second));
}

#[tokio::test]
async fn signing_replaces_existing_header() {
    let layer = SignLayer::new(KeyRing::single(key()));
    let request = Request::get("/")
        .header("X-Authentication", "v1; forged")
        .body(Full::new(Bytes::new()))
        .unwrap();

    let header = sign_through(layer, request).await.unwrap();

    assert!(header.starts_with("v1; kid=orders; ts="), "{header}");
}

#[tokio::test]
async fn oversized_body_is_never_sent_unsigned() {
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let inner = service_fn(move |_: Request<Full<Bytes>>| {
        counter.fetch_add(1, Ordering::SeqCst);
        async { Ok::<_, Infallible>(()) }
    });
    let service = ServiceBuilder::new()
        .layer(SignLayer::new(KeyRing::single(key())).body_limit(8))
        .service(inner);

    let error = service
        .oneshot(Request::new(Full::new(Bytes::from_static(b"123456789"))))
        .await
        .unwrap_err();

    let error = error.downcast::<SignError>().expect("a SignError");
    assert!(error.is_body_too_large());
    assert!(error.to_string().contains("8-byte"), "{error}");
    assert_eq!(calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn sign_then_verify_in_process() {
    let server = Server::new();
    let signer = SignLayer::new(KeyRing::single(key())).clock(Arc::new(server.clock.clone()));
    let verifier = ServiceBuilder::new()
        .layer(server.layer.clone())
        .service(service_fn(|request: Request<Full<Bytes>>| async move {
            let kid = request.extensions().get::<KeyId>().unwrap().clone();
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(kid.to_string()))))
        }));
    let client = ServiceBuilder::new().layer(signer).service(verifier);

    let request = Request::delete("/orders/42?force=true")
        .body(Full::new(Bytes::from_static(b"cancel")))
        .unwrap();
    let response = client.oneshot(request).await.unwrap();

    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(body_text(response).await, "orders");
}

#[tokio::test]
async fn retry_above_signing_sends_new_signature() {
    use tower::retry::{Policy, RetryLayer};

    /// Retries once after a 503, cloning the buffered request.
    #[derive(Clone)]
    struct RetryOnce(bool);

    impl<E> Policy<Request<Full<Bytes>>, TestResponse, E> for RetryOnce {
        type Future = std::future::Ready<()>;

        fn retry(
            &mut self,
            _request: &mut Request<Full<Bytes>>,
            result: &mut Result<TestResponse, E>,
        ) -> Option<Self::Future> {
            let unavailable = matches!(result, Ok(response) if response.status() == StatusCode::SERVICE_UNAVAILABLE);
            (unavailable && !self.0).then(|| {
                self.0 = true;
                std::future::ready(())
            })
        }

        fn clone_request(
            &mut self,
            request: &Request<Full<Bytes>>,
        ) -> Option<Request<Full<Bytes>>> {
            let mut clone = Request::new(request.body().clone());
            *clone.method_mut() = request.method().clone();
            *clone.uri_mut() = request.uri().clone();
            *clone.headers_mut() = request.headers().clone();
            Some(clone)
        }
    }

    let server = Server::new();
    let attempts = Arc::new(AtomicUsize::new(0));
    let counter = attempts.clone();
    let flaky = service_fn(move |_: Request<Full<Bytes>>| {
        let attempt = counter.fetch_add(1, Ordering::SeqCst);
        let status = if attempt == 0 {
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            StatusCode::OK
        };
        async move {
            let mut response = Response::new(Full::new(Bytes::new()));
            *response.status_mut() = status;
            Ok::<_, Infallible>(response)
        }
    });
    let verifier = ServiceBuilder::new()
        .layer(server.layer.clone())
        .service(flaky);
    let client = ServiceBuilder::new()
        .layer(RetryLayer::new(RetryOnce(false)))
        .layer(SignLayer::new(KeyRing::single(key())).clock(Arc::new(server.clock.clone())))
        .service(verifier);

    let response = client
        .oneshot(
            Request::post("/orders")
                .body(Full::new(Bytes::from_static(b"{}")))
                .unwrap(),
        )
        .await
        .unwrap();

    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(attempts.load(Ordering::SeqCst), 2);
    assert_eq!(server.layer.metrics().accepted(), 2);
    assert_eq!(server.layer.metrics().rejected(RejectReason::Replayed), 0);
}

#[test]
fn documented_key_file_parses() {
    let doc = include_str!("../docs/auth.md");
    let section = &doc[doc.find("`KeyRing::read_key_file` reads").unwrap()..];
    let start = section.find("```text\n").unwrap() + 8;
    let length = section[start..].find("```").unwrap();

    let ring = KeyRing::from_key_file(&section[start..start + length]).unwrap();

    assert_eq!(ring.signing_key().kid(), "orders-2026-12");
    assert!(ring.get("orders-2026-06").is_some());
}

#[tokio::test]
async fn replay_at_window_edge_is_rejected() {
    // A sender 300 s ahead signs `ts = NOW + 300`. That `ts` passes the
    // check until NOW + 600 inclusive, or until just before NOW + 601
    // counting in whole seconds, so the nonce must be kept that long.
    for start in [at(NOW), at(NOW) + Duration::from_millis(500)] {
        let server = Server::new();
        server.clock.set(start);
        let draft = Draft::new("POST", "/orders", b"{}").ts(NOW + 300);
        assert_eq!(server.send(draft.request()).await.status(), StatusCode::OK);

        for late in [at(NOW + 600), at(NOW + 600) + Duration::from_millis(999)] {
            server.clock.set(late);
            assert_uniform_401(server.send(draft.request()).await).await;
        }

        assert_eq!(server.layer.metrics().rejected(RejectReason::Replayed), 2);
        assert_eq!(server.handler_calls(), 1);
    }
}

/// A replay store that accepts every pair and records the time to live
/// it was asked for.
#[derive(Debug, Default)]
struct RecordingStore {
    ttls: std::sync::Mutex<Vec<Duration>>,
}

#[async_trait]
impl ReplayStore for RecordingStore {
    async fn insert(&self, _kid: &str, _nonce: &str, ttl: Duration) -> Result<bool, StoreError> {
        self.ttls.lock().unwrap().push(ttl);
        Ok(true)
    }
}

#[tokio::test]
async fn custom_store_keeps_nonce_past_the_window() {
    let clock = ManualClock::new(at(NOW));
    let store = Arc::new(RecordingStore::default());
    let layer = VerifyLayer::new(KeyRing::single(key()))
        .clock(Arc::new(clock.clone()))
        .replay_store(store.clone());
    let server = Server::with_layer(clock, layer);

    for ts in [NOW - 300, NOW, NOW + 300] {
        let response = server
            .send(Draft::new("GET", "/", b"").ts(ts).request())
            .await;
        assert_eq!(response.status(), StatusCode::OK, "ts {ts}");
    }

    let ttls = store.ttls.lock().unwrap().clone();
    let expected = [600, 600, 601].map(Duration::from_secs);
    assert_eq!(ttls, expected);
}

#[tokio::test]
async fn clock_before_1970_checks_the_window() {
    let server = Server::new();
    server.clock.set(UNIX_EPOCH - Duration::from_secs(86_400));

    let response = server
        .send(Draft::new("GET", "/", b"").ts(1).request())
        .await;

    assert_uniform_401(response).await;
    assert_eq!(server.layer.metrics().rejected(RejectReason::FromFuture), 1);
}

#[test]
#[should_panic(expected = "polled after completion")]
fn response_future_polled_after_completion_panics() {
    use futures_util::FutureExt;

    // `Fuse` returns `Pending` forever once it has completed, so only the
    // verifying future itself can report the second poll.
    let handler = service_fn(|_: Request<Full<Bytes>>| {
        std::future::ready(Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())))).fuse()
    });
    let layer = VerifyLayer::new(KeyRing::single(key())).clock(Arc::new(ManualClock::new(at(NOW))));
    let mut service = ServiceBuilder::new().layer(layer).service(handler);
    let mut future = std::pin::pin!(service.call(Draft::new("GET", "/", b"").request()));
    let mut cx = Context::from_waker(std::task::Waker::noop());

    let first = future.as_mut().poll(&mut cx);
    assert!(matches!(first, Poll::Ready(Ok(ref response)) if response.status() == StatusCode::OK));

    let _ = future.as_mut().poll(&mut cx);
}

/// One step of a [`ScriptedBody`].
enum Step {
    Data(&'static [u8]),
    /// `Pending`, with the task woken at once.
    Pending,
    /// `Pending` without a wake-up: the peer stalls.
    Stall,
    Error,
}

/// A request body that plays its steps in order, then ends.
struct ScriptedBody(std::collections::VecDeque<Step>);

impl ScriptedBody {
    fn new(steps: impl IntoIterator<Item = Step>) -> Self {
        Self(steps.into_iter().collect())
    }
}

impl Body for ScriptedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.0.pop_front() {
            None => Poll::Ready(None),
            Some(Step::Data(bytes)) => {
                Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(bytes)))))
            }
            Some(Step::Pending) => {
                cx.waker().wake_by_ref();
                Poll::Pending
            }
            Some(Step::Stall) => {
                self.0.push_front(Step::Stall);
                Poll::Pending
            }
            Some(Step::Error) => Poll::Ready(Some(Err("connection reset".into()))),
        }
    }
}

fn scripted_request(draft: &Draft, steps: impl IntoIterator<Item = Step>) -> Request<ScriptedBody> {
    Request::post(draft.target.as_str())
        .header("X-Authentication", draft.header())
        .body(ScriptedBody::new(steps))
        .unwrap()
}

#[tokio::test]
async fn body_pending_between_chunks_is_collected() {
    let server = Server::new();
    let draft = Draft::new("POST", "/orders", b"{\"qty\":12}");
    let steps = [
        Step::Pending,
        Step::Data(b"{\"qty\""),
        Step::Pending,
        Step::Pending,
        Step::Data(b":12}"),
        Step::Pending,
    ];

    let response = server.send(scripted_request(&draft, steps)).await;

    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(body_text(response).await, "orders {\"qty\":12}");
}

#[tokio::test]
async fn body_failing_midway_keeps_the_nonce_unused() {
    let server = Server::new();
    let draft = Draft::new("POST", "/orders", b"{\"qty\":12}");

    let failed = server
        .send(scripted_request(
            &draft,
            [Step::Data(b"{\"qty\""), Step::Error],
        ))
        .await;
    assert_eq!(failed.status(), StatusCode::BAD_REQUEST);
    assert_eq!(failed.headers()[CONTENT_TYPE], "application/problem+json");
    assert_eq!(server.handler_calls(), 0);

    // The sender's retry of the same signed request still goes through.
    assert_eq!(server.send(draft.request()).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn future_dropped_midbody_keeps_the_nonce_unused() {
    let server = Server::new();
    let draft = Draft::new("POST", "/orders", b"{}");
    let stalled = server.send(scripted_request(&draft, [Step::Data(b"{"), Step::Stall]));

    let timed_out = tokio::time::timeout(Duration::from_millis(50), stalled).await;

    assert!(timed_out.is_err(), "a stalled body completed");
    assert_eq!(server.send(draft.request()).await.status(), StatusCode::OK);
    assert_eq!(server.handler_calls(), 1);
}

/// A replay store that makes its caller wait a few polls before it calls
/// a memory store.
#[derive(Debug)]
struct SlowStore(MemoryReplayStore);

#[async_trait]
impl ReplayStore for SlowStore {
    async fn insert(&self, kid: &str, nonce: &str, ttl: Duration) -> Result<bool, StoreError> {
        for _ in 0..3 {
            tokio::task::yield_now().await;
        }
        self.0.insert(kid, nonce, ttl).await
    }
}

#[tokio::test]
async fn slow_custom_store_still_guards_replays() {
    let clock = ManualClock::new(at(NOW));
    let store = SlowStore(MemoryReplayStore::with_clock(10, Arc::new(clock.clone())));
    let layer = VerifyLayer::new(KeyRing::single(key()))
        .clock(Arc::new(clock.clone()))
        .replay_store(Arc::new(store));
    let server = Server::with_layer(clock, layer);
    let draft = Draft::new("POST", "/orders", b"{}");

    let first = server.send(draft.request()).await;
    let replay = server.send(draft.request()).await;

    assert_eq!(first.status(), StatusCode::OK);
    assert_uniform_401(replay).await;
    assert_eq!(server.handler_calls(), 1);
}

#[tokio::test]
async fn full_replay_store_rejects_with_503() {
    let clock = ManualClock::new(at(NOW));
    let store = MemoryReplayStore::with_clock(1, Arc::new(clock.clone()));
    let layer = VerifyLayer::new(KeyRing::single(key()))
        .clock(Arc::new(clock.clone()))
        .replay_store(Arc::new(store));
    let server = Server::with_layer(clock, layer);
    let first = Draft::new("POST", "/orders", b"{}");

    assert_eq!(server.send(first.request()).await.status(), StatusCode::OK);
    let second = server
        .send(Draft::new("POST", "/orders", b"{}").request())
        .await;
    let replay = server.send(first.request()).await;

    assert_eq!(second.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_uniform_401(replay).await;
    assert_eq!(server.layer.metrics().store_errors(), 1);
}

#[tokio::test]
async fn inner_service_error_is_passed_through() {
    let layer = VerifyLayer::new(KeyRing::single(key())).clock(Arc::new(ManualClock::new(at(NOW))));
    let failing = service_fn(|_: Request<Full<Bytes>>| async {
        Err::<Response<Full<Bytes>>, BoxError>("handler failed".into())
    });
    let service = ServiceBuilder::new().layer(layer).service(failing);

    let error = service
        .oneshot(Draft::new("GET", "/", b"").request())
        .await
        .unwrap_err();

    assert_eq!(error.to_string(), "handler failed");
}

#[tokio::test]
async fn inner_service_panic_reaches_the_caller() {
    let layer = VerifyLayer::new(KeyRing::single(key())).clock(Arc::new(ManualClock::new(at(NOW))));
    let panicking = service_fn(|_: Request<Full<Bytes>>| async {
        panic!("handler panicked");
        #[allow(unreachable_code)]
        Ok::<Response<Full<Bytes>>, Infallible>(Response::new(Full::new(Bytes::new())))
    });
    let service = ServiceBuilder::new().layer(layer).service(panicking);

    let task = tokio::spawn(service.oneshot(Draft::new("GET", "/", b"").request()));

    assert!(task.await.unwrap_err().is_panic());
}
