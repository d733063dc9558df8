//! The server-side layer that verifies `X-Authentication`.

use std::future::{Future, Ready, ready};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use std::{fmt, mem};

use bytes::Bytes;
use futures_util::future::{BoxFuture, Either};
use http::header::CONTENT_LENGTH;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::Full;
use tower::{Layer, Service};

use super::canonical::{DigestHex, SignedParts, path_and_query};
use super::header::SignatureHeader;
use super::key::{Key, KeyRing, LookupError};
use super::rejection::{AuthMetrics, RejectReason, unauthorized};
use super::{DEFAULT_BODY_LIMIT, HEADER_NAME};
use crate::BoxError;
use crate::body::{CollectError, ResponseBody, collect_limited, problem};
use crate::clock::{self, SharedClock};
use crate::store::ReplayStore;
use crate::store::memory::MemoryReplayStore;

/// The default clock tolerance: 300 seconds in both directions.
pub const DEFAULT_TOLERANCE: Duration = Duration::from_secs(300);

/// Verifies the `X-Authentication` header of every request, and passes the
/// authenticated [`KeyId`] to the inner service in the request extensions.
///
/// The checks run in the protocol's order: one header field, its grammar,
/// a key valid now, `ts` within the tolerance, then the body is read up to
/// the limit, then the signature and the replay guard. Nothing of the body
/// is read before the header checks pass.
///
/// Responses:
///
/// - Every rejection is the same `401` (see [`unauthorized`]). The reason,
///   key id and clock skew go to `tracing` at debug level and to
///   [`AuthMetrics`], but never the secret or the signature.
/// - A body over the limit gets `413` problem+json, with at most the limit
///   held in memory.
/// - A failing replay store gets `503` problem+json, logged at warn level.
///   The protocol leaves this case open. Rejecting is the fail-closed
///   choice, because accepting would let a replay through while the store
///   is down.
///
/// Not promised: the sender's and receiver's clocks must agree within the
/// tolerance, and the default [`MemoryReplayStore`] protects one process
/// only. Replicas of a service must share one replay store, and a restart
/// of the in-memory store forgets the nonces of the last `2 x tolerance`.
#[derive(Clone)]
pub struct VerifyLayer {
    config: Config,
}

#[derive(Clone)]
struct Config {
    keys: KeyRing,
    replay: Arc<dyn ReplayStore>,
    custom_replay: bool,
    clock: SharedClock,
    tolerance: Duration,
    body_limit: usize,
    metrics: AuthMetrics,
}

impl VerifyLayer {
    /// Creates a layer that accepts requests signed by any key of `keys`
    /// that is valid now.
    ///
    /// It keeps nonces in a new [`MemoryReplayStore`] of the default
    /// capacity, shared by every service the layer builds.
    pub fn new(keys: KeyRing) -> Self {
        let clock = clock::system();
        Self {
            config: Config {
                keys,
                replay: default_replay_store(&clock),
                custom_replay: false,
                clock,
                tolerance: DEFAULT_TOLERANCE,
                body_limit: DEFAULT_BODY_LIMIT,
                metrics: AuthMetrics::default(),
            },
        }
    }

    /// Sets the store of accepted (`kid`, `nonce`) pairs. Defaults to a
    /// [`MemoryReplayStore`]. Replicas of one service must share a store.
    pub fn replay_store(mut self, store: Arc<dyn ReplayStore>) -> Self {
        self.config.replay = store;
        self.config.custom_replay = true;
        self
    }

    /// Sets the clock. Defaults to the system clock. The default replay
    /// store follows this clock too.
    pub fn clock(mut self, clock: SharedClock) -> Self {
        if !self.config.custom_replay {
            self.config.replay = default_replay_store(&clock);
        }
        self.config.clock = clock;
        self
    }

    /// Sets how far `ts` may be from the receiver's clock, in either
    /// direction, counted in whole seconds. Defaults to 300 seconds
    /// ([`DEFAULT_TOLERANCE`]). Nonces are kept for twice this time.
    pub fn tolerance(mut self, tolerance: Duration) -> Self {
        self.config.tolerance = tolerance;
        self
    }

    /// Sets the largest accepted body in bytes. Defaults to 2 MiB
    /// ([`DEFAULT_BODY_LIMIT`](super::DEFAULT_BODY_LIMIT)).
    pub fn body_limit(mut self, limit: usize) -> Self {
        self.config.body_limit = limit;
        self
    }

    /// Returns the counters of accepted and rejected requests, shared by
    /// every service the layer builds.
    pub fn metrics(&self) -> AuthMetrics {
        self.config.metrics.clone()
    }
}

fn default_replay_store(clock: &SharedClock) -> Arc<dyn ReplayStore> {
    Arc::new(MemoryReplayStore::with_clock(
        MemoryReplayStore::DEFAULT_CAPACITY,
        clock.clone(),
    ))
}

impl fmt::Debug for VerifyLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.config.fmt(f)
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The replay store is left out: the in-memory one would print every
        // nonce it keeps.
        f.debug_struct("VerifyLayer")
            .field("keys", &self.keys)
            .field("custom_replay_store", &self.custom_replay)
            .field("tolerance", &self.tolerance)
            .field("body_limit", &self.body_limit)
            .finish_non_exhaustive()
    }
}

impl<S> Layer<S> for VerifyLayer {
    type Service = Verify<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Verify {
            inner,
            config: Arc::new(self.config.clone()),
        }
    }
}

/// The service built by [`VerifyLayer`].
#[derive(Clone)]
pub struct Verify<S> {
    inner: S,
    config: Arc<Config>,
}

impl<S> Verify<S> {
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

impl<S: fmt::Debug> fmt::Debug for Verify<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verify")
            .field("inner", &self.inner)
            .field("config", &self.config)
            .finish()
    }
}

type VerifyResult<B, E> = Result<Response<ResponseBody<B>>, E>;

type PendingResult<B, E> = BoxFuture<'static, VerifyResult<B, E>>;

/// The response future of [`Verify`].
pub struct ResponseFuture<B, E> {
    inner: Either<Ready<VerifyResult<B, E>>, PendingResult<B, E>>,
}

impl<B, E> fmt::Debug for ResponseFuture<B, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<B, E> Future for ResponseFuture<B, E> {
    type Output = VerifyResult<B, E>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.inner).poll(cx)
    }
}

impl<B, E> ResponseFuture<B, E> {
    fn respond(response: Response<ResponseBody<B>>) -> Self {
        Self {
            inner: Either::Left(ready(Ok(response))),
        }
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Verify<S>
where
    S: Service<Request<Full<Bytes>>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send,
    ReqBody: Body + Send + 'static,
    ReqBody::Data: Send,
    ReqBody::Error: Into<BoxError>,
    ResBody: Send + 'static,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<ResBody, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let checked = match check_header(&self.config, request.headers()) {
            Ok(checked) => checked,
            Err(_) => return ResponseFuture::respond(unauthorized()),
        };
        if declared_length(request.headers()).is_some_and(|length| length > self.config.body_limit)
        {
            return ResponseFuture::respond(too_large(&self.config));
        }

        // The inner service was made ready by `poll_ready`; move that one
        // into the future and keep a fresh clone for the next call.
        let clone = self.inner.clone();
        let inner = mem::replace(&mut self.inner, clone);
        let config = self.config.clone();
        ResponseFuture {
            inner: Either::Right(Box::pin(verify_body(config, checked, request, inner))),
        }
    }
}

/// The outcome of the header checks: a well-formed header with a key
/// valid now and a timestamp within the tolerance.
struct Checked {
    header: SignatureHeader,
    key: Arc<Key>,
    skew: i64,
}

/// Checks that there is one header field, that it parses, that its key is
/// valid now and that `ts` is within the tolerance. These checks need no
/// body. A rejection is already counted and logged when this returns.
fn check_header(config: &Config, headers: &HeaderMap) -> Result<Checked, RejectReason> {
    let mut fields = headers.get_all(HEADER_NAME).iter();
    let value = match (fields.next(), fields.next()) {
        (Some(value), None) => value,
        (None, _) => return Err(record_rejection(config, RejectReason::Missing, None, None)),
        (Some(_), Some(_)) => {
            return Err(record_rejection(config, RejectReason::Multiple, None, None));
        }
    };

    let header = SignatureHeader::parse(value.as_bytes())
        .map_err(|_| record_rejection(config, RejectReason::Malformed, None, None))?;

    let kid = Some(header.kid());
    let now = config.clock.now();
    let key = match config.keys.lookup(header.kid(), now) {
        Ok(key) => key.clone(),
        Err(LookupError::Unknown) => {
            return Err(record_rejection(
                config,
                RejectReason::UnknownKey,
                kid,
                None,
            ));
        }
        Err(LookupError::Inactive) => {
            return Err(record_rejection(
                config,
                RejectReason::InactiveKey,
                kid,
                None,
            ));
        }
    };

    let skew = clock_skew(unix_seconds(now), header.timestamp());
    let tolerance = i128::from(config.tolerance.as_secs());
    if skew > tolerance {
        return Err(record_rejection(
            config,
            RejectReason::Expired,
            kid,
            Some(skew),
        ));
    }
    if skew < -tolerance {
        return Err(record_rejection(
            config,
            RejectReason::FromFuture,
            kid,
            Some(skew),
        ));
    }

    Ok(Checked {
        header,
        key,
        skew: saturate(skew),
    })
}

/// Returns whole seconds since the Unix epoch, 0 for an earlier time.
fn unix_seconds(now: SystemTime) -> u64 {
    now.duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}

/// Returns `now - ts` in seconds: positive for a request from the past.
/// Both fit in `i128` with room to spare, so the difference cannot
/// overflow.
fn clock_skew(now: u64, ts: u64) -> i128 {
    i128::from(now) - i128::from(ts)
}

fn saturate(skew: i128) -> i64 {
    i64::try_from(skew).unwrap_or(if skew < 0 { i64::MIN } else { i64::MAX })
}

/// Returns the `Content-Length` value, if it is a valid number.
fn declared_length(headers: &HeaderMap) -> Option<usize> {
    headers
        .get(CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse::<u64>()
        .ok()
        .map(|length| usize::try_from(length).unwrap_or(usize::MAX))
}

/// Reads the body up to the limit, checks the signature and the replay
/// guard, then calls the inner service.
async fn verify_body<S, ReqBody, ResBody>(
    config: Arc<Config>,
    checked: Checked,
    request: Request<ReqBody>,
    mut inner: S,
) -> VerifyResult<ResBody, S::Error>
where
    S: Service<Request<Full<Bytes>>, Response = Response<ResBody>>,
    ReqBody: Body,
    ReqBody::Error: Into<BoxError>,
{
    let (mut parts, body) = request.into_parts();
    let bytes = match collect_limited(body, config.body_limit).await {
        Ok(bytes) => bytes,
        Err(CollectError::TooLarge { .. }) => return Ok(too_large(&config)),
        Err(CollectError::Read(error)) => {
            tracing::debug!(error = %error, "failed to read signed request body");
            return Ok(problem(
                StatusCode::BAD_REQUEST,
                Some("failed to read the request body"),
            ));
        }
    };

    let Checked { header, key, skew } = checked;
    let kid = Some(header.kid());
    let digest = DigestHex::of(&bytes);
    let target = path_and_query(&parts.uri);
    let signed = SignedParts {
        kid: header.kid(),
        ts: header.ts(),
        nonce: header.nonce(),
        method: parts.method.as_str(),
        path_and_query: &target,
        body_digest: digest.as_str(),
    };
    if !key.verify_parts(&signed, header.signature()) {
        return Ok(reject(
            &config,
            RejectReason::BadSignature,
            kid,
            Some(skew.into()),
        ));
    }

    let ttl = config.tolerance.saturating_mul(2);
    match config
        .replay
        .insert(header.kid(), header.nonce(), ttl)
        .await
    {
        Ok(true) => {}
        Ok(false) => {
            return Ok(reject(
                &config,
                RejectReason::Replayed,
                kid,
                Some(skew.into()),
            ));
        }
        Err(error) => return Ok(store_failed(&config, header.kid(), &error)),
    }

    config.metrics.count_accepted();
    tracing::trace!(
        kid = header.kid(),
        skew_secs = skew,
        "accepted signed request"
    );
    if let Some(value) = parts.headers.get_mut(HEADER_NAME) {
        // Keeps the signature out of `Debug` output and HPACK tables of
        // the services below.
        value.set_sensitive(true);
    }
    parts.extensions.insert(key.id().clone());
    let request = Request::from_parts(parts, Full::new(bytes));
    let response = inner.call(request).await?;
    Ok(response.map(ResponseBody::inner))
}

/// Counts and logs a rejection, and returns its reason.
fn record_rejection(
    config: &Config,
    reason: RejectReason,
    kid: Option<&str>,
    skew: Option<i128>,
) -> RejectReason {
    config.metrics.count_rejected(reason);
    tracing::debug!(
        reason = reason.as_str(),
        kid,
        skew_secs = skew.map(saturate),
        "rejected X-Authentication"
    );
    reason
}

/// Counts and logs a rejection, and builds the uniform `401`.
fn reject<B>(
    config: &Config,
    reason: RejectReason,
    kid: Option<&str>,
    skew: Option<i128>,
) -> Response<ResponseBody<B>> {
    record_rejection(config, reason, kid, skew);
    unauthorized()
}

fn too_large<B>(config: &Config) -> Response<ResponseBody<B>> {
    config.metrics.count_too_large();
    tracing::debug!(
        limit = config.body_limit,
        "signed request body over the limit"
    );
    let detail = format!(
        "request body is longer than the {}-byte limit",
        config.body_limit
    );
    problem(StatusCode::PAYLOAD_TOO_LARGE, Some(&detail))
}

fn store_failed<B>(
    config: &Config,
    kid: &str,
    error: &crate::store::StoreError,
) -> Response<ResponseBody<B>> {
    config.metrics.count_store_error();
    tracing::warn!(
        kid,
        error = %error,
        "replay store failed; rejecting the signed request with 503"
    );
    problem(StatusCode::SERVICE_UNAVAILABLE, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skew_is_exact_at_the_extremes() {
        assert_eq!(clock_skew(0, 99_999_999_999), -99_999_999_999);
        assert_eq!(clock_skew(u64::MAX, 1), i128::from(u64::MAX) - 1);
        assert_eq!(saturate(i128::from(u64::MAX)), i64::MAX);
    }
}
