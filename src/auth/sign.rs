//! The client-side layer that signs every outgoing request.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::{error, fmt, mem};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::header::HeaderValue;
use http::{Request, request};
use http_body::Body;
use http_body_util::Full;
use tower::{Layer, Service};

use super::canonical::{DigestHex, SignedParts, path_and_query};
use super::header::SignatureHeader;
use super::key::KeyRing;
use super::{DEFAULT_BODY_LIMIT, HEADER_NAME};
use crate::BoxError;
use crate::body::{CollectError, collect_limited};
use crate::clock::{self, SharedClock};

/// Random bytes in each nonce: 192 bits, above the protocol's 128-bit
/// minimum, spelled as 32 base64url characters.
const NONCE_BYTES: usize = 24;

/// Signs every outgoing request with the key ring's signing key.
///
/// Each call buffers the body (up to the limit), takes a fresh `ts` from
/// the clock and a fresh random nonce, and sets one `X-Authentication`
/// field, marked sensitive, in place of any the request had. Because
/// every call signs afresh, the layer belongs below retry and outbox
/// layers, so that each attempt carries its own signature.
///
/// A body over the limit, or one that fails to read, fails the call with
/// a [`SignError`] inside the [`BoxError`], so the request is never sent
/// unsigned.
#[derive(Debug, Clone)]
pub struct SignLayer {
    config: Config,
}

#[derive(Debug, Clone)]
struct Config {
    keys: KeyRing,
    clock: SharedClock,
    body_limit: usize,
}

impl SignLayer {
    /// Creates a layer that signs with `keys.signing_key()`.
    pub fn new(keys: KeyRing) -> Self {
        Self {
            config: Config {
                keys,
                clock: clock::system(),
                body_limit: DEFAULT_BODY_LIMIT,
            },
        }
    }

    /// Sets the clock that `ts` is read from. Defaults to the system clock.
    pub fn clock(mut self, clock: SharedClock) -> Self {
        self.config.clock = clock;
        self
    }

    /// Sets the largest body the layer buffers and signs, in bytes.
    /// Defaults to 2 MiB ([`DEFAULT_BODY_LIMIT`]).
    pub fn body_limit(mut self, limit: usize) -> Self {
        self.config.body_limit = limit;
        self
    }
}

impl<S> Layer<S> for SignLayer {
    type Service = Sign<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Sign {
            inner,
            config: Arc::new(self.config.clone()),
        }
    }
}

/// The service built by [`SignLayer`].
#[derive(Debug, Clone)]
pub struct Sign<S> {
    inner: S,
    config: Arc<Config>,
}

impl<S> Sign<S> {
    /// Returns a reference to the inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Returns a mutable reference to the inner service.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Returns the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

/// The response future of [`Sign`].
pub struct ResponseFuture<T> {
    inner: BoxFuture<'static, Result<T, BoxError>>,
}

impl<T> fmt::Debug for ResponseFuture<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<T> Future for ResponseFuture<T> {
    type Output = Result<T, BoxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.inner.as_mut().poll(cx)
    }
}

impl<S, ReqBody> Service<Request<ReqBody>> for Sign<S>
where
    S: Service<Request<Full<Bytes>>> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
    ReqBody: Body + Send + 'static,
    ReqBody::Data: Send,
    ReqBody::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Response>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        // Keep the service that `poll_ready` made ready for this call.
        let clone = self.inner.clone();
        let mut inner = mem::replace(&mut self.inner, clone);
        let config = self.config.clone();

        let future = async move {
            let (parts, body) = request.into_parts();
            let bytes = collect_limited(body, config.body_limit)
                .await
                .map_err(SignError::from_collect)?;

            let request = sign(&config, parts, bytes)?;
            inner.call(request).await.map_err(Into::into)
        };
        ResponseFuture {
            inner: Box::pin(future),
        }
    }
}

/// Adds a fresh signature to a request whose body is read.
fn sign(
    config: &Config,
    mut parts: request::Parts,
    bytes: Bytes,
) -> Result<Request<Full<Bytes>>, SignError> {
    let key = config.keys.signing_key();
    let nonce = new_nonce();
    let digest = DigestHex::of(&bytes);
    let target = path_and_query(&parts.uri);
    let timestamp = config.clock.unix_seconds();
    let ts = timestamp.to_string();

    let signed = SignedParts {
        kid: key.kid(),
        ts: &ts,
        nonce: &nonce,
        method: parts.method.as_str(),
        path_and_query: &target,
        body_digest: digest.as_str(),
    };
    let signature = key.sign_parts(&signed);

    // The key id and nonce are valid by construction, so only a clock
    // outside 1970-01-01T00:00:01Z..=5138-11-16 can fail here.
    let header = SignatureHeader::new(key.kid(), timestamp, &nonce, signature)
        .map_err(|_| SignError::new(SignErrorKind::ClockOutOfRange))?;
    let mut value = HeaderValue::try_from(header.to_string())
        .expect("a grammar-checked header value is visible ASCII");
    value.set_sensitive(true);

    parts.headers.insert(HEADER_NAME, value);
    Ok(Request::from_parts(parts, Full::new(bytes)))
}

fn new_nonce() -> String {
    let mut bytes = [0_u8; NONCE_BYTES];
    rand::fill(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// The error returned when a request cannot be signed, so it is not sent.
#[derive(Debug)]
pub struct SignError {
    kind: SignErrorKind,
    source: Option<BoxError>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SignErrorKind {
    BodyTooLarge(usize),
    BodyRead,
    ClockOutOfRange,
}

impl SignError {
    fn new(kind: SignErrorKind) -> Self {
        Self { kind, source: None }
    }

    fn from_collect(error: CollectError) -> Self {
        match error {
            CollectError::TooLarge { limit } => Self::new(SignErrorKind::BodyTooLarge(limit)),
            CollectError::Read(source) => Self {
                kind: SignErrorKind::BodyRead,
                source: Some(source),
            },
        }
    }

    /// Returns `true` if the body was longer than the layer's limit.
    pub fn is_body_too_large(&self) -> bool {
        matches!(self.kind, SignErrorKind::BodyTooLarge(_))
    }
}

impl fmt::Display for SignError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            SignErrorKind::BodyTooLarge(limit) => write!(
                f,
                "request body is longer than the {limit}-byte signing limit; raise SignLayer::body_limit"
            ),
            SignErrorKind::BodyRead => f.write_str("failed to read the request body to sign it"),
            SignErrorKind::ClockOutOfRange => {
                f.write_str("system clock is outside the range a ts can express")
            }
        }
    }
}

impl error::Error for SignError {
    fn source(&self) -> Option<&(dyn error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|source| source as &(dyn error::Error + 'static))
    }
}
