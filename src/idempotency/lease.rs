//! Renewal of an idempotency claim while its handler runs.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;

use crate::store::{FencingToken, IdempotencyKey, IdempotencyStore};

/// Renews a claim every `lease / 3` until dropped.
///
/// Renewing at a third of the lease leaves two more chances before the
/// lease ends if one renewal fails.
#[derive(Debug)]
pub(crate) struct LeaseKeeper {
    task: JoinHandle<()>,
}

impl LeaseKeeper {
    /// Starts renewing the claim of `key` held with `token`.
    pub(crate) fn start(
        store: Arc<dyn IdempotencyStore>,
        key: IdempotencyKey,
        token: FencingToken,
        lease: Duration,
    ) -> Self {
        let task = tokio::spawn(renew_until_lost(store, key, token, lease));
        Self { task }
    }
}

impl Drop for LeaseKeeper {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn renew_until_lost(
    store: Arc<dyn IdempotencyStore>,
    key: IdempotencyKey,
    token: FencingToken,
    lease: Duration,
) {
    let period = (lease / 3).max(Duration::from_millis(1));
    loop {
        tokio::time::sleep(period).await;

        match store.renew(&key, token, lease).await {
            Ok(()) => tracing::trace!(key = %key.key, "renewed idempotency claim"),
            Err(error) if error.is_lease_lost() => {
                tracing::warn!(
                    key = %key.key,
                    path = %key.path,
                    "idempotency claim was taken over while its handler runs; \
                     its response will not be stored"
                );
                return;
            }
            Err(error) => tracing::warn!(
                key = %key.key,
                error = %error,
                "failed to renew idempotency claim; retrying at the next period"
            ),
        }
    }
}
