use std::sync::Arc;
use std::time::Duration;

use tower::Layer;

use super::{Backoff, Retry, RetryBudget, SharedSuccessSpec, StandardSuccess, SuccessSpec};

/// Applies inline retries to an HTTP client service: see the
/// [module docs](super) for what is retried and when.
///
/// # Defaults
///
/// | setting | default |
/// |---|---|
/// | [`backoff`](Self::backoff) | [`Backoff::inline`]: 100 ms doubling to 2 s, 3 attempts |
/// | [`deadline`](Self::deadline) | 10 s for the whole call |
/// | [`attempt_timeout`](Self::attempt_timeout) | 5 s per attempt |
/// | [`body_limit`](Self::body_limit) | 2 MiB of request body |
/// | [`success`](Self::success) | [`StandardSuccess`] |
/// | [`budget`](Self::budget) | [`RetryBudget::default`] |
#[derive(Debug, Clone)]
pub struct RetryLayer {
    config: Arc<RetryConfig>,
}

#[derive(Debug, Clone)]
pub(crate) struct RetryConfig {
    pub(crate) backoff: Backoff,
    pub(crate) deadline: Duration,
    pub(crate) attempt_timeout: Duration,
    pub(crate) body_limit: usize,
    pub(crate) success: SharedSuccessSpec,
    pub(crate) budget: RetryBudget,
}

impl Default for RetryLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl RetryLayer {
    /// Creates a layer with the defaults listed on [`RetryLayer`].
    pub fn new() -> Self {
        Self {
            config: Arc::new(RetryConfig {
                backoff: Backoff::inline(),
                deadline: Duration::from_secs(10),
                attempt_timeout: Duration::from_secs(5),
                body_limit: 2 * 1024 * 1024,
                success: Arc::new(StandardSuccess),
                budget: RetryBudget::default(),
            }),
        }
    }

    /// Sets the backoff between attempts, and through it the maximum
    /// number of attempts. Default: [`Backoff::inline`].
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.config_mut().backoff = backoff;
        self
    }

    /// Sets the total time a call may take, attempts and delays included.
    /// No retry starts if its delay would end past the deadline. Default:
    /// 10 s.
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.config_mut().deadline = deadline;
        self
    }

    /// Sets the time one attempt may take until the response head arrives.
    /// Default: 5 s.
    pub fn attempt_timeout(mut self, timeout: Duration) -> Self {
        self.config_mut().attempt_timeout = timeout;
        self
    }

    /// Sets how many request body bytes are buffered so that every attempt
    /// sends the same bytes. A longer body fails the call with
    /// [`RetryErrorKind::BodyTooLarge`](super::RetryErrorKind::BodyTooLarge)
    /// and nothing is sent. Default: 2 MiB.
    pub fn body_limit(mut self, limit: usize) -> Self {
        self.config_mut().body_limit = limit;
        self
    }

    /// Sets what counts as success and how failures are classified.
    /// Default: [`StandardSuccess`].
    pub fn success(mut self, spec: impl SuccessSpec) -> Self {
        self.config_mut().success = Arc::new(spec);
        self
    }

    /// Sets the retry budget, shared by every service this layer builds.
    /// Default: [`RetryBudget::default`].
    pub fn budget(mut self, budget: RetryBudget) -> Self {
        self.config_mut().budget = budget;
        self
    }

    fn config_mut(&mut self) -> &mut RetryConfig {
        // Clones of the layer made before this setter keep their settings.
        Arc::make_mut(&mut self.config)
    }
}

impl<S> Layer<S> for RetryLayer {
    type Service = Retry<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Retry::from_config(inner, self.config.clone())
    }
}
