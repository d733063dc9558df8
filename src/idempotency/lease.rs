//! Renewal of an idempotency claim while its handler runs.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::future::BoxFuture;
use pin_project_lite::pin_project;

use crate::store::{FencingToken, IdempotencyKey, IdempotencyStore};

/// Runs `work` while renewing the claim of `key` every `lease / 3`.
///
/// Renewing at a third of the lease leaves two more chances before the
/// lease ends if one renewal fails. Renewal runs in the same task as
/// `work` and stops when `work` finishes or the claim is lost.
pub(crate) fn keep_renewed<'a, F: Future>(
    store: &'a dyn IdempotencyStore,
    key: &'a IdempotencyKey,
    token: FencingToken,
    lease: Duration,
    work: F,
) -> KeepRenewed<'a, F> {
    KeepRenewed {
        work,
        claim: Claim {
            store,
            key,
            token,
            lease,
        },
        renewal: Renewal::NotStarted,
    }
}

/// The claim that [`keep_renewed`] renews.
struct Claim<'a> {
    store: &'a dyn IdempotencyStore,
    key: &'a IdempotencyKey,
    token: FencingToken,
    lease: Duration,
}

enum Renewal<'a> {
    /// `work` has not waited yet. Most handlers finish without waiting, so
    /// the renewal loop is only built, and allocated, for one that does.
    NotStarted,
    Running(BoxFuture<'a, ()>),
    /// The claim was lost, or cannot be renewed outside a Tokio runtime.
    /// `work` goes on without renewals.
    Lost,
}

pin_project! {
    /// The future of [`keep_renewed`].
    pub(crate) struct KeepRenewed<'a, F> {
        #[pin]
        work: F,
        claim: Claim<'a>,
        renewal: Renewal<'a>,
    }
}

impl<F: Future> Future for KeepRenewed<'_, F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        if let Poll::Ready(output) = this.work.poll(cx) {
            return Poll::Ready(output);
        }

        if let Renewal::NotStarted = this.renewal {
            *this.renewal = start_renewal(this.claim);
        }
        if let Renewal::Running(renewal) = this.renewal
            && renewal.as_mut().poll(cx).is_ready()
        {
            *this.renewal = Renewal::Lost;
        }
        Poll::Pending
    }
}

/// Starts the renewal loop, which needs Tokio's timer. Outside a Tokio
/// runtime the claim is left to its lease instead of panicking the
/// request.
fn start_renewal<'a>(claim: &Claim<'a>) -> Renewal<'a> {
    if tokio::runtime::Handle::try_current().is_err() {
        tracing::warn!(
            key = %claim.key.key,
            "idempotent handler waits outside a tokio runtime; its claim is not renewed"
        );
        return Renewal::Lost;
    }
    let renewal = renew_until_lost(claim.store, claim.key, claim.token, claim.lease);
    Renewal::Running(Box::pin(renewal))
}

async fn renew_until_lost<'a>(
    store: &'a dyn IdempotencyStore,
    key: &'a IdempotencyKey,
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
