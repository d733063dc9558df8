use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

/// A wake-up signal for one queue, returned by
/// [`MessageQueue::subscribe`](super::MessageQueue::subscribe).
#[derive(Debug, Clone)]
pub struct Subscription {
    receiver: watch::Receiver<u64>,
}

impl Subscription {
    /// Waits until the queue was signalled since the last wait returned, or
    /// until `timeout` passes. Returns `true` if it was signalled.
    pub async fn wait(&mut self, timeout: Duration) -> bool {
        match tokio::time::timeout(timeout, self.receiver.changed()).await {
            Ok(Ok(())) => true,
            // The sender is gone: behave as a plain poll timer.
            Ok(Err(_)) => {
                tokio::time::sleep(timeout).await;
                false
            }
            Err(_) => false,
        }
    }
}

/// Per-queue wake-up signals within one process, for store backends.
///
/// A backend calls [`Notifier::notify`] after a commit that made messages
/// due, and hands out [`Notifier::subscribe`] from
/// [`MessageQueue::subscribe`](super::MessageQueue::subscribe).
#[derive(Debug, Clone, Default)]
pub struct Notifier {
    queues: Arc<Mutex<HashMap<String, watch::Sender<u64>>>>,
}

impl Notifier {
    /// Creates a notifier with no subscribers.
    pub fn new() -> Self {
        Self::default()
    }

    /// Returns a subscription to `queue`.
    pub fn subscribe(&self, queue: &str) -> Subscription {
        let mut queues = self.lock();
        let sender = queues
            .entry(queue.to_owned())
            .or_insert_with(|| watch::channel(0).0);
        let mut receiver = sender.subscribe();
        receiver.mark_unchanged();
        Subscription { receiver }
    }

    /// Wakes every subscriber of `queue`.
    pub fn notify(&self, queue: &str) {
        if let Some(sender) = self.lock().get(queue) {
            sender.send_modify(|generation| *generation = generation.wrapping_add(1));
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, watch::Sender<u64>>> {
        // The map is only inserted into, so a poisoned lock is still whole.
        self.queues
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
