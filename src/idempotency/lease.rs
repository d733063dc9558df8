//! Renewal of an idempotency claim while its handler runs.

use std::future::Future;
use std::time::Duration;

use crate::store::{FencingToken, IdempotencyKey, IdempotencyStore};

/// Runs `work` while renewing the claim of `key` every `lease / 3`.
///
/// Renewing at a third of the lease leaves two more chances before the
/// lease ends if one renewal fails. Renewal runs in the same task as
/// `work` and stops when `work` finishes or the claim is lost.
pub(crate) async fn keep_renewed<F: Future>(
    store: &dyn IdempotencyStore,
    key: &IdempotencyKey,
    token: FencingToken,
    lease: Duration,
    work: F,
) -> F::Output {
    let renewal = renew_until_lost(store, key, token, lease);
    tokio::pin!(work, renewal);

    tokio::select! {
        biased;
        output = &mut work => output,
        () = &mut renewal => work.await,
    }
}

async fn renew_until_lost(
    store: &dyn IdempotencyStore,
    key: &IdempotencyKey,
    token: FencingToken,
    lease: Duration,
) {
    let period = (lease / 3).max(Duration::from_millis(1));
    loop {
        tokio::time::sleep(period).await;

        match store.renew(key, token, lease).await {
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
