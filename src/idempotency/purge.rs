use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;

use crate::store::IdempotencyStore;

/// Spawns a task that deletes expired claims and records past their
/// retention every `every`, until the returned handle is aborted.
///
/// Expired records are never replayed whether or not they are purged;
/// purging only frees their space. A failed purge is logged and tried
/// again at the next period.
pub fn spawn_purge_task(store: Arc<dyn IdempotencyStore>, every: Duration) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut interval = tokio::time::interval(every.max(Duration::from_millis(1)));
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            interval.tick().await;
            match store.purge_expired().await {
                Ok(0) => {}
                Ok(purged) => tracing::debug!(purged, "purged expired idempotency records"),
                Err(error) => {
                    tracing::warn!(error = %error, "failed to purge expired idempotency records")
                }
            }
        }
    })
}
