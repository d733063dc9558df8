//! Property tests of the X-Authentication header parser and layers.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use proptest::prelude::*;
use tower::{ServiceBuilder, ServiceExt, service_fn};
use tower_courier::auth::{Key, KeyRing, SignLayer, SignatureHeader, VerifyLayer};
use tower_courier::clock::ManualClock;

const SECRET: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";

/// Header values close to the grammar: the real parameter names and
/// characters from every value alphabet, with the separators shuffled.
fn near_header() -> impl Strategy<Value = String> {
    let name = prop_oneof![
        Just("kid"),
        Just("ts"),
        Just("nonce"),
        Just("sig"),
        Just("v1"),
        Just(""),
    ];
    let value = "[A-Za-z0-9+/=._ -]{0,50}";
    let separator = prop_oneof![Just(";"), Just("; "), Just(" ;\t"), Just(";;"), Just("")];
    let parameter =
        (separator, name, prop::bool::ANY, value).prop_map(|(sep, name, equals, value)| {
            format!("{sep}{name}{}{value}", if equals { "=" } else { "" })
        });
    prop::collection::vec(parameter, 0..7)
        .prop_map(|parameters| format!("v1{}", parameters.concat()))
}

proptest! {
    #[test]
    fn parser_never_panics_on_bytes(value in prop::collection::vec(any::<u8>(), 0..300)) {
        let _ = SignatureHeader::parse(&value);
    }

    #[test]
    fn parser_never_panics_near_grammar(value in near_header()) {
        if let Ok(header) = SignatureHeader::parse(value.as_bytes()) {
            // Whatever parses formats back to a value that parses the same.
            let again = SignatureHeader::parse(header.to_string().as_bytes()).unwrap();
            prop_assert_eq!(again, header);
        }
    }

    #[test]
    fn timestamps_parse_only_in_canonical_form(ts in "[-+0-9 .e]{0,24}") {
        let value = format!(
            "v1; kid=k; ts={ts}; nonce=0123456789abcdef; sig=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="
        );
        // Spaces before the next `;` are separator whitespace, not part of
        // the value; a space after `=` is part of it and invalid.
        let spelled = ts.trim_end_matches(' ');
        let canonical = spelled.len() <= 11
            && !spelled.starts_with('0')
            && !spelled.is_empty()
            && spelled.bytes().all(|byte| byte.is_ascii_digit());

        let parsed = SignatureHeader::parse(value.as_bytes());

        prop_assert_eq!(parsed.is_ok(), canonical);
        if let Ok(header) = parsed {
            prop_assert_eq!(header.timestamp().to_string(), spelled);
        }
    }
}

/// Methods: the standard ones and extension tokens.
fn method() -> impl Strategy<Value = Method> {
    prop_oneof![
        Just(Method::GET),
        Just(Method::POST),
        Just(Method::PUT),
        Just(Method::DELETE),
        Just(Method::PATCH),
        "[A-Za-z0-9!#$%&'*+.^_`|~-]{1,16}"
            .prop_map(|token| Method::from_bytes(token.as_bytes()).unwrap()),
    ]
}

/// Origin-form targets with percent-encoding, sub-delimiters and queries
/// in any order.
fn target() -> impl Strategy<Value = Uri> {
    let segment = "[A-Za-z0-9._~!$&'()*+,;=:@-]{0,10}|%[0-9A-F]{2}";
    let path = prop::collection::vec(segment, 0..5)
        .prop_map(|segments| format!("/{}", segments.join("/")));
    let query = prop::option::of("[A-Za-z0-9._~!$&'()*+,;=:@/?%-]{0,30}");
    (path, query).prop_map(|(path, query)| {
        let target = match query {
            Some(query) => format!("{path}?{query}"),
            None => path,
        };
        target.parse().expect("generated targets are valid URIs")
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn sign_then_verify_always_succeeds(
        method in method(),
        target in target(),
        body in prop::collection::vec(any::<u8>(), 0..2048),
        now in 1_u64..99_999_999_999,
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let (status, echoed) = runtime.block_on(sign_and_verify(method, target, body.clone(), now));

        prop_assert_eq!(status, StatusCode::OK);
        prop_assert_eq!(echoed, body);
    }
}

async fn sign_and_verify(
    method: Method,
    target: Uri,
    body: Vec<u8>,
    now: u64,
) -> (StatusCode, Vec<u8>) {
    let keys = KeyRing::single(Key::from_base64("props", SECRET).unwrap());
    let clock = Arc::new(ManualClock::new(UNIX_EPOCH + Duration::from_secs(now)));
    let handler = service_fn(|request: Request<Full<Bytes>>| async move {
        let body = request.into_body().collect().await?.to_bytes();
        Ok::<_, Infallible>(Response::new(Full::new(body)))
    });
    let client = ServiceBuilder::new()
        .layer(SignLayer::new(keys.clone()).clock(clock.clone()))
        .layer(VerifyLayer::new(keys).clock(clock))
        .service(handler);

    let mut request = Request::new(Full::new(Bytes::from(body)));
    *request.method_mut() = method;
    *request.uri_mut() = target;
    let response = client.oneshot(request).await.unwrap();

    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes()
        .to_vec();
    (status, body)
}
