use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::{Mutex, watch};
use tokio::task::JoinHandle;

/// A point-in-time copy of a worker's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct WorkerMetrics {
    /// Messages completed with a successful response.
    pub delivered: u64,
    /// Attempts that failed transiently and were rescheduled.
    pub retried: u64,
    /// Messages dead-lettered: out of attempts or age, or a permanent
    /// failure on a worker configured to dead-letter those.
    pub dead_lettered: u64,
    /// Messages marked failed by a permanent failure.
    pub failed: u64,
    /// Results discarded because another worker took the message over.
    pub lease_lost: u64,
    /// Messages being processed right now.
    pub in_flight: u64,
}

/// The live counters behind [`WorkerMetrics`].
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) delivered: AtomicU64,
    pub(crate) retried: AtomicU64,
    pub(crate) dead_lettered: AtomicU64,
    pub(crate) failed: AtomicU64,
    pub(crate) lease_lost: AtomicU64,
    pub(crate) in_flight: AtomicU64,
}

impl Counters {
    pub(crate) fn add(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn snapshot(&self) -> WorkerMetrics {
        WorkerMetrics {
            delivered: self.delivered.load(Ordering::Relaxed),
            retried: self.retried.load(Ordering::Relaxed),
            dead_lettered: self.dead_lettered.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            lease_lost: self.lease_lost.load(Ordering::Relaxed),
            in_flight: self.in_flight.load(Ordering::Relaxed),
        }
    }
}

/// Signals from the handle to the running worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Phase {
    Running,
    /// Claim nothing more and let in-flight messages finish.
    Draining,
    /// Stop in-flight messages and release their leases.
    Abandoning,
}

/// A cloneable handle to a running worker, for metrics and shutdown.
///
/// Dropping every handle does not stop the worker: it runs until
/// [`shutdown`](Self::shutdown) or until its runtime stops.
#[derive(Clone)]
pub struct WorkerHandle {
    pub(crate) queue: Arc<str>,
    pub(crate) counters: Arc<Counters>,
    pub(crate) phase: Arc<watch::Sender<Phase>>,
    pub(crate) task: Arc<Mutex<Option<JoinHandle<()>>>>,
}

impl WorkerHandle {
    /// Returns the current counters.
    pub fn metrics(&self) -> WorkerMetrics {
        self.counters.snapshot()
    }

    /// Returns the queue this worker serves.
    pub fn queue(&self) -> &str {
        &self.queue
    }

    /// Stops the worker gracefully and waits until it has stopped.
    ///
    /// The worker claims nothing more and lets its in-flight messages
    /// finish within the shutdown grace period. Messages still in flight
    /// after it are stopped and their leases released, so that another
    /// worker can claim them at once. A released attempt is not counted. Calling this again, or
    /// from several clones, waits for the same stop.
    pub async fn shutdown(&self) {
        self.phase.send_if_modified(|phase| {
            let changed = *phase == Phase::Running;
            if changed {
                *phase = Phase::Draining;
            }
            changed
        });

        let task = self.task.lock().await.take();
        if let Some(task) = task
            && let Err(error) = task.await
        {
            tracing::error!(queue = %self.queue, %error, "worker task ended abnormally");
        }
    }
}

impl fmt::Debug for WorkerHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkerHandle")
            .field("queue", &self.queue)
            .field("metrics", &self.metrics())
            .finish()
    }
}
