//! Writing the result of an attempt to the store.

use std::time::Duration;

use super::PermanentFailure;
use super::attempt::Verdict;
use super::handle::Counters;
use super::run::Context;
use crate::store::{Claimed, Lease, Outcome, StoreError};

/// Records `verdict` for the claimed message: complete it, reschedule it,
/// or end it as failed or dead.
pub(crate) async fn record(context: &Context, claimed: &Claimed, verdict: Verdict) {
    let lease = &claimed.lease;
    let attempt = claimed.message.attempts;
    match verdict {
        Verdict::Success(outcome) => {
            let status = outcome.status;
            let result = write(lease, || {
                context.store.complete(lease, Some(outcome.clone()))
            })
            .await;
            if settled(context, result) {
                Counters::add(&context.counters.delivered);
                tracing::debug!(%status, "delivered");
            }
        }
        Verdict::Transient {
            error,
            retry_after,
            outcome,
        } => retry_or_give_up(context, claimed, &error, retry_after, outcome).await,
        Verdict::Permanent { error, outcome } => {
            end(context, lease, context.on_permanent, &error, outcome).await;
        }
    }
    tracing::trace!(attempt, "attempt recorded");
}

async fn retry_or_give_up(
    context: &Context,
    claimed: &Claimed,
    error: &str,
    retry_after: Option<Duration>,
    outcome: Option<Outcome>,
) {
    let message = &claimed.message;
    let now = context.clock.now();
    let age = now
        .duration_since(message.created_at)
        .unwrap_or(Duration::ZERO);

    if context.backoff.is_exhausted(message.attempts, age) {
        let reason = format!(
            "gave up after {} attempt(s) over {}s: {error}",
            message.attempts,
            age.as_secs()
        );
        end(
            context,
            &claimed.lease,
            PermanentFailure::DeadLetter,
            &reason,
            outcome,
        )
        .await;
        return;
    }

    let delay = context.backoff.delay_after(message.attempts, retry_after);
    let lease = &claimed.lease;
    let result = write(lease, || {
        context.store.reschedule(lease, now + delay, error)
    })
    .await;
    if settled(context, result) {
        Counters::add(&context.counters.retried);
        tracing::info!(
            error,
            delay_ms = delay.as_millis() as u64,
            "attempt failed, retrying later"
        );
    }
}

async fn end(
    context: &Context,
    lease: &Lease,
    how: PermanentFailure,
    error: &str,
    outcome: Option<Outcome>,
) {
    let status = outcome.as_ref().map(|outcome| outcome.status.as_u16());
    match how {
        PermanentFailure::DeadLetter => {
            let result = write(lease, || {
                context.store.dead_letter(lease, error, outcome.clone())
            })
            .await;
            if settled(context, result) {
                Counters::add(&context.counters.dead_lettered);
                tracing::warn!(error, status, "dead-lettered");
            }
        }
        PermanentFailure::Fail => {
            let result = write(lease, || context.store.fail(lease, error, outcome.clone())).await;
            if settled(context, result) {
                Counters::add(&context.counters.failed);
                tracing::info!(error, status, "failed permanently");
            }
        }
    }
}

/// Runs a store write, trying again twice when the store is unavailable.
/// A lost lease is final: another worker owns the message now.
async fn write<F, Fut>(lease: &Lease, mut attempt: F) -> Result<(), StoreError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), StoreError>>,
{
    let mut pause = Duration::from_millis(50);
    let mut tries = 1;
    loop {
        match attempt().await {
            Err(error) if !error.is_lease_lost() && tries < 3 => {
                tracing::warn!(%error, message_id = %lease.id, "store write failed, trying again");
                tokio::time::sleep(pause).await;
                pause *= 4;
                tries += 1;
            }
            result => return result,
        }
    }
}

/// Logs a failed write and returns `true` if the write was applied.
fn settled(context: &Context, result: Result<(), StoreError>) -> bool {
    match result {
        Ok(()) => true,
        Err(error) if error.is_lease_lost() => {
            Counters::add(&context.counters.lease_lost);
            tracing::warn!(%error, "result discarded: the lease was taken over");
            false
        }
        Err(error) => {
            // The message stays in flight until its lease expires, and then
            // a claim sends it again: delivered at least once, maybe twice.
            tracing::error!(%error, "failed to record the result, the message will be retried");
            false
        }
    }
}
