//! The background worker that delivers stored messages: claim, send,
//! classify, then complete, reschedule or end each one.
//!
//! One mechanism serves every queue of the crate. The outbox dispatcher
//! configures a [`Worker`] to send stored requests to their destinations,
//! and the `202 Accepted` layer configures one to run stored commands
//! against its handler. A worker is built from:
//!
//! - a queue name and a [`MessageQueue`];
//! - a tower service that takes `Request<Full<Bytes>>` and returns
//!   `Response<B>`, such as an HTTP client stack;
//! - a function that turns a stored [`Message`] into the request to send;
//! - a [`SuccessSpec`], a [`Backoff`], and what a permanent failure does
//!   ([`PermanentFailure`]).
//!
//! # How a message moves
//!
//! The worker claims up to a batch of due messages with a lease, and
//! processes each in its own task, at most `concurrency` at a time (and at
//! most `per_destination` per destination when set). While a message is
//! in flight its lease is renewed every third of the lease duration. One
//! attempt is sent, within the attempt timeout, and classified:
//!
//! | result | what the worker does |
//! |---|---|
//! | success | `complete`, keeping the response as the [`Outcome`] |
//! | transient failure (timeout, connection error, 5xx, 408, 409, 425, 429, a panic in the service) | `reschedule` after [`Backoff::delay_after`], honouring `Retry-After`; `dead_letter` once the attempts or age run out |
//! | permanent failure | `dead_letter` or `fail`, as configured |
//!
//! Each request carries the claim's [`Lease`] (message id and fencing
//! token) in its extensions, for layers below that log or record attempts.
//!
//! The outcome keeps the response status and at most the first
//! [`Worker::outcome_limit`] bytes of the body (64 KiB by default).
//!
//! Wake-ups from [`MessageQueue::subscribe`] start a claim soon after an
//! enqueue; the worker also polls every `poll_interval`, because wake-ups
//! can be missed and a message rescheduled for later sends no wake-up.
//!
//! # What is promised
//!
//! Delivery is **at least once**: a worker that dies, or whose result
//! cannot be written, leaves a message that is sent again after its lease
//! expires. A worker whose lease was taken over has its late writes
//! rejected by the fencing token. Receivers deduplicate by the
//! `Idempotency-Key` that every stored outbox request carries.
//!
//! Not promised: delivery order, exactly-once effects without the
//! receiver's deduplication, and a retry exactly at its scheduled time
//! (a rescheduled message is claimed at the next poll or wake-up after it
//! becomes due).
//!
//! # Logs and metrics
//!
//! Every attempt runs in a `courier.attempt` span with the queue, message
//! id, destination and attempt number. Retries and lease takeovers are
//! logged at `info`, dead letters and lost leases at `warn`.
//! [`WorkerHandle::metrics`] returns the counters.
//!
//! # Example
//!
//! ```
//! use std::convert::Infallible;
//! use std::sync::Arc;
//! use std::time::{Duration, SystemTime};
//!
//! use bytes::Bytes;
//! use http::{Method, Request, Response, StatusCode};
//! use http_body_util::Full;
//! use tower::service_fn;
//! use tower_courier::store::{MessageQueue, MessageState, NewMessage, memory::MemoryStore};
//! use tower_courier::worker::Worker;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let store: Arc<dyn MessageQueue> = Arc::new(MemoryStore::new());
//! let handler = service_fn(|request: Request<Full<Bytes>>| async move {
//!     let status = if request.uri().path() == "/ok" { StatusCode::OK } else { StatusCode::BAD_REQUEST };
//!     let mut response = Response::new(Full::new(Bytes::from("done")));
//!     *response.status_mut() = status;
//!     Ok::<_, Infallible>(response)
//! });
//! let make_request = |message: &tower_courier::store::Message| {
//!     let request = Request::builder()
//!         .method(message.method.clone())
//!         .uri(message.path_and_query.as_str())
//!         .body(Full::new(message.body.clone()))?;
//!     Ok(request)
//! };
//!
//! let message = NewMessage::new("jobs", "local", Method::POST, "/ok", SystemTime::now());
//! let id = message.id;
//! store.enqueue(vec![message]).await.unwrap();
//! let worker = Worker::new("jobs", store.clone(), handler, make_request)
//!     .poll_interval(Duration::from_millis(10))
//!     .spawn();
//!
//! while store.get(id).await.unwrap().unwrap().state != MessageState::Succeeded {
//!     tokio::time::sleep(Duration::from_millis(5)).await;
//! }
//! worker.shutdown().await;
//!
//! let outcome = store.get(id).await.unwrap().unwrap().outcome.unwrap();
//! assert_eq!(outcome.status, StatusCode::OK);
//! assert_eq!(outcome.body, "done");
//! assert_eq!(worker.metrics().delivered, 1);
//! # }
//! ```
//!
//! [`MessageQueue`]: crate::store::MessageQueue
//! [`MessageQueue::subscribe`]: crate::store::MessageQueue::subscribe
//! [`Message`]: crate::store::Message
//! [`Lease`]: crate::store::Lease
//! [`Outcome`]: crate::store::Outcome
//! [`SuccessSpec`]: crate::retry::SuccessSpec
//! [`Backoff`]: crate::retry::Backoff
//! [`Backoff::delay_after`]: crate::retry::Backoff::delay_after

mod attempt;
mod handle;
mod lease;
mod record;
mod run;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use http_body_util::Full;
use tokio::sync::{Mutex, watch};
use tower::Service;

pub use handle::{WorkerHandle, WorkerMetrics};

use self::attempt::AttemptService;
use self::handle::{Counters, Phase};
use self::run::{Context, LoopSettings};
use crate::BoxError;
use crate::clock::{self, SharedClock};
use crate::retry::{Backoff, SharedSuccessSpec, StandardSuccess, SuccessSpec};
use crate::store::{Message, MessageQueue};

/// The function that turns a stored message into the request to send.
pub type MakeRequest =
    Arc<dyn Fn(&Message) -> Result<Request<Full<Bytes>>, BoxError> + Send + Sync + 'static>;

/// The end state of a message whose attempt failed permanently.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PermanentFailure {
    /// Moves it to the dead letters, where it can be listed, retried and
    /// purged. The outbox does this.
    DeadLetter,
    /// Marks it failed. The `202 Accepted` layer does this, because a
    /// handler's `4xx` is the command's result rather than a delivery
    /// problem.
    Fail,
}

/// A configured worker, ready to [`spawn`](Self::spawn).
///
/// # Defaults
///
/// | setting | default |
/// |---|---|
/// | [`success`](Self::success) | [`StandardSuccess`] |
/// | [`backoff`](Self::backoff) | [`Backoff::default`]: about a day of retries |
/// | [`on_permanent`](Self::on_permanent) | [`PermanentFailure::DeadLetter`] |
/// | [`lease`](Self::lease) | 30 s |
/// | [`batch_size`](Self::batch_size) | 64 |
/// | [`concurrency`](Self::concurrency) | 64 |
/// | [`per_destination`](Self::per_destination) | no limit |
/// | [`poll_interval`](Self::poll_interval) | 1 s |
/// | [`attempt_timeout`](Self::attempt_timeout) | 30 s |
/// | [`outcome_limit`](Self::outcome_limit) | 64 KiB |
/// | [`shutdown_grace`](Self::shutdown_grace) | 10 s |
pub struct Worker {
    queue: String,
    store: Arc<dyn MessageQueue>,
    make_service: Box<dyn FnOnce(usize) -> AttemptService + Send>,
    make_request: MakeRequest,
    success: SharedSuccessSpec,
    backoff: Backoff,
    on_permanent: PermanentFailure,
    lease: Duration,
    attempt_timeout: Duration,
    outcome_limit: usize,
    clock: SharedClock,
    settings: LoopSettings,
}

impl Worker {
    /// Creates a worker for `queue` in `store` that sends each message
    /// through `service`, after `make_request` turns it into a request.
    pub fn new<S, B, F>(
        queue: impl Into<String>,
        store: Arc<dyn MessageQueue>,
        service: S,
        make_request: F,
    ) -> Self
    where
        S: Service<Request<Full<Bytes>>, Response = Response<B>> + Clone + Send + 'static,
        S::Future: Send + 'static,
        S::Error: Into<BoxError>,
        B: Body<Data = Bytes> + Send + 'static,
        F: Fn(&Message) -> Result<Request<Full<Bytes>>, BoxError> + Send + Sync + 'static,
    {
        Self {
            queue: queue.into(),
            store,
            // The service is erased at spawn, once the outcome limit that
            // its body reader needs is final.
            make_service: Box::new(move |limit| attempt::erase(service, limit)),
            make_request: Arc::new(make_request),
            success: Arc::new(StandardSuccess),
            backoff: Backoff::default(),
            on_permanent: PermanentFailure::DeadLetter,
            lease: Duration::from_secs(30),
            attempt_timeout: Duration::from_secs(30),
            outcome_limit: 64 * 1024,
            clock: clock::system(),
            settings: LoopSettings {
                batch_size: 64,
                concurrency: 64,
                per_destination: None,
                poll_interval: Duration::from_secs(1),
                shutdown_grace: Duration::from_secs(10),
            },
        }
    }

    /// Sets the queue to serve, replacing the one given to
    /// [`new`](Self::new).
    pub fn queue_name(mut self, queue: impl Into<String>) -> Self {
        self.queue = queue.into();
        self
    }

    /// Sets what counts as success and how failures are classified.
    /// Default: [`StandardSuccess`].
    pub fn success(mut self, spec: impl SuccessSpec) -> Self {
        self.success = Arc::new(spec);
        self
    }

    /// Sets the delays between attempts and when to give up. Default:
    /// [`Backoff::default`], about a day of retries.
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// Sets what a permanent failure does. Default:
    /// [`PermanentFailure::DeadLetter`].
    pub fn on_permanent(mut self, how: PermanentFailure) -> Self {
        self.on_permanent = how;
        self
    }

    /// Sets how long a claim lasts without renewal. A worker that dies
    /// holds its messages this long before another worker takes them over.
    /// Default: 30 s.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }

    /// Sets how many messages one claim takes at most (at least 1).
    /// Default: 64.
    pub fn batch_size(mut self, size: usize) -> Self {
        self.settings.batch_size = size.max(1);
        self
    }

    /// Sets how many messages are processed at once (at least 1).
    /// Default: 64.
    pub fn concurrency(mut self, limit: usize) -> Self {
        self.settings.concurrency = limit.max(1);
        self
    }

    /// Sets how many messages to one destination are sent at once (at
    /// least 1). A message waiting for its destination holds one of the
    /// `concurrency` slots and keeps its lease renewed. Default: no limit.
    pub fn per_destination(mut self, limit: usize) -> Self {
        self.settings.per_destination = Some(limit.max(1));
        self
    }

    /// Sets how often an idle worker claims even without a wake-up.
    /// Default: 1 s.
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.settings.poll_interval = interval;
        self
    }

    /// Sets how long one attempt may take, response body included.
    /// Default: 30 s.
    pub fn attempt_timeout(mut self, timeout: Duration) -> Self {
        self.attempt_timeout = timeout;
        self
    }

    /// Sets how many bytes of a response body the outcome keeps; the rest
    /// is not read. Default: 64 KiB.
    pub fn outcome_limit(mut self, limit: usize) -> Self {
        self.outcome_limit = limit;
        self
    }

    /// Sets how long [`WorkerHandle::shutdown`] lets in-flight messages
    /// finish before releasing them. Default: 10 s.
    pub fn shutdown_grace(mut self, grace: Duration) -> Self {
        self.settings.shutdown_grace = grace;
        self
    }

    /// Sets the clock used for schedules and ages. Default: the system
    /// clock.
    pub fn clock(mut self, clock: SharedClock) -> Self {
        self.clock = clock;
        self
    }

    /// Starts the worker on the current tokio runtime and returns its
    /// handle.
    ///
    /// # Panics
    ///
    /// Panics if called outside a tokio runtime.
    pub fn spawn(self) -> WorkerHandle {
        let queue: Arc<str> = self.queue.into();
        let counters = Arc::new(Counters::default());
        let phases = Arc::new(watch::channel(Phase::Running).0);
        let service = (self.make_service)(self.outcome_limit);
        let context = Arc::new(Context {
            queue: queue.clone(),
            store: self.store,
            make_request: self.make_request,
            success: self.success,
            backoff: self.backoff,
            on_permanent: self.on_permanent,
            lease: self.lease,
            attempt_timeout: self.attempt_timeout,
            clock: self.clock,
            counters: counters.clone(),
        });

        let task = tokio::spawn(run::claim_loop(
            context,
            service,
            self.settings,
            phases.clone(),
        ));
        WorkerHandle {
            queue,
            counters,
            phase: phases,
            task: Arc::new(Mutex::new(Some(task))),
        }
    }
}

impl fmt::Debug for Worker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Worker")
            .field("queue", &self.queue)
            .field("store", &self.store)
            .field("success", &self.success)
            .field("backoff", &self.backoff)
            .field("on_permanent", &self.on_permanent)
            .field("lease", &self.lease)
            .field("attempt_timeout", &self.attempt_timeout)
            .field("outcome_limit", &self.outcome_limit)
            .finish_non_exhaustive()
    }
}
