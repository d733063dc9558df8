use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;

use crate::clock::{self, SharedClock};
use crate::store::{ReplayStore, StoreError, StoreErrorKind};

/// A bounded, in-process [`ReplayStore`].
///
/// It keeps at most `capacity` pairs. An insert into a full store first
/// drops the pairs whose time to live has passed; if none has, the insert
/// fails with [`StoreErrorKind::Full`] rather than forget a live pair, so a
/// flood of requests can make signed requests fail (closed) but never lets
/// a replay through.
///
/// Not durable and not shared: a restart forgets every nonce, which reopens
/// the acceptance window for requests captured in the last `2 x tolerance`,
/// and replicas do not see each other's nonces. Use a shared store (Redis,
/// PostgreSQL) for several replicas.
#[derive(Debug)]
pub struct MemoryReplayStore {
    capacity: usize,
    clock: SharedClock,
    pairs: Mutex<HashMap<(String, String), SystemTime>>,
}

impl MemoryReplayStore {
    /// The default capacity: 1,000,000 pairs, about 150 MB at the longest
    /// key ids and nonces, enough for 1,600 requests a second within the
    /// default 600-second window.
    pub const DEFAULT_CAPACITY: usize = 1_000_000;

    /// Creates a store that keeps at most `capacity` pairs, reading time
    /// from the system clock.
    pub fn new(capacity: usize) -> Self {
        Self::with_clock(capacity, clock::system())
    }

    /// Creates a store that reads time from `clock`.
    pub fn with_clock(capacity: usize, clock: SharedClock) -> Self {
        Self {
            capacity,
            clock,
            pairs: Mutex::new(HashMap::new()),
        }
    }

    /// Returns how many pairs are kept, expired ones included.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Returns `true` if no pair is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), SystemTime>> {
        // Every critical section leaves the map whole, so a poisoned lock is
        // still safe to use.
        self.pairs
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Default for MemoryReplayStore {
    fn default() -> Self {
        Self::new(Self::DEFAULT_CAPACITY)
    }
}

#[async_trait]
impl ReplayStore for MemoryReplayStore {
    async fn insert(&self, kid: &str, nonce: &str, ttl: Duration) -> Result<bool, StoreError> {
        let now = self.clock.now();
        let mut pairs = self.lock();
        let key = (kid.to_owned(), nonce.to_owned());

        if pairs.get(&key).is_some_and(|expires_at| *expires_at > now) {
            return Ok(false);
        }

        if pairs.len() >= self.capacity && !pairs.contains_key(&key) {
            pairs.retain(|_, expires_at| *expires_at > now);
            if pairs.len() >= self.capacity {
                return Err(StoreError::new(
                    StoreErrorKind::Full,
                    format!(
                        "replay store is full: {} live nonces; raise its capacity",
                        pairs.len()
                    ),
                ));
            }
        }

        pairs.insert(key, now + ttl);
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::UNIX_EPOCH;

    use super::*;
    use crate::clock::ManualClock;

    fn store(capacity: usize) -> (MemoryReplayStore, ManualClock) {
        let clock = ManualClock::new(UNIX_EPOCH + Duration::from_secs(1_700_000_000));
        let store = MemoryReplayStore::with_clock(capacity, Arc::new(clock.clone()));
        (store, clock)
    }

    #[tokio::test]
    async fn second_insert_is_a_replay() {
        let (store, _) = store(10);
        let ttl = Duration::from_secs(600);

        assert!(store.insert("k1", "nonce-a", ttl).await.unwrap());
        assert!(!store.insert("k1", "nonce-a", ttl).await.unwrap());
        assert!(store.insert("k2", "nonce-a", ttl).await.unwrap());
    }

    #[tokio::test]
    async fn pair_is_forgotten_after_ttl() {
        let (store, clock) = store(10);
        let ttl = Duration::from_secs(600);
        store.insert("k1", "nonce-a", ttl).await.unwrap();

        clock.advance(Duration::from_secs(599));
        assert!(!store.insert("k1", "nonce-a", ttl).await.unwrap());

        clock.advance(Duration::from_secs(1));
        assert!(store.insert("k1", "nonce-a", ttl).await.unwrap());
    }

    #[tokio::test]
    async fn full_store_rejects_instead_of_forgetting() {
        let (store, clock) = store(2);
        let ttl = Duration::from_secs(600);
        store.insert("k", "n1", ttl).await.unwrap();
        store.insert("k", "n2", ttl).await.unwrap();

        let error = store.insert("k", "n3", ttl).await.unwrap_err();
        assert_eq!(error.kind(), StoreErrorKind::Full);
        assert!(!store.insert("k", "n1", ttl).await.unwrap());

        clock.advance(ttl);
        assert!(store.insert("k", "n3", ttl).await.unwrap());
        assert_eq!(store.len(), 1);
    }
}
