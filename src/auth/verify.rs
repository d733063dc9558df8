//! The server-side layer that verifies `X-Authentication`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use std::{fmt, mem};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::header::CONTENT_LENGTH;
use http::request::Parts;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::Full;
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use super::canonical::{DigestHex, SignedParts, path_and_query};
use super::header::SignatureHeader;
use super::key::{Key, KeyRing, LookupError};
use super::rejection::{AuthMetrics, RejectReason, unauthorized};
use super::{DEFAULT_BODY_LIMIT, HEADER_NAME};
use crate::BoxError;
use crate::body::{CollectError, CollectLimited, ResponseBody, collect_limited, problem};
use crate::clock::{self, Rounding, SharedClock, unix_millis};
use crate::store::memory::MemoryReplayStore;
use crate::store::{ReplayStore, StoreError};

/// The default clock tolerance: 300 seconds in both directions.
pub const DEFAULT_TOLERANCE: Duration = Duration::from_secs(300);

/// Verifies the `X-Authentication` header of every request, and passes the
/// authenticated [`KeyId`](super::KeyId) to the inner service in the
/// request extensions.
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
    replay: Replay,
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
                replay: Replay::default_for(&clock),
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
        self.config.replay = Replay::Custom(store);
        self
    }

    /// Sets the clock. Defaults to the system clock. The default replay
    /// store follows this clock too.
    pub fn clock(mut self, clock: SharedClock) -> Self {
        if let Replay::Default(_) = self.config.replay {
            self.config.replay = Replay::default_for(&clock);
        }
        self.config.clock = clock;
        self
    }

    /// Sets how far `ts` may be from the receiver's clock, in either
    /// direction, counted in whole seconds. Defaults to 300 seconds
    /// ([`DEFAULT_TOLERANCE`]). Nonces are kept for at least twice this
    /// time, and until their `ts` is out of the window.
    pub fn tolerance(mut self, tolerance: Duration) -> Self {
        self.config.tolerance = tolerance;
        self
    }

    /// Sets the largest accepted body in bytes. Defaults to 2 MiB
    /// ([`DEFAULT_BODY_LIMIT`]).
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

/// The store of accepted (`kid`, `nonce`) pairs.
#[derive(Clone)]
enum Replay {
    /// The layer's own memory store, on the layer's clock. It is called
    /// directly, without the trait's boxed future, because its insert
    /// takes a lock and never waits for I/O.
    Default(Arc<MemoryReplayStore>),
    Custom(Arc<dyn ReplayStore>),
}

impl Replay {
    fn default_for(clock: &SharedClock) -> Self {
        Self::Default(Arc::new(MemoryReplayStore::with_clock(
            MemoryReplayStore::DEFAULT_CAPACITY,
            clock.clone(),
        )))
    }
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
            .field(
                "custom_replay_store",
                &matches!(self.replay, Replay::Custom(_)),
            )
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

const POLLED_AFTER_COMPLETION: &str = "`ResponseFuture` polled after completion";

type VerifyResult<B, E> = Result<Response<ResponseBody<B>>, E>;

pin_project! {
    /// The response future of [`Verify`].
    ///
    /// A state machine of its own rather than a boxed `async` block. That
    /// box was over a kilobyte, past glibc's per-thread cache, and in an
    /// in-process profile its allocation took about a tenth of the
    /// layer's time.
    pub struct ResponseFuture<S, ReqBody, ResBody>
    where
        S: Service<Request<Full<Bytes>>>,
    {
        #[pin]
        state: State<S, ReqBody, ResBody>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, ReqBody, ResBody>
    where
        S: Service<Request<Full<Bytes>>>,
    {
        // A response the layer made itself. `None` once any response has
        // been returned.
        Respond {
            response: Option<Response<ResponseBody<ResBody>>>,
        },
        // Reading the body. `pending` is `None` once the body is read.
        Collect {
            #[pin]
            body: CollectLimited<ReqBody>,
            pending: Option<Pending<S>>,
        },
        // Waiting for a replay store other than the default one.
        Replay {
            insert: BoxFuture<'static, Result<bool, StoreError>>,
            pending: Option<(Pending<S>, Bytes)>,
        },
        // Calling the inner service.
        Call {
            #[pin]
            future: S::Future,
        },
    }
}

impl<S, ReqBody, ResBody> fmt::Debug for ResponseFuture<S, ReqBody, ResBody>
where
    S: Service<Request<Full<Bytes>>>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<S, ReqBody, ResBody> ResponseFuture<S, ReqBody, ResBody>
where
    S: Service<Request<Full<Bytes>>>,
{
    fn respond(response: Response<ResponseBody<ResBody>>) -> Self {
        Self {
            state: respond(response),
        }
    }
}

impl<S, ReqBody, ResBody> Future for ResponseFuture<S, ReqBody, ResBody>
where
    S: Service<Request<Full<Bytes>>, Response = Response<ResBody>>,
    ReqBody: Body,
    ReqBody::Error: Into<BoxError>,
{
    type Output = VerifyResult<ResBody, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut state = self.project().state;
        loop {
            let step = match state.as_mut().project() {
                StateProj::Respond { response } => {
                    let response = response.take().expect(POLLED_AFTER_COMPLETION);
                    return Poll::Ready(Ok(response));
                }
                StateProj::Collect { body, pending } => {
                    let body = ready!(body.poll(cx));
                    let pending = pending.take().expect(POLLED_AFTER_COMPLETION);
                    pending.check_body(body)
                }
                StateProj::Replay { insert, pending } => {
                    let inserted = ready!(insert.as_mut().poll(cx));
                    let (pending, bytes) = pending.take().expect(POLLED_AFTER_COMPLETION);
                    pending.finish(inserted, bytes)
                }
                StateProj::Call { future } => {
                    // A finished inner future is not polled again, because
                    // some return `Pending` forever then. An empty `Respond`
                    // panics on the next poll instead.
                    let output = ready!(future.poll(cx));
                    state.set(State::Respond { response: None });
                    return Poll::Ready(output.map(|response| response.map(ResponseBody::inner)));
                }
            };
            state.set(step);
        }
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Verify<S>
where
    S: Service<Request<Full<Bytes>>, Response = Response<ResBody>> + Clone,
    ReqBody: Body,
    ReqBody::Error: Into<BoxError>,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S, ReqBody, ResBody>;

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
        let (parts, body) = request.into_parts();
        let pending = Pending {
            config: self.config.clone(),
            checked,
            parts,
            inner,
        };
        ResponseFuture {
            state: State::Collect {
                body: collect_limited(body, self.config.body_limit),
                pending: Some(pending),
            },
        }
    }
}

/// The outcome of the header checks: a well-formed header with a key
/// valid now and a timestamp within the tolerance.
struct Checked {
    header: SignatureHeader,
    key: Arc<Key>,
    now: SystemTime,
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
        now,
        skew: saturate(skew),
    })
}

/// Returns whole seconds since the Unix epoch, rounded down, so negative
/// before it. A clock set before 1970 must not read as the epoch itself,
/// where every `ts` up to the tolerance would pass.
fn unix_seconds(now: SystemTime) -> i128 {
    i128::from(unix_millis(now, Rounding::Down).div_euclid(1000))
}

/// Returns `now - ts` in seconds: positive for a request from the past.
/// Both fit in `i128` with room to spare, so the difference cannot
/// overflow.
fn clock_skew(now: i128, ts: u64) -> i128 {
    now - i128::from(ts)
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

/// A request whose header passed, on its way through the body checks.
struct Pending<S> {
    config: Arc<Config>,
    checked: Checked,
    parts: Parts,
    inner: S,
}

impl<S> Pending<S>
where
    S: Service<Request<Full<Bytes>>>,
{
    /// Checks the signature over the read body, then records the nonce.
    fn check_body<ReqBody, ResBody>(
        self,
        body: Result<Bytes, CollectError>,
    ) -> State<S, ReqBody, ResBody> {
        let bytes = match body {
            Ok(bytes) => bytes,
            Err(CollectError::TooLarge { .. }) => return respond(too_large(&self.config)),
            Err(CollectError::Read(error)) => {
                tracing::debug!(error = %error, "failed to read signed request body");
                return respond(problem(
                    StatusCode::BAD_REQUEST,
                    Some("failed to read the request body"),
                ));
            }
        };

        if !self.signature_matches(&bytes) {
            return respond(self.reject(RejectReason::BadSignature));
        }

        let header = &self.checked.header;
        let ttl = self.replay_ttl();
        match &self.config.replay {
            // The memory store counts `ttl` from the time `ts` was checked,
            // and a custom store from its own insert, which comes later.
            Replay::Default(store) => {
                let inserted = store.insert_at(header.kid(), header.nonce(), ttl, self.checked.now);
                self.finish(inserted, bytes)
            }
            Replay::Custom(store) => {
                let (store, kid, nonce) = (
                    store.clone(),
                    header.kid().to_owned(),
                    header.nonce().to_owned(),
                );
                State::Replay {
                    insert: Box::pin(async move { store.insert(&kid, &nonce, ttl).await }),
                    pending: Some((self, bytes)),
                }
            }
        }
    }

    /// Returns how long to keep the (`kid`, `nonce`) pair from the time
    /// `ts` was checked: `2 x tolerance`, and longer if `ts` would still
    /// pass the check after that.
    ///
    /// The check compares whole seconds, so `ts` passes until just before
    /// `ts + tolerance + 1`. A `ts` up to `tolerance` ahead of the check
    /// time therefore passes for up to `2 x tolerance + 1` seconds.
    fn replay_ttl(&self) -> Duration {
        let twice_tolerance = self.config.tolerance.saturating_mul(2);
        let window_end = self
            .checked
            .header
            .timestamp()
            .checked_add(self.config.tolerance.as_secs())
            .and_then(|seconds| seconds.checked_add(1))
            .and_then(|seconds| UNIX_EPOCH.checked_add(Duration::from_secs(seconds)));
        let until_window_end = match window_end {
            Some(end) => end
                .duration_since(self.checked.now)
                .unwrap_or(Duration::ZERO),
            None => Duration::MAX,
        };
        twice_tolerance.max(until_window_end)
    }

    fn signature_matches(&self, bytes: &[u8]) -> bool {
        let header = &self.checked.header;
        let digest = DigestHex::of(bytes);
        let target = path_and_query(&self.parts.uri);
        let signed = SignedParts {
            kid: header.kid(),
            ts: header.ts(),
            nonce: header.nonce(),
            method: self.parts.method.as_str(),
            path_and_query: &target,
            body_digest: digest.as_str(),
        };
        self.checked.key.verify_parts(&signed, header.signature())
    }

    /// Rejects a replay or a store failure, or else calls the inner
    /// service with the key id in the request's extensions.
    fn finish<ReqBody, ResBody>(
        self,
        inserted: Result<bool, StoreError>,
        bytes: Bytes,
    ) -> State<S, ReqBody, ResBody> {
        match inserted {
            Ok(true) => {}
            Ok(false) => return respond(self.reject(RejectReason::Replayed)),
            Err(error) => {
                return respond(store_failed(
                    &self.config,
                    self.checked.header.kid(),
                    &error,
                ));
            }
        }

        let Self {
            config,
            checked,
            mut parts,
            mut inner,
        } = self;
        config.metrics.count_accepted();
        tracing::trace!(
            kid = checked.header.kid(),
            skew_secs = checked.skew,
            "accepted signed request"
        );
        if let Some(value) = parts.headers.get_mut(HEADER_NAME) {
            // Keeps the signature out of `Debug` output and HPACK tables of
            // the services below.
            value.set_sensitive(true);
        }
        parts.extensions.insert(checked.key.id().clone());
        let request = Request::from_parts(parts, Full::new(bytes));
        State::Call {
            future: inner.call(request),
        }
    }

    fn reject<B>(&self, reason: RejectReason) -> Response<ResponseBody<B>> {
        let kid = Some(self.checked.header.kid());
        reject(&self.config, reason, kid, Some(self.checked.skew.into()))
    }
}

fn respond<S, ReqBody, ResBody>(
    response: Response<ResponseBody<ResBody>>,
) -> State<S, ReqBody, ResBody>
where
    S: Service<Request<Full<Bytes>>>,
{
    State::Respond {
        response: Some(response),
    }
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

fn store_failed<B>(config: &Config, kid: &str, error: &StoreError) -> Response<ResponseBody<B>> {
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
        assert_eq!(
            clock_skew(i128::from(u64::MAX), 1),
            i128::from(u64::MAX) - 1
        );
        assert_eq!(
            clock_skew(-i128::from(u64::MAX), 99_999_999_999),
            -i128::from(u64::MAX) - 99_999_999_999
        );
        assert_eq!(saturate(i128::from(u64::MAX)), i64::MAX);
    }

    #[test]
    fn unix_seconds_round_down_before_1970() {
        let cases = [
            (UNIX_EPOCH, 0),
            (UNIX_EPOCH + Duration::from_millis(1_500), 1),
            (UNIX_EPOCH - Duration::from_millis(500), -1),
            (UNIX_EPOCH - Duration::from_secs(2), -2),
            (UNIX_EPOCH - Duration::from_millis(2_001), -3),
        ];

        for (time, seconds) in cases {
            assert_eq!(unix_seconds(time), seconds, "{time:?}");
        }
    }
}
