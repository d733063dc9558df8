use std::fmt;
use std::time::Duration;

use async_trait::async_trait;

use super::StoreError;

/// Remembers the (key id, nonce) pairs of accepted signed requests, so
/// that a captured request cannot be sent again.
///
/// With several replicas of a service, they must share one replay store;
/// otherwise a request replayed to another replica is accepted there.
#[async_trait]
pub trait ReplayStore: Send + Sync + fmt::Debug + 'static {
    /// Records the pair for at least `ttl` unless it is already recorded.
    ///
    /// Returns `true` if the pair is new (the request may proceed) and
    /// `false` if it was seen before. Concurrent inserts of one pair return
    /// `true` to exactly one caller.
    async fn insert(&self, kid: &str, nonce: &str, ttl: Duration) -> Result<bool, StoreError>;
}
