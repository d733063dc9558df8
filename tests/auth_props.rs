//! Property tests of the X-Authentication header parser and layers.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE};
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

/// Spaces and tabs, which may surround `;`, and bytes that may not.
fn separator_space() -> impl Strategy<Value = &'static str> {
    prop_oneof![
        20 => Just(""),
        10 => Just(" "),
        10 => Just("\t"),
        5 => Just(" \t "),
        1 => Just("\x0b"),
        1 => Just("\r"),
        1 => Just("\u{a0}"),
    ]
}

fn kid_value() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => "[A-Za-z0-9._-]{1,8}",
        1 => "[A-Za-z0-9._-]{62,66}",
        1 => "[A-Za-z0-9._=+/ é-]{0,8}",
    ]
}

fn ts_value() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => "[1-9][0-9]{0,11}",
        1 => "[-+0-9 .e]{0,13}",
    ]
}

fn nonce_value() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => "[A-Za-z0-9_-]{14,18}",
        1 => "[A-Za-z0-9_-]{62,66}",
        1 => "[A-Za-z0-9_=+/.é-]{16,20}",
    ]
}

/// Signatures: canonical ones and the near misses of the grammar.
fn sig_value() -> impl Strategy<Value = String> {
    let bytes = prop::array::uniform32(any::<u8>());
    prop_oneof![
        10 => bytes.prop_map(|bytes| STANDARD.encode(bytes)),
        1 => bytes.prop_map(|bytes| {
            // The same bytes with a non-zero unused bit. The last character
            // of a canonical spelling is one of `AEIMQUYcgkosw048`, and the
            // next character in ASCII sets the low bit.
            let mut sig = STANDARD.encode(bytes).into_bytes();
            sig[42] += 1;
            String::from_utf8(sig).unwrap()
        }),
        1 => bytes.prop_map(|bytes| URL_SAFE.encode(bytes)),
        1 => bytes.prop_map(|bytes| STANDARD_NO_PAD.encode(bytes)),
        1 => "[A-Za-z0-9+/]{42}==",
        1 => "[A-Za-z0-9+/=_-]{42,46}",
    ]
}

/// Header values built from the four parameters, each sometimes left
/// out, repeated, misnamed or given an out-of-grammar value, in any
/// order, with any separator and now and then one stray byte.
fn built_header() -> impl Strategy<Value = Vec<u8>> {
    let parameters =
        (kid_value(), ts_value(), nonce_value(), sig_value()).prop_map(|(kid, ts, nonce, sig)| {
            vec![
                format!("kid={kid}"),
                format!("ts={ts}"),
                format!("nonce={nonce}"),
                format!("sig={sig}"),
            ]
        });
    let edit = prop_oneof![
        12 => Just(None),
        1 => Just(Some("drop")),
        1 => Just(Some("repeat")),
        1 => Just(Some("unknown")),
        1 => Just(Some("upper")),
        1 => Just(Some("space around =")),
    ];
    let spaces = prop::collection::vec((separator_space(), separator_space()), 5);
    let stray = prop::option::weighted(0.1, (any::<prop::sample::Index>(), any::<u8>()));
    (parameters.prop_shuffle(), edit, spaces, stray).prop_map(
        |(mut parameters, edit, spaces, stray)| {
            match edit {
                Some("drop") => {
                    parameters.pop();
                }
                Some("repeat") => parameters.push(parameters[0].clone()),
                Some("unknown") => parameters.push("extra=1".to_owned()),
                Some("upper") => parameters[0] = parameters[0].to_uppercase(),
                Some("space around =") => parameters[0] = parameters[0].replacen('=', " = ", 1),
                _ => {}
            }
            let mut value = format!("{}v1", spaces[0].0);
            for (parameter, (before, after)) in parameters.iter().zip(spaces.iter().cycle()) {
                value.push_str(&format!("{before};{after}{parameter}"));
            }
            value.push_str(spaces[4].1);

            let mut bytes = value.into_bytes();
            if let Some((at, byte)) = stray {
                let at = at.index(bytes.len() + 1);
                bytes.insert(at, byte);
            }
            bytes
        },
    )
}

/// The parts of a valid header value.
#[derive(Debug, PartialEq)]
struct Expected {
    kid: String,
    ts: String,
    nonce: String,
    signature: [u8; 32],
}

/// Parses a header value by a direct reading of the protocol's grammar,
/// written separately from the crate's parser. The error is "not ASCII"
/// or "invalid".
fn parse_by_the_grammar(value: &[u8]) -> Result<Expected, &'static str> {
    let text = std::str::from_utf8(value)
        .ok()
        .filter(|text| text.is_ascii())
        .ok_or("not ASCII")?;
    let space = |c: char| c == ' ' || c == '\t';
    let mut pieces = text.split(';');
    if pieces.next().map(|version| version.trim_matches(space)) != Some("v1") {
        return Err("invalid");
    }

    let mut found = std::collections::BTreeMap::new();
    for piece in pieces {
        let (name, value) = piece.trim_matches(space).split_once('=').ok_or("invalid")?;
        let known = ["kid", "ts", "nonce", "sig"].contains(&name);
        if !known || found.insert(name, value).is_some() {
            return Err("invalid");
        }
    }
    let [kid, ts, nonce, sig] = ["kid", "ts", "nonce", "sig"].map(|name| found.get(name).copied());
    let (Some(kid), Some(ts), Some(nonce), Some(sig)) = (kid, ts, nonce, sig) else {
        return Err("invalid");
    };

    let kid_ok = (1..=64).contains(&kid.len())
        && kid
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ".-_".contains(c));
    let ts_ok = (1..=11).contains(&ts.len())
        && !ts.starts_with('0')
        && ts.chars().all(|c| c.is_ascii_digit());
    let nonce_ok = (16..=64).contains(&nonce.len())
        && nonce
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_".contains(c));
    // Canonical: the only spelling that the decoded bytes encode back to.
    let signature = STANDARD
        .decode(sig)
        .ok()
        .filter(|bytes| STANDARD.encode(bytes) == sig)
        .and_then(|bytes| <[u8; 32]>::try_from(bytes).ok());
    match signature {
        Some(signature) if kid_ok && ts_ok && nonce_ok => Ok(Expected {
            kid: kid.to_owned(),
            ts: ts.to_owned(),
            nonce: nonce.to_owned(),
            signature,
        }),
        _ => Err("invalid"),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4096))]

    #[test]
    fn parser_agrees_with_the_grammar(value in built_header()) {
        let parsed = SignatureHeader::parse(&value);
        let expected = parse_by_the_grammar(&value);

        match (parsed, expected) {
            (Ok(header), Ok(expected)) => {
                let actual = Expected {
                    kid: header.kid().to_owned(),
                    ts: header.ts().to_owned(),
                    nonce: header.nonce().to_owned(),
                    signature: *header.signature(),
                };
                prop_assert_eq!(actual, expected);
            }
            (Err(error), Err(reason)) => {
                let message = error.to_string();
                prop_assert_eq!(message.ends_with(": not ASCII"), reason == "not ASCII", "{}", message);
            }
            (parsed, expected) => {
                prop_assert!(false, "parser {:?}, grammar {:?}", parsed, expected);
            }
        }
    }

    #[test]
    fn header_built_two_ways_is_one_value(value in built_header()) {
        let Ok(parsed) = SignatureHeader::parse(&value) else {
            return Ok(());
        };
        let built =
            SignatureHeader::new(parsed.kid(), parsed.timestamp(), parsed.nonce(), *parsed.signature())
                .unwrap();
        let reparsed = SignatureHeader::parse(parsed.to_string().as_bytes()).unwrap();

        prop_assert_eq!(&built, &parsed);
        prop_assert_eq!(&reparsed, &parsed);
        prop_assert_eq!(&parsed.clone(), &parsed);
        prop_assert_eq!(built.to_string(), parsed.to_string());
        prop_assert_eq!(format!("{built:?}"), format!("{parsed:?}"));
        let canonical = format!(
            "v1; kid={}; ts={}; nonce={}; sig={}",
            parsed.kid(),
            parsed.ts(),
            parsed.nonce(),
            STANDARD.encode(parsed.signature())
        );
        prop_assert_eq!(parsed.to_string(), canonical);
    }
}
