//! Lease renewal while a message is in flight.

use std::sync::Arc;
use std::time::Duration;

use crate::store::{Lease, MessageQueue};

/// Renews `lease` every third of `duration` until the store reports it
/// lost, and then returns.
///
/// A failure other than a lost lease (the store briefly unavailable) is
/// logged and retried at the next tick: the lease only runs out if the
/// store stays unreachable for two thirds of its duration.
pub(crate) async fn keep_alive(store: Arc<dyn MessageQueue>, lease: Lease, duration: Duration) {
    let period = (duration / 3).max(Duration::from_millis(10));
    loop {
        tokio::time::sleep(period).await;
        match store.renew(&lease, duration).await {
            Ok(_) => tracing::trace!("lease renewed"),
            Err(error) if error.is_lease_lost() => {
                tracing::warn!(%error, "lease taken over by another worker");
                return;
            }
            Err(error) => tracing::warn!(%error, "failed to renew lease, will try again"),
        }
    }
}
