use std::collections::hash_map::Entry;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;

use super::digest::{Digest64Map, Digester};
use crate::clock::{self, Rounding, SharedClock, unix_millis};
use crate::store::{ReplayStore, StoreError, StoreErrorKind};

/// A bounded, in-process [`ReplayStore`].
///
/// It keeps at most `capacity` pairs. An insert into a full store first
/// drops the pairs whose time to live has passed; if none has, the insert
/// fails with [`StoreErrorKind::Full`] rather than forget a live pair, so a
/// flood of requests can make signed requests fail (closed) but never lets
/// a replay through.
///
/// Each pair is kept as a 64-bit keyed digest and a signed expiry in
/// milliseconds, 16 bytes whatever the lengths of its key id and nonce. Two
/// pairs can share a digest: with `n` pairs kept, a fresh nonce is taken
/// for a replay with a probability of about `n / 2^64`, below 10^-13 at
/// the default capacity. The sender then gets `401` and signs its retry
/// afresh, so nothing is lost. A real replay is never let through.
///
/// Not durable and not shared: a restart forgets every nonce, which reopens
/// the acceptance window for requests captured in the last `2 x tolerance`,
/// and replicas do not see each other's nonces. Use a shared store (Redis,
/// PostgreSQL) for several replicas.
#[derive(Debug)]
pub struct MemoryReplayStore {
    capacity: usize,
    clock: SharedClock,
    digester: Digester,
    /// Expiry, in milliseconds since the Unix epoch (negative before it),
    /// by digest of the pair.
    pairs: Mutex<Digest64Map<i64>>,
}

impl MemoryReplayStore {
    /// The default capacity: 1,000,000 pairs, an estimated 35 MB when full
    /// (2^21 buckets of 16 bytes and their control bytes),
    /// enough for 1,600 requests a second within the default 600-second
    /// window.
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
            digester: Digester::default(),
            pairs: Mutex::new(Digest64Map::default()),
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

    /// Records the pair as [`ReplayStore::insert`] does, at `now` instead
    /// of this store's clock.
    ///
    /// The verifying layer calls this directly with the time it checked
    /// `ts` against, which saves a clock read and the boxed future of the
    /// trait call on every request.
    pub(crate) fn insert_at(
        &self,
        kid: &str,
        nonce: &str,
        ttl: Duration,
        now: SystemTime,
    ) -> Result<bool, StoreError> {
        let pair = self.digester.digest64(&(kid, nonce));
        // The expiry is rounded up and the current time down, so a pair is
        // kept at least `ttl` and at most a millisecond longer.
        let expires_at = now
            .checked_add(ttl)
            .map_or(i64::MAX, |expiry| unix_millis(expiry, Rounding::Up));
        let now = unix_millis(now, Rounding::Down);
        let mut pairs = self.lock();
        let full = pairs.len() >= self.capacity;

        match pairs.entry(pair) {
            Entry::Occupied(mut kept) => {
                if *kept.get() > now {
                    return Ok(false);
                }
                kept.insert(expires_at);
                return Ok(true);
            }
            Entry::Vacant(slot) if !full => {
                slot.insert(expires_at);
                return Ok(true);
            }
            Entry::Vacant(_) => {}
        }

        pairs.retain(|_, expiry| *expiry > now);
        if pairs.len() >= self.capacity {
            return Err(StoreError::new(
                StoreErrorKind::Full,
                format!(
                    "replay store is full: {} live nonces; raise its capacity",
                    pairs.len()
                ),
            ));
        }
        pairs.insert(pair, expires_at);
        Ok(true)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Digest64Map<i64>> {
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
        self.insert_at(kid, nonce, ttl, self.clock.now())
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

    #[tokio::test]
    async fn replay_before_1970_is_rejected() {
        let clock = ManualClock::new(UNIX_EPOCH - Duration::from_secs(3_600));
        let store = MemoryReplayStore::with_clock(10, Arc::new(clock.clone()));
        let ttl = Duration::from_secs(600);

        assert!(store.insert("k1", "nonce-a", ttl).await.unwrap());
        assert!(!store.insert("k1", "nonce-a", ttl).await.unwrap());

        clock.advance(Duration::from_secs(599));
        assert!(!store.insert("k1", "nonce-a", ttl).await.unwrap());

        clock.advance(Duration::from_secs(1));
        assert!(store.insert("k1", "nonce-a", ttl).await.unwrap());
    }

    #[tokio::test]
    async fn pair_across_1970_lives_its_ttl() {
        let clock = ManualClock::new(UNIX_EPOCH - Duration::from_millis(1_500));
        let store = MemoryReplayStore::with_clock(10, Arc::new(clock.clone()));
        let ttl = Duration::from_secs(2);

        assert!(store.insert("k1", "nonce-a", ttl).await.unwrap());
        clock.advance(Duration::from_millis(1_999));
        assert!(!store.insert("k1", "nonce-a", ttl).await.unwrap());

        clock.advance(Duration::from_millis(1));
        assert!(store.insert("k1", "nonce-a", ttl).await.unwrap());
    }

    #[tokio::test]
    async fn zero_and_huge_ttls() {
        let (store, clock) = store(10);

        assert!(store.insert("k1", "zero", Duration::ZERO).await.unwrap());
        clock.advance(Duration::from_millis(1));
        assert!(store.insert("k1", "zero", Duration::ZERO).await.unwrap());

        assert!(store.insert("k1", "huge", Duration::MAX).await.unwrap());
        clock.advance(Duration::from_secs(100 * 365 * 86_400));
        assert!(!store.insert("k1", "huge", Duration::MAX).await.unwrap());
    }
}
