//! In-process stores for tests and demos.
//!
//! **Not durable**: everything is lost when the process exits, and nothing
//! is shared between processes. Use the SQLite store for a single process
//! that must not lose messages, and PostgreSQL or Redis for several.
//!
//! ```
//! use std::time::{Duration, SystemTime};
//!
//! use http::Method;
//! use tower_courier::store::memory::MemoryStore;
//! use tower_courier::store::{MessageQueue, NewMessage};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tower_courier::store::StoreError> {
//! let store = MemoryStore::new().max_messages(1_000);
//! let message = NewMessage::new("outbox", "http://127.0.0.1:8080", Method::POST, "/orders", SystemTime::now());
//! assert_eq!(store.enqueue(vec![message]).await?, [true]);
//!
//! // `MemoryStore` implements several store traits with methods of the
//! // same name, so calls name the trait.
//! let claimed = MessageQueue::claim(&store, "outbox", 10, Duration::from_secs(30)).await?;
//! assert_eq!(claimed.len(), 1);
//! MessageQueue::complete(&store, &claimed[0].lease, None).await?;
//! # Ok(())
//! # }
//! ```

mod digest;
mod idempotency;
mod queue;
mod replay;

use std::fmt;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;

pub use replay::MemoryReplayStore;

use self::idempotency::Records;
use self::queue::Messages;
use crate::clock::{self, SharedClock};
use crate::store::{Notifier, ReplayStore, StoreError};

/// A bounded, in-process store implementing [`MessageQueue`],
/// [`IdempotencyStore`] and [`ReplayStore`].
///
/// Every operation takes one mutex, so the store is exact (claims are
/// exclusive, idempotency claims atomic) but not built for heavy load.
/// It keeps at most [`max_messages`](Self::max_messages) messages and
/// [`max_idempotency_records`](Self::max_idempotency_records) records; a
/// write that would exceed a bound fails with [`StoreErrorKind::Full`] and
/// keeps nothing. Finished messages count until purged.
///
/// **Not durable and not shared**: a restart loses every message, record
/// and nonce, and two processes each see their own store.
///
/// [`MessageQueue`]: crate::store::MessageQueue
/// [`IdempotencyStore`]: crate::store::IdempotencyStore
/// [`StoreErrorKind::Full`]: crate::store::StoreErrorKind::Full
pub struct MemoryStore {
    clock: SharedClock,
    max_messages: usize,
    max_records: usize,
    messages: Mutex<Messages>,
    records: Mutex<Records>,
    replay: MemoryReplayStore,
    notifier: Notifier,
}

impl MemoryStore {
    /// The default bound on stored messages: 100,000.
    pub const DEFAULT_MAX_MESSAGES: usize = 100_000;

    /// The default bound on idempotency records: 100,000.
    pub const DEFAULT_MAX_IDEMPOTENCY_RECORDS: usize = 100_000;

    /// Creates an empty store that reads the system clock, with the default
    /// bounds.
    pub fn new() -> Self {
        Self::with_clock(clock::system())
    }

    /// Creates an empty store that reads time from `clock`, with the
    /// default bounds.
    pub fn with_clock(clock: SharedClock) -> Self {
        Self {
            replay: MemoryReplayStore::with_clock(
                MemoryReplayStore::DEFAULT_CAPACITY,
                clock.clone(),
            ),
            clock,
            max_messages: Self::DEFAULT_MAX_MESSAGES,
            max_records: Self::DEFAULT_MAX_IDEMPOTENCY_RECORDS,
            messages: Mutex::new(Messages::default()),
            records: Mutex::new(Records::default()),
            notifier: Notifier::new(),
        }
    }

    /// Sets how many messages the store keeps, in any state.
    ///
    /// Default: [`DEFAULT_MAX_MESSAGES`](Self::DEFAULT_MAX_MESSAGES).
    pub fn max_messages(mut self, max: usize) -> Self {
        self.max_messages = max;
        self
    }

    /// Sets how many idempotency records the store keeps. A claim into a
    /// full store first drops expired records.
    ///
    /// Default:
    /// [`DEFAULT_MAX_IDEMPOTENCY_RECORDS`](Self::DEFAULT_MAX_IDEMPOTENCY_RECORDS).
    pub fn max_idempotency_records(mut self, max: usize) -> Self {
        self.max_records = max;
        self
    }

    /// Sets how many replay-guard nonces the store keeps.
    ///
    /// Default: [`MemoryReplayStore::DEFAULT_CAPACITY`].
    pub fn max_replay_nonces(mut self, max: usize) -> Self {
        self.replay = MemoryReplayStore::with_clock(max, self.clock.clone());
        self
    }

    fn messages(&self) -> MutexGuard<'_, Messages> {
        // Every critical section checks before it writes, so a panic cannot
        // leave the state half-changed and a poisoned lock is still usable.
        self.messages
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn records(&self) -> MutexGuard<'_, Records> {
        // See `messages` for why a poisoned lock is usable.
        self.records
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryStore")
            .field("max_messages", &self.max_messages)
            .field("max_idempotency_records", &self.max_records)
            .field("messages", &self.messages().len())
            .field("idempotency_records", &self.records().len())
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl ReplayStore for MemoryStore {
    async fn insert(&self, kid: &str, nonce: &str, ttl: Duration) -> Result<bool, StoreError> {
        self.replay.insert(kid, nonce, ttl).await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::{SystemTime, UNIX_EPOCH};

    use http::Method;

    use super::*;
    use crate::clock::{Clock, ManualClock};
    use crate::store::{
        ClaimOutcome, Fingerprint, IdempotencyKey, IdempotencyStore, MessageQueue, NewMessage,
        StoreErrorKind,
    };

    fn store() -> (MemoryStore, ManualClock) {
        let clock = ManualClock::new(UNIX_EPOCH + Duration::from_secs(1_700_000_000));
        (MemoryStore::with_clock(Arc::new(clock.clone())), clock)
    }

    fn message(at: SystemTime) -> NewMessage {
        NewMessage::new("outbox", "http://127.0.0.1:9", Method::POST, "/", at)
    }

    fn key(name: &str) -> IdempotencyKey {
        IdempotencyKey {
            principal: None,
            method: "POST".to_owned(),
            path: "/".to_owned(),
            key: name.to_owned(),
        }
    }

    #[tokio::test]
    async fn full_queue_keeps_nothing_of_a_batch() {
        let (store, clock) = store();
        let store = store.max_messages(2);
        store.enqueue(vec![message(clock.now())]).await.unwrap();

        let batch = vec![message(clock.now()), message(clock.now())];
        let error = store.enqueue(batch).await.unwrap_err();

        assert_eq!(error.kind(), StoreErrorKind::Full);
        assert_eq!(store.counts("outbox").await.unwrap().pending, 1);
    }

    #[tokio::test]
    async fn lease_expires_by_the_injected_clock() {
        let (store, clock) = store();
        store.enqueue(vec![message(clock.now())]).await.unwrap();
        let lease = Duration::from_secs(30);
        MessageQueue::claim(&store, "outbox", 1, lease)
            .await
            .unwrap();

        clock.advance(Duration::from_secs(29));
        assert!(
            MessageQueue::claim(&store, "outbox", 1, lease)
                .await
                .unwrap()
                .is_empty()
        );

        clock.advance(Duration::from_secs(1));
        assert_eq!(
            MessageQueue::claim(&store, "outbox", 1, lease)
                .await
                .unwrap()
                .len(),
            1
        );
    }

    #[tokio::test]
    async fn full_records_drop_expired_first() {
        let (store, clock) = store();
        let store = store.max_idempotency_records(1);
        let lease = Duration::from_secs(30);
        let fingerprint = Fingerprint([1; 32]);
        IdempotencyStore::claim(&store, &key("a"), fingerprint, lease)
            .await
            .unwrap();

        let error = IdempotencyStore::claim(&store, &key("b"), fingerprint, lease)
            .await
            .unwrap_err();
        assert_eq!(error.kind(), StoreErrorKind::Full);

        clock.advance(lease);
        let outcome = IdempotencyStore::claim(&store, &key("b"), fingerprint, lease)
            .await
            .unwrap();
        assert!(matches!(outcome, ClaimOutcome::Claimed(_)));
    }
}
