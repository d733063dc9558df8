use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::Request;
use http_body::Body;
use tower::Layer;

use super::{Outbox, OutboxError};
use crate::BoxError;
use crate::clock::{self, SharedClock};
use crate::retry::{Backoff, SharedSuccessSpec, StandardSuccess, SuccessSpec};
use crate::store::{MessageQueue, NewMessage};

/// Whether the outbox tries a request inline before storing it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    Optimistic,
    Background,
}

/// Puts an outbox in front of an HTTP client service: see the
/// [module docs](super).
///
/// # Defaults
///
/// | setting | default |
/// |---|---|
/// | [`queue`](Self::queue) | `outbox` |
/// | [`body_limit`](Self::body_limit) | 2 MiB |
/// | [`attempt_timeout`](Self::attempt_timeout) | 10 s (optimistic mode) |
/// | [`success`](Self::success) | [`StandardSuccess`] |
/// | [`backoff`](Self::backoff) | [`Backoff::default`], for the first delay after a failed inline attempt |
#[derive(Clone)]
pub struct OutboxLayer {
    pub(crate) config: Arc<OutboxConfig>,
}

#[derive(Clone)]
pub(crate) struct OutboxConfig {
    pub(crate) mode: Mode,
    pub(crate) store: Arc<dyn MessageQueue>,
    pub(crate) queue: String,
    pub(crate) body_limit: usize,
    pub(crate) attempt_timeout: Duration,
    pub(crate) success: SharedSuccessSpec,
    pub(crate) backoff: Backoff,
    pub(crate) clock: SharedClock,
}

impl OutboxLayer {
    /// Creates a layer that tries each request once inline and stores it
    /// only if that attempt fails transiently.
    ///
    /// A success returns [`Delivery::Delivered`](super::Delivery::Delivered)
    /// and stores nothing; a permanent failure returns
    /// [`Delivery::Rejected`](super::Delivery::Rejected) or an
    /// [`OutboxError`](super::OutboxError); a transient failure stores the
    /// request and returns [`Delivery::Queued`](super::Delivery::Queued).
    pub fn optimistic(store: Arc<dyn MessageQueue>) -> Self {
        Self::with_mode(Mode::Optimistic, store)
    }

    /// Creates a layer that stores each request and returns
    /// [`Delivery::Queued`](super::Delivery::Queued) at once, leaving the
    /// delivery to a dispatcher. A permanent failure is dead-lettered by
    /// the dispatcher.
    pub fn background(store: Arc<dyn MessageQueue>) -> Self {
        Self::with_mode(Mode::Background, store)
    }

    fn with_mode(mode: Mode, store: Arc<dyn MessageQueue>) -> Self {
        Self {
            config: Arc::new(OutboxConfig {
                mode,
                store,
                queue: "outbox".to_owned(),
                body_limit: 2 * 1024 * 1024,
                attempt_timeout: Duration::from_secs(10),
                success: Arc::new(StandardSuccess),
                backoff: Backoff::default(),
                clock: clock::system(),
            }),
        }
    }

    /// Sets the queue messages are stored in; the dispatcher must serve the
    /// same queue. Default: `outbox`.
    pub fn queue(mut self, queue: impl Into<String>) -> Self {
        Arc::make_mut(&mut self.config).queue = queue.into();
        self
    }

    /// Sets the largest request body the outbox buffers and stores. A
    /// longer body is an error and nothing is sent or stored. Default:
    /// 2 MiB.
    pub fn body_limit(mut self, limit: usize) -> Self {
        Arc::make_mut(&mut self.config).body_limit = limit;
        self
    }

    /// Sets how long the inline attempt of optimistic mode may take until
    /// the response head arrives; a timeout stores the request. Default:
    /// 10 s.
    pub fn attempt_timeout(mut self, timeout: Duration) -> Self {
        Arc::make_mut(&mut self.config).attempt_timeout = timeout;
        self
    }

    /// Sets what counts as success for the inline attempt. Give the
    /// dispatcher the same specification. Default: [`StandardSuccess`].
    pub fn success(mut self, spec: impl SuccessSpec) -> Self {
        Arc::make_mut(&mut self.config).success = Arc::new(spec);
        self
    }

    /// Sets the backoff whose first delay schedules a request after a
    /// failed inline attempt, honouring `Retry-After`. Default:
    /// [`Backoff::default`].
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        Arc::make_mut(&mut self.config).backoff = backoff;
        self
    }

    /// Sets the clock for `available_at` times. Default: the system clock.
    pub fn clock(mut self, clock: SharedClock) -> Self {
        Arc::make_mut(&mut self.config).clock = clock;
        self
    }

    /// Converts `request` into the message this layer would store for it,
    /// without storing or sending anything: for the [transactional
    /// outbox](super#transactional-outbox), where the caller stores it
    /// with the store's `enqueue_in` inside its own database transaction.
    ///
    /// The conversion is the layer's own. The body is buffered up to
    /// [`body_limit`](Self::body_limit). The message gets a new id and,
    /// unless the request has one, an `Idempotency-Key` header with that
    /// id. It goes to this layer's [`queue`](Self::queue), due at once.
    /// The layer's mode does not matter here.
    ///
    /// # Errors
    ///
    /// As the layer: a scheme other than `http` or `https`, no host, a body
    /// over the limit, or a body that fails to read.
    pub async fn prepare<B>(&self, request: Request<B>) -> Result<NewMessage, OutboxError>
    where
        B: Body,
        B::Error: Into<BoxError>,
    {
        super::send::message_for(&self.config, request).await
    }
}

impl fmt::Debug for OutboxLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let config = &self.config;
        f.debug_struct("OutboxLayer")
            .field("mode", &config.mode)
            .field("store", &config.store)
            .field("queue", &config.queue)
            .field("body_limit", &config.body_limit)
            .field("attempt_timeout", &config.attempt_timeout)
            .field("success", &config.success)
            .field("backoff", &config.backoff)
            .finish()
    }
}

impl<S> Layer<S> for OutboxLayer {
    type Service = Outbox<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Outbox::from_config(inner, self.config.clone())
    }
}
