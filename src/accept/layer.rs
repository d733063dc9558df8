use std::sync::Arc;

use http::Method;
use tower::Layer;

use super::route::CommandRoute;
use super::{Accept, CommandStatus};
use crate::clock::{self, SharedClock};
use crate::store::MessageQueue;

/// The default queue of accepted commands: `commands`.
pub const DEFAULT_QUEUE: &str = "commands";

/// The default path prefix of status resources: `/commands/status`.
pub const DEFAULT_STATUS_PREFIX: &str = "/commands/status";

/// The default request body limit: 2 MiB, the same as axum's.
pub const DEFAULT_REQUEST_BODY_LIMIT: usize = 2 * 1024 * 1024;

/// Responds to command requests with `202 Accepted` after storing them in a
/// queue for background workers.
///
/// See the [module docs](super) for the flow and the wire contract.
#[derive(Debug, Clone)]
pub struct AcceptLayer {
    pub(crate) config: Arc<Config>,
}

#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) queue: Arc<dyn MessageQueue>,
    pub(crate) queue_name: String,
    pub(crate) routes: Vec<CommandRoute>,
    pub(crate) status_prefix: String,
    pub(crate) request_body_limit: usize,
    pub(crate) clock: SharedClock,
}

impl AcceptLayer {
    /// Creates a layer with no command routes that stores commands in
    /// `queue`. Add routes with [`command`](Self::command).
    pub fn new(queue: Arc<dyn MessageQueue>) -> Self {
        let config = Config {
            queue,
            queue_name: DEFAULT_QUEUE.to_owned(),
            routes: Vec::new(),
            status_prefix: DEFAULT_STATUS_PREFIX.to_owned(),
            request_body_limit: DEFAULT_REQUEST_BODY_LIMIT,
            clock: clock::system(),
        };
        Self {
            config: Arc::new(config),
        }
    }

    /// Marks requests with `method` whose path matches `pattern` as
    /// commands. A pattern is an absolute path whose segments are literals
    /// or `{name}` parameters, each matching one non-empty segment, such as
    /// `/orders/{id}/cancel`. The query is not matched.
    ///
    /// # Panics
    ///
    /// Panics if `pattern` does not start with `/`, or if `{` or `}`
    /// appear other than around a whole segment.
    pub fn command(mut self, method: Method, pattern: &str) -> Self {
        let route = CommandRoute::new(method, pattern);
        Arc::make_mut(&mut self.config).routes.push(route);
        self
    }

    /// Sets the queue that commands are stored in. Defaults to
    /// [`DEFAULT_QUEUE`] (`commands`).
    pub fn queue_name(mut self, name: impl Into<String>) -> Self {
        Arc::make_mut(&mut self.config).queue_name = name.into();
        self
    }

    /// Sets the path prefix of the status resources that `Location` points
    /// to, without a trailing `/`. Defaults to [`DEFAULT_STATUS_PREFIX`]
    /// (`/commands/status`), so a command's `Location` is
    /// `/commands/status/<id>`. Mount [`status_service`](Self::status_service)
    /// at `<prefix>/{id}`.
    ///
    /// # Panics
    ///
    /// Panics if `prefix` does not start with `/` or contains characters
    /// that a header value cannot carry.
    pub fn status_prefix(mut self, prefix: impl Into<String>) -> Self {
        let prefix = prefix.into().trim_end_matches('/').to_owned();
        let valid = prefix.is_empty() || prefix.starts_with('/');
        assert!(
            valid && http::HeaderValue::try_from(prefix.as_str()).is_ok(),
            "invalid status prefix {prefix:?}: expected an absolute path such as /commands/status"
        );
        Arc::make_mut(&mut self.config).status_prefix = prefix;
        self
    }

    /// Sets the largest command body accepted, in bytes; a longer one gets
    /// `413 Content Too Large`. Defaults to
    /// [`DEFAULT_REQUEST_BODY_LIMIT`] (2 MiB).
    pub fn request_body_limit(mut self, limit: usize) -> Self {
        Arc::make_mut(&mut self.config).request_body_limit = limit;
        self
    }

    /// Sets the clock that stamps commands as available. Defaults to the
    /// system clock.
    pub fn clock(mut self, clock: SharedClock) -> Self {
        Arc::make_mut(&mut self.config).clock = clock;
        self
    }

    /// Returns the status resource for this layer's queue.
    pub fn status_service(&self) -> CommandStatus {
        CommandStatus::new(self.config.queue.clone(), self.config.queue_name.clone())
    }
}

impl<S> Layer<S> for AcceptLayer {
    type Service = Accept<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Accept::from_config(inner, self.config.clone())
    }
}
