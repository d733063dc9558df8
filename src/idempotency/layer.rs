use std::sync::Arc;
use std::time::Duration;

use tower::Layer;

use super::Idempotency;
use crate::store::IdempotencyStore;

/// The default lease of a claim: 60 seconds, renewed every 20 seconds
/// while the handler runs.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(60);

/// The default retention of a completed record: 24 hours.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(24 * 60 * 60);

/// The default request body limit: 2 MiB, the same as axum's.
pub const DEFAULT_REQUEST_BODY_LIMIT: usize = 2 * 1024 * 1024;

/// The default limit on a stored response body: 1 MiB.
pub const DEFAULT_RESPONSE_BODY_LIMIT: usize = 1024 * 1024;

/// Applies `Idempotency-Key` deduplication to requests.
///
/// See the [module docs](super) for the behaviour and the wire contract.
#[derive(Debug, Clone)]
pub struct IdempotencyLayer {
    config: Arc<Config>,
}

#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) store: Arc<dyn IdempotencyStore>,
    pub(crate) key_required: bool,
    pub(crate) lease: Duration,
    pub(crate) retention: Duration,
    pub(crate) request_body_limit: usize,
    pub(crate) response_body_limit: usize,
    pub(crate) wait: Option<Duration>,
}

impl IdempotencyLayer {
    /// Creates a layer that responds `400 Bad Request` to an unsafe request
    /// (any method but GET, HEAD, OPTIONS and TRACE) without a key.
    pub fn required(store: Arc<dyn IdempotencyStore>) -> Self {
        Self::with_key_required(store, true)
    }

    /// Creates a layer that passes a request without a key to the inner
    /// service undeduplicated.
    pub fn optional(store: Arc<dyn IdempotencyStore>) -> Self {
        Self::with_key_required(store, false)
    }

    fn with_key_required(store: Arc<dyn IdempotencyStore>, key_required: bool) -> Self {
        let config = Config {
            store,
            key_required,
            lease: DEFAULT_LEASE,
            retention: DEFAULT_RETENTION,
            request_body_limit: DEFAULT_REQUEST_BODY_LIMIT,
            response_body_limit: DEFAULT_RESPONSE_BODY_LIMIT,
            wait: None,
        };
        Self {
            config: Arc::new(config),
        }
    }

    /// Sets the lease of a claim, renewed every third of it while the
    /// handler runs. A claim left by a crashed process is taken over once
    /// its lease ends. Defaults to [`DEFAULT_LEASE`] (60 seconds).
    pub fn lease(mut self, lease: Duration) -> Self {
        Arc::make_mut(&mut self.config).lease = lease;
        self
    }

    /// Sets how long a completed response is replayed. Defaults to
    /// [`DEFAULT_RETENTION`] (24 hours). Expired records are deleted by
    /// [`spawn_purge_task`](super::spawn_purge_task) or the store's own
    /// purge.
    pub fn retention(mut self, retention: Duration) -> Self {
        Arc::make_mut(&mut self.config).retention = retention;
        self
    }

    /// Sets the largest request body accepted, in bytes; a longer one gets
    /// `413 Content Too Large`. Defaults to
    /// [`DEFAULT_REQUEST_BODY_LIMIT`] (2 MiB).
    pub fn request_body_limit(mut self, limit: usize) -> Self {
        Arc::make_mut(&mut self.config).request_body_limit = limit;
        self
    }

    /// Sets the largest response body stored, in bytes. Defaults to
    /// [`DEFAULT_RESPONSE_BODY_LIMIT`] (1 MiB).
    ///
    /// A longer response still goes whole to the first caller, and the
    /// record keeps a `410 Gone` problem in its place, so retries neither
    /// run the handler again nor get a truncated body.
    pub fn response_body_limit(mut self, limit: usize) -> Self {
        Arc::make_mut(&mut self.config).response_body_limit = limit;
        self
    }

    /// Makes a request whose key is held by a running request wait up to
    /// `timeout` for that request to finish, then replay its response (or
    /// run the handler if the first request released its claim). After the
    /// timeout it gets `409 Conflict` as without waiting.
    ///
    /// Off by default: a conflicting request gets `409 Conflict` with
    /// `Retry-After: 1` at once.
    pub fn wait_for_running(mut self, timeout: Duration) -> Self {
        Arc::make_mut(&mut self.config).wait = Some(timeout);
        self
    }
}

impl<S> Layer<S> for IdempotencyLayer {
    type Service = Idempotency<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Idempotency::from_config(inner, self.config.clone())
    }
}
