use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, Uri};
use http_body::Body;
use http_body_util::Full;
use tower::Service;

use crate::BoxError;
use crate::clock::SharedClock;
use crate::retry::{Backoff, InvalidRequest, SuccessSpec, check_uri};
use crate::store::{Message, MessageQueue};
use crate::worker::{PermanentFailure, Worker, WorkerHandle};

/// Delivers the messages of an outbox queue through an HTTP client stack.
///
/// A configured [`Worker`] that rebuilds each stored request as
/// `destination + path_and_query` with the stored method, headers
/// (`Idempotency-Key` included) and body, and dead-letters permanent
/// failures. Several dispatchers, in one process or many, may serve the
/// same store: leases keep each message with one of them at a time.
///
/// # Defaults
///
/// | setting | default |
/// |---|---|
/// | [`queue`](Self::queue) | `outbox` |
/// | [`lease`](Self::lease) | 30 s |
/// | [`batch_size`](Self::batch_size) | 64 |
/// | [`concurrency`](Self::concurrency) | 64 |
/// | [`per_destination`](Self::per_destination) | 16 |
/// | [`poll_interval`](Self::poll_interval) | 1 s |
/// | [`attempt_timeout`](Self::attempt_timeout) | 30 s |
/// | [`backoff`](Self::backoff) | [`Backoff::default`]: about a day of retries |
/// | [`success`](Self::success) | [`StandardSuccess`](crate::retry::StandardSuccess) |
/// | [`shutdown_grace`](Self::shutdown_grace) | 10 s |
pub struct Dispatcher {
    worker: Worker,
}

impl Dispatcher {
    /// Creates a dispatcher for the `outbox` queue of `store` that sends
    /// through `client`. Put the signing layer in `client`, so that every
    /// attempt is signed afresh.
    pub fn new<S, B>(store: Arc<dyn MessageQueue>, client: S) -> Self
    where
        S: Service<Request<Full<Bytes>>, Response = Response<B>> + Clone + Send + 'static,
        S::Future: Send + 'static,
        S::Error: Into<BoxError>,
        B: Body<Data = Bytes> + Send + 'static,
    {
        let worker = Worker::new("outbox", store, client, outbound_request)
            .on_permanent(PermanentFailure::DeadLetter)
            .per_destination(16);
        Self { worker }
    }

    /// Sets the queue to serve; it must match the outbox layer's. Default:
    /// `outbox`.
    pub fn queue(self, queue: impl Into<String>) -> Self {
        let queue = queue.into();
        self.map(|worker| worker.queue_name(queue))
    }

    /// Sets how long a claim lasts without renewal: how long a dead
    /// dispatcher's messages wait before another takes them. Default: 30 s.
    pub fn lease(self, lease: Duration) -> Self {
        self.map(|worker| worker.lease(lease))
    }

    /// Sets how many messages one claim takes at most. Default: 64.
    pub fn batch_size(self, size: usize) -> Self {
        self.map(|worker| worker.batch_size(size))
    }

    /// Sets how many messages are sent at once. Default: 64.
    pub fn concurrency(self, limit: usize) -> Self {
        self.map(|worker| worker.concurrency(limit))
    }

    /// Sets how many messages to one destination (`scheme://authority`)
    /// are sent at once. Default: 16.
    pub fn per_destination(self, limit: usize) -> Self {
        self.map(|worker| worker.per_destination(limit))
    }

    /// Sets how often an idle dispatcher claims without a wake-up.
    /// Default: 1 s.
    pub fn poll_interval(self, interval: Duration) -> Self {
        self.map(|worker| worker.poll_interval(interval))
    }

    /// Sets how long one attempt may take. Default: 30 s.
    pub fn attempt_timeout(self, timeout: Duration) -> Self {
        self.map(|worker| worker.attempt_timeout(timeout))
    }

    /// Sets the delays between attempts and when to give up. Default:
    /// [`Backoff::default`].
    pub fn backoff(self, backoff: Backoff) -> Self {
        self.map(|worker| worker.backoff(backoff))
    }

    /// Sets what counts as success. Default:
    /// [`StandardSuccess`](crate::retry::StandardSuccess).
    pub fn success(self, spec: impl SuccessSpec) -> Self {
        self.map(|worker| worker.success(spec))
    }

    /// Sets how long shutdown lets in-flight sends finish before releasing
    /// them. Default: 10 s.
    pub fn shutdown_grace(self, grace: Duration) -> Self {
        self.map(|worker| worker.shutdown_grace(grace))
    }

    /// Sets the clock for schedules and ages. Default: the system clock.
    pub fn clock(self, clock: SharedClock) -> Self {
        self.map(|worker| worker.clock(clock))
    }

    /// Starts the dispatcher on the current tokio runtime.
    ///
    /// # Panics
    ///
    /// Panics if called outside a tokio runtime.
    pub fn spawn(self) -> WorkerHandle {
        self.worker.spawn()
    }

    fn map(mut self, change: impl FnOnce(Worker) -> Worker) -> Self {
        self.worker = change(self.worker);
        self
    }
}

impl fmt::Debug for Dispatcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dispatcher")
            .field("worker", &self.worker)
            .finish()
    }
}

/// Rebuilds the outbound request of a stored outbox message.
///
/// # Errors
///
/// Fails when the stored destination and target do not form an `http` or
/// `https` URI, which the dispatcher dead-letters.
pub fn outbound_request(message: &Message) -> Result<Request<Full<Bytes>>, BoxError> {
    let uri: Uri = format!("{}{}", message.destination, message.path_and_query)
        .parse()
        .map_err(|error| InvalidRequest::new(format!("invalid stored destination: {error}")))?;
    check_uri(&uri)?;

    let mut request = Request::new(Full::new(message.body.clone()));
    *request.method_mut() = message.method.clone();
    *request.uri_mut() = uri;
    *request.headers_mut() = message.headers.clone();
    Ok(request)
}
