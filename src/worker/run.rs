//! The claim loop and the task that processes each claimed message.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinSet;
use tracing::Instrument;

use super::attempt::{self, AttemptService, Verdict};
use super::handle::{Counters, Phase};
use super::lease::keep_alive;
use super::record::record;
use super::{MakeRequest, PermanentFailure};
use crate::clock::SharedClock;
use crate::retry::{Backoff, SharedSuccessSpec};
use crate::store::{Claimed, MessageQueue};

/// The settings and counters that every task of one worker shares.
pub(crate) struct Context {
    pub(crate) queue: Arc<str>,
    pub(crate) store: Arc<dyn MessageQueue>,
    pub(crate) make_request: MakeRequest,
    pub(crate) success: SharedSuccessSpec,
    pub(crate) backoff: Backoff,
    pub(crate) on_permanent: PermanentFailure,
    pub(crate) lease: Duration,
    pub(crate) attempt_timeout: Duration,
    pub(crate) clock: SharedClock,
    pub(crate) counters: Arc<Counters>,
}

/// The settings of the claim loop itself.
pub(crate) struct LoopSettings {
    pub(crate) batch_size: usize,
    pub(crate) concurrency: usize,
    pub(crate) per_destination: Option<usize>,
    pub(crate) poll_interval: Duration,
    pub(crate) shutdown_grace: Duration,
}

/// Claims due messages and processes each in its own task until the phase
/// leaves `Running`, then drains.
pub(crate) async fn claim_loop(
    context: Arc<Context>,
    service: AttemptService,
    settings: LoopSettings,
    phases: Arc<watch::Sender<Phase>>,
) {
    let mut phase = phases.subscribe();
    let slots = Arc::new(Semaphore::new(settings.concurrency));
    let mut destinations: HashMap<String, Arc<Semaphore>> = HashMap::new();
    let mut tasks = JoinSet::new();
    let mut wake = context.store.subscribe(&context.queue);
    tracing::info!(queue = %context.queue, "worker started");

    while *phase.borrow() == Phase::Running {
        while tasks.try_join_next().is_some() {}

        // Under load, claiming as soon as one slot frees would make one
        // store write per message, so the loop waits for a quarter batch.
        let refill = (settings.batch_size.min(settings.concurrency) / 4).max(1);
        let free = slots.available_permits().min(settings.batch_size);
        if free < refill {
            tokio::select! {
                _ = slots.acquire_many(u32::try_from(refill).unwrap_or(u32::MAX)) => {}
                _ = phase.changed() => {}
            }
            continue;
        }

        let claimed = match context
            .store
            .claim(&context.queue, free, context.lease)
            .await
        {
            Ok(claimed) => claimed,
            Err(error) => {
                tracing::warn!(queue = %context.queue, %error, "failed to claim messages");
                Vec::new()
            }
        };
        let full_batch = claimed.len() == free;

        for message in claimed {
            // Only this loop takes slots, and it saw `free` of them, so
            // every claimed message has one.
            let slot = slots
                .clone()
                .try_acquire_owned()
                .expect("a free slot per claimed message");
            let limit =
                destination_limit(&mut destinations, &settings, &message.message.destination);
            let task = process(
                context.clone(),
                service.clone(),
                message,
                slot,
                limit,
                phase.clone(),
            );
            tasks.spawn(task);
        }

        if !full_batch {
            tokio::select! {
                _ = wake.wait(settings.poll_interval) => {}
                _ = phase.changed() => {}
            }
        }
    }

    drain(&context, tasks, settings.shutdown_grace, &phases).await;
}

fn destination_limit(
    destinations: &mut HashMap<String, Arc<Semaphore>>,
    settings: &LoopSettings,
    destination: &str,
) -> Option<Arc<Semaphore>> {
    let limit = settings.per_destination?;
    let semaphore = destinations
        .entry(destination.to_owned())
        .or_insert_with(|| Arc::new(Semaphore::new(limit)));
    Some(semaphore.clone())
}

/// Waits for in-flight messages within `grace`, then signals the rest to
/// release their leases and waits for them to do so.
async fn drain(
    context: &Context,
    mut tasks: JoinSet<()>,
    grace: Duration,
    phases: &watch::Sender<Phase>,
) {
    tracing::info!(queue = %context.queue, in_flight = tasks.len(), "worker draining");
    let finished =
        tokio::time::timeout(grace, async { while tasks.join_next().await.is_some() {} }).await;

    if finished.is_err() {
        tracing::warn!(
            queue = %context.queue,
            in_flight = tasks.len(),
            "shutdown grace period over, releasing in-flight messages"
        );
        phases.send_replace(Phase::Abandoning);
        while tasks.join_next().await.is_some() {}
    }
    tracing::info!(queue = %context.queue, "worker stopped");
}

/// Processes one claimed message: waits for a destination slot, sends one
/// attempt and records its result, renewing the lease meanwhile.
async fn process(
    context: Arc<Context>,
    service: AttemptService,
    claimed: Claimed,
    _slot: OwnedSemaphorePermit,
    destination_limit: Option<Arc<Semaphore>>,
    mut phase: watch::Receiver<Phase>,
) {
    let message = &claimed.message;
    let span = tracing::info_span!(
        "courier.attempt",
        queue = %context.queue,
        message_id = %message.id,
        destination = %message.destination,
        attempt = message.attempts,
    );
    context.counters.in_flight.fetch_add(1, Ordering::Relaxed);
    log_takeover(&claimed);

    let work = async {
        let _permit = match destination_limit {
            Some(limit) => limit.acquire_owned().await.ok(),
            None => None,
        };
        let verdict = send(&context, service, &claimed).await;
        record(&context, &claimed, verdict).await;
    };
    let renewal = keep_alive(context.store.clone(), claimed.lease, context.lease);
    let abandoned = async move {
        // A closed channel means the handle and loop are gone: keep working.
        if phase
            .wait_for(|phase| *phase == Phase::Abandoning)
            .await
            .is_err()
        {
            std::future::pending::<()>().await;
        }
    };

    async {
        tokio::select! {
            () = work => {}
            () = renewal => Counters::add(&context.counters.lease_lost),
            () = abandoned => release(&context, &claimed).await,
        }
    }
    .instrument(span)
    .await;
    context.counters.in_flight.fetch_sub(1, Ordering::Relaxed);
}

/// Logs a claim that takes over a message whose earlier claim ended
/// without recording a result, which only a lease expiry allows.
fn log_takeover(claimed: &Claimed) {
    let message = &claimed.message;
    // NOTE: a takeover after an earlier attempt recorded its error is not
    // recognised, because the store keeps no trace of which claim wrote
    // `last_error`. The worker that lost the lease logs its side.
    if message.attempts > 1 && message.last_error.is_none() {
        tracing::info!(
            message_id = %message.id,
            destination = %message.destination,
            attempt = message.attempts,
            "taking over a message whose earlier lease expired without a result"
        );
    }
}

async fn send(context: &Context, service: AttemptService, claimed: &Claimed) -> Verdict {
    let mut request = match (context.make_request)(&claimed.message) {
        Ok(request) => request,
        Err(error) => {
            return Verdict::Permanent {
                error: format!(
                    "invalid stored request: {}",
                    crate::retry::error_chain(error.as_ref())
                ),
                outcome: None,
            };
        }
    };

    // Layers below can read which claim the request belongs to, for logs
    // or to record the attempt with its message id.
    request.extensions_mut().insert(claimed.lease);
    tracing::debug!("sending attempt");
    let clock = context.clock.clone();
    attempt::send(
        service,
        request,
        context.attempt_timeout,
        context.success.as_ref(),
        move || clock.now(),
    )
    .await
}

async fn release(context: &Context, claimed: &Claimed) {
    match context.store.release(&claimed.lease).await {
        Ok(()) => tracing::info!("released in-flight message at shutdown"),
        Err(error) => {
            tracing::warn!(%error, "failed to release message at shutdown; it is claimable when its lease expires")
        }
    }
}
