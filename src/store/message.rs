use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode};

use super::{StoreError, Subscription};
use crate::MessageId;

/// Free-form text pairs stored with a message, such as the authenticated
/// principal of a command or the caller's own correlation id.
pub type Metadata = BTreeMap<String, String>;

/// A message to enqueue: one HTTP request to deliver later.
///
/// The same type carries outbound requests of the outbox (where
/// `destination` is the receiver's base URL) and accepted commands of the
/// `202 Accepted` layer (where `destination` names the route).
#[derive(Clone, PartialEq, Eq)]
pub struct NewMessage {
    /// The message id; enqueueing an id that already exists is a no-op.
    pub id: MessageId,
    /// The queue the message belongs to, such as `outbox` or `commands`.
    pub queue: String,
    /// The destination: a base URL (`http://orders.internal:8080`) or a
    /// route name. The dispatcher limits concurrency per destination.
    pub destination: String,
    /// The request method.
    pub method: Method,
    /// The request target in origin form, such as `/orders/42?expand=lines`.
    pub path_and_query: String,
    /// The request headers, with repeated names and non-UTF-8 values kept.
    pub headers: HeaderMap,
    /// The exact body bytes.
    pub body: Bytes,
    /// Free-form text pairs stored with the message.
    pub metadata: Metadata,
    /// The earliest time a claim may return the message.
    pub available_at: SystemTime,
}

impl NewMessage {
    /// Creates a message with a fresh id, no headers, an empty body, no
    /// metadata, available at `available_at`.
    pub fn new(
        queue: impl Into<String>,
        destination: impl Into<String>,
        method: Method,
        path_and_query: impl Into<String>,
        available_at: SystemTime,
    ) -> Self {
        Self {
            id: MessageId::new(),
            queue: queue.into(),
            destination: destination.into(),
            method,
            path_and_query: path_and_query.into(),
            headers: HeaderMap::new(),
            body: Bytes::new(),
            metadata: Metadata::new(),
            available_at,
        }
    }
}

impl fmt::Debug for NewMessage {
    // Headers may carry credentials and bodies may be large, so only their
    // sizes are printed.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewMessage")
            .field("id", &self.id)
            .field("queue", &self.queue)
            .field("destination", &self.destination)
            .field("method", &self.method)
            .field("path_and_query", &self.path_and_query)
            .field("headers", &self.headers.len())
            .field("body_len", &self.body.len())
            .field("metadata", &self.metadata)
            .field("available_at", &self.available_at)
            .finish()
    }
}

/// The stage of a stored message's life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MessageState {
    /// Waiting for its `available_at`, or due and not claimed.
    Pending,
    /// Claimed by a worker whose lease has not been given back. A claim
    /// whose lease expired stays `InFlight` until another claim takes it.
    InFlight,
    /// Delivered or handled with a successful response.
    Succeeded,
    /// Ended by a permanent failure, such as a `400` from the handler.
    Failed,
    /// Dead-lettered after too many attempts, too much age, or a permanent
    /// failure on a queue that dead-letters those.
    Dead,
}

impl MessageState {
    /// All states, in the order of a message's life.
    pub const ALL: [MessageState; 5] = [
        MessageState::Pending,
        MessageState::InFlight,
        MessageState::Succeeded,
        MessageState::Failed,
        MessageState::Dead,
    ];

    /// Returns the lowercase name used in stores, logs and status bodies.
    pub fn as_str(self) -> &'static str {
        match self {
            MessageState::Pending => "pending",
            MessageState::InFlight => "in_flight",
            MessageState::Succeeded => "succeeded",
            MessageState::Failed => "failed",
            MessageState::Dead => "dead",
        }
    }

    /// Parses the name returned by [`MessageState::as_str`].
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|state| state.as_str() == name)
    }

    /// Returns `true` for states that no worker will change again.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            MessageState::Succeeded | MessageState::Failed | MessageState::Dead
        )
    }
}

impl fmt::Display for MessageState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The response that ended a message, kept for inspection.
#[derive(Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The response status.
    pub status: StatusCode,
    /// The response body, possibly cut to the store's limit by the caller.
    pub body: Bytes,
}

impl fmt::Debug for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Outcome")
            .field("status", &self.status)
            .field("body_len", &self.body.len())
            .finish()
    }
}

/// A stored message as read back from a store.
#[derive(Clone, PartialEq, Eq)]
pub struct Message {
    /// The message id.
    pub id: MessageId,
    /// The queue the message belongs to.
    pub queue: String,
    /// The destination: a base URL or a route name.
    pub destination: String,
    /// The request method.
    pub method: Method,
    /// The request target in origin form.
    pub path_and_query: String,
    /// The request headers.
    pub headers: HeaderMap,
    /// The exact body bytes.
    pub body: Bytes,
    /// Free-form text pairs stored with the message.
    pub metadata: Metadata,
    /// The stage of the message's life.
    pub state: MessageState,
    /// How many times the message was claimed for delivery, counting the
    /// claim that returned it. A released claim does not count.
    pub attempts: u32,
    /// The earliest time a claim may return the message.
    pub available_at: SystemTime,
    /// When the message was first enqueued.
    pub created_at: SystemTime,
    /// When the message last changed state.
    pub updated_at: SystemTime,
    /// The error of the last failed attempt, or the dead-letter reason.
    pub last_error: Option<String>,
    /// The response that ended the message, if it ended with one.
    pub outcome: Option<Outcome>,
}

impl fmt::Debug for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Message")
            .field("id", &self.id)
            .field("queue", &self.queue)
            .field("destination", &self.destination)
            .field("method", &self.method)
            .field("path_and_query", &self.path_and_query)
            .field("headers", &self.headers.len())
            .field("body_len", &self.body.len())
            .field("metadata", &self.metadata)
            .field("state", &self.state)
            .field("attempts", &self.attempts)
            .field("available_at", &self.available_at)
            .field("last_error", &self.last_error)
            .field("outcome", &self.outcome)
            .finish()
    }
}

/// A fencing token: proof of one particular claim.
///
/// Every claim of a message gets a larger token than the claim before it,
/// and every write after a claim names its token. A store refuses a write
/// whose token is not the message's current one, so a worker whose lease
/// expired cannot overwrite the worker that took the message over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FencingToken(pub u64);

/// A worker's right to act on one message until `expires_at`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Lease {
    /// The claimed message.
    pub id: MessageId,
    /// The token every later write must present.
    pub token: FencingToken,
    /// When the lease ends unless renewed, by the store's clock.
    pub expires_at: SystemTime,
}

/// A message returned by a claim, with the lease that covers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claimed {
    /// The message, with `state` = [`MessageState::InFlight`] and `attempts`
    /// counting this claim.
    pub message: Message,
    /// The lease that covers this claim.
    pub lease: Lease,
}

/// The number of messages of one queue in each state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueCounts {
    /// Messages waiting or due.
    pub pending: u64,
    /// Messages claimed by a worker.
    pub in_flight: u64,
    /// Messages that succeeded and were not purged yet.
    pub succeeded: u64,
    /// Messages that failed permanently.
    pub failed: u64,
    /// Dead letters.
    pub dead: u64,
}

impl QueueCounts {
    /// Returns the count for `state`.
    pub fn get(&self, state: MessageState) -> u64 {
        match state {
            MessageState::Pending => self.pending,
            MessageState::InFlight => self.in_flight,
            MessageState::Succeeded => self.succeeded,
            MessageState::Failed => self.failed,
            MessageState::Dead => self.dead,
        }
    }

    /// Returns a mutable reference to the count for `state`.
    pub fn get_mut(&mut self, state: MessageState) -> &mut u64 {
        match state {
            MessageState::Pending => &mut self.pending,
            MessageState::InFlight => &mut self.in_flight,
            MessageState::Succeeded => &mut self.succeeded,
            MessageState::Failed => &mut self.failed,
            MessageState::Dead => &mut self.dead,
        }
    }
}

/// A durable queue of HTTP requests with leases and fencing tokens.
///
/// The outbox and the `202 Accepted` layer both keep their messages here.
/// A message moves `Pending -> InFlight` when claimed, and from `InFlight`
/// to `Succeeded`, `Failed`, `Dead` or back to `Pending`.
///
/// # Contract
///
/// - Every method that takes a [`Lease`] is applied only if the lease's
///   token is the message's current token and the message is `InFlight`.
///   Otherwise it fails with [`StoreErrorKind::LeaseLost`] and changes
///   nothing. An expired lease whose message nobody claimed again still
///   matches, so a slow worker's result is kept rather than redone.
/// - A claim returns due `Pending` messages and `InFlight` messages whose
///   lease expired, oldest `available_at` first. A message is returned by at
///   most one claim per lease period. Expired leases need no sweeper.
/// - Writes are durable when the call returns, as far as the backend is
///   durable (the memory store is not).
///
/// [`StoreErrorKind::LeaseLost`]: super::StoreErrorKind::LeaseLost
#[async_trait]
pub trait MessageQueue: Send + Sync + fmt::Debug + 'static {
    /// Stores `messages` atomically: all of them or none.
    ///
    /// A message whose id already exists is skipped and the existing one is
    /// left unchanged. Returns, in order, `true` for each message stored and
    /// `false` for each skipped.
    async fn enqueue(&self, messages: Vec<NewMessage>) -> Result<Vec<bool>, StoreError>;

    /// Claims up to `limit` due messages of `queue` for `lease`.
    async fn claim(
        &self,
        queue: &str,
        limit: usize,
        lease: Duration,
    ) -> Result<Vec<Claimed>, StoreError>;

    /// Extends a lease to `extend_by` from now, and returns the new lease.
    async fn renew(&self, lease: &Lease, extend_by: Duration) -> Result<Lease, StoreError>;

    /// Marks a claimed message `Succeeded`, keeping `outcome` if given.
    async fn complete(&self, lease: &Lease, outcome: Option<Outcome>) -> Result<(), StoreError>;

    /// Returns a claimed message to `Pending`, due at `available_at`, with
    /// `error` recorded as its last error. The attempt stays counted.
    async fn reschedule(
        &self,
        lease: &Lease,
        available_at: SystemTime,
        error: &str,
    ) -> Result<(), StoreError>;

    /// Returns a claimed message to `Pending`, due now, without counting the
    /// attempt: for a worker that shuts down before it sent the message.
    async fn release(&self, lease: &Lease) -> Result<(), StoreError>;

    /// Marks a claimed message `Failed` with `error` and `outcome`.
    async fn fail(
        &self,
        lease: &Lease,
        error: &str,
        outcome: Option<Outcome>,
    ) -> Result<(), StoreError>;

    /// Marks a claimed message `Dead` with `error` and `outcome`.
    async fn dead_letter(
        &self,
        lease: &Lease,
        error: &str,
        outcome: Option<Outcome>,
    ) -> Result<(), StoreError>;

    /// Returns the message with `id`, in any state.
    async fn get(&self, id: MessageId) -> Result<Option<Message>, StoreError>;

    /// Counts the messages of `queue` in each state.
    async fn counts(&self, queue: &str) -> Result<QueueCounts, StoreError>;

    /// Lists up to `limit` messages of `queue` in `state`, in id order,
    /// starting after `after` when given (for paging).
    async fn list(
        &self,
        queue: &str,
        state: MessageState,
        limit: usize,
        after: Option<MessageId>,
    ) -> Result<Vec<Message>, StoreError>;

    /// Moves a `Dead` or `Failed` message back to `Pending`, due now, with
    /// its attempt count reset to zero. Returns `false` if no such message
    /// is dead or failed.
    async fn retry(&self, id: MessageId) -> Result<bool, StoreError>;

    /// Deletes the messages of `queue` in `state` that last changed before
    /// `older_than`, and returns how many were deleted. `InFlight` messages
    /// are never purged.
    async fn purge(
        &self,
        queue: &str,
        state: MessageState,
        older_than: SystemTime,
    ) -> Result<u64, StoreError>;

    /// Returns a subscription that wakes when messages may have become due
    /// in `queue`, such as after an enqueue or a retry.
    ///
    /// Wake-ups are hints: a worker still claims to find out, and still
    /// polls now and then, because a wake-up can be missed (another process
    /// on a backend without notifications, a lost connection).
    fn subscribe(&self, queue: &str) -> Subscription;
}
