//! [`MessageQueue`] on Redis.

use std::collections::HashSet;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;

use super::decode::{RawMessage, decode_message, duration_millis, from_millis, to_millis};
use super::{RedisStore, command_failed};
use crate::MessageId;
use crate::store::{
    Claimed, Lease, Message, MessageQueue, MessageState, NewMessage, Outcome, QueueCounts,
    StoreError, StoreErrorKind, Subscription, encode_headers,
};

/// How many messages one purge script deletes before yielding the server
/// to other clients.
const PURGE_BATCH: usize = 1000;

/// The largest claim or list limit sent to a script, which Lua reads as a
/// double and Redis as a 64-bit integer.
const MAX_LIMIT: usize = 1 << 31;

#[async_trait]
impl MessageQueue for RedisStore {
    async fn enqueue(&self, messages: Vec<NewMessage>) -> Result<Vec<bool>, StoreError> {
        if messages.is_empty() {
            return Ok(Vec::new());
        }
        let mut invocation = self.shared.scripts.enqueue.prepare_invoke();
        invocation
            .arg(&self.shared.prefix)
            .arg(&self.shared.channel);
        for message in &messages {
            let metadata = serde_json::to_vec(&message.metadata).map_err(|error| {
                StoreError::new(StoreErrorKind::Invalid, "invalid message metadata")
                    .with_source(error)
            })?;
            invocation
                .arg(message.id.to_string())
                .arg(&message.queue)
                .arg(&message.destination)
                .arg(message.method.as_str())
                .arg(&message.path_and_query)
                .arg(encode_headers(&message.headers))
                .arg(message.body.as_ref())
                .arg(metadata)
                .arg(to_millis(message.available_at));
        }
        let stored: Vec<i64> = invocation
            .invoke_async(&mut self.connection())
            .await
            .map_err(|error| command_failed("enqueue messages", error))?;

        let woke: HashSet<&str> = messages
            .iter()
            .zip(&stored)
            .filter(|(_, stored)| **stored == 1)
            .map(|(message, _)| message.queue.as_str())
            .collect();
        for queue in woke {
            self.shared.notifier.notify(queue);
        }
        Ok(stored.into_iter().map(|stored| stored == 1).collect())
    }

    async fn claim(
        &self,
        queue: &str,
        limit: usize,
        lease: Duration,
    ) -> Result<Vec<Claimed>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let raw: Vec<RawMessage> = self
            .shared
            .scripts
            .claim
            .arg(&self.shared.prefix)
            .arg(queue)
            .arg(limit.min(MAX_LIMIT))
            .arg(duration_millis(lease))
            .invoke_async(&mut self.connection())
            .await
            .map_err(|error| command_failed("claim messages", error))?;

        raw.into_iter()
            .map(|raw| {
                let (message, lease) = decode_message(raw)?;
                let lease = lease.ok_or_else(|| {
                    StoreError::new(StoreErrorKind::Corrupt, "claimed message has no lease")
                })?;
                Ok(Claimed { message, lease })
            })
            .collect()
    }

    async fn renew(&self, lease: &Lease, extend_by: Duration) -> Result<Lease, StoreError> {
        let expires: Option<i64> = self
            .shared
            .scripts
            .renew
            .arg(&self.shared.prefix)
            .arg(lease.id.to_string())
            .arg(lease.token.0)
            .arg(duration_millis(extend_by))
            .invoke_async(&mut self.connection())
            .await
            .map_err(|error| command_failed("renew a lease", error))?;
        let expires = expires.ok_or_else(|| lease_lost(lease))?;
        Ok(Lease {
            expires_at: from_millis(expires),
            ..*lease
        })
    }

    async fn complete(&self, lease: &Lease, outcome: Option<Outcome>) -> Result<(), StoreError> {
        self.finish(lease, MessageState::Succeeded, None, outcome)
            .await
    }

    async fn reschedule(
        &self,
        lease: &Lease,
        available_at: SystemTime,
        error: &str,
    ) -> Result<(), StoreError> {
        let available_at = to_millis(available_at).to_string();
        self.requeue(lease, &available_at, Some(error)).await
    }

    async fn release(&self, lease: &Lease) -> Result<(), StoreError> {
        self.requeue(lease, "", None).await
    }

    async fn fail(
        &self,
        lease: &Lease,
        error: &str,
        outcome: Option<Outcome>,
    ) -> Result<(), StoreError> {
        self.finish(lease, MessageState::Failed, Some(error), outcome)
            .await
    }

    async fn dead_letter(
        &self,
        lease: &Lease,
        error: &str,
        outcome: Option<Outcome>,
    ) -> Result<(), StoreError> {
        self.finish(lease, MessageState::Dead, Some(error), outcome)
            .await
    }

    async fn get(&self, id: MessageId) -> Result<Option<Message>, StoreError> {
        let raw: Option<RawMessage> = self
            .shared
            .scripts
            .get
            .arg(&self.shared.prefix)
            .arg(id.to_string())
            .invoke_async(&mut self.connection())
            .await
            .map_err(|error| command_failed("read a message", error))?;
        raw.map(|raw| decode_message(raw).map(|(message, _)| message))
            .transpose()
    }

    async fn counts(&self, queue: &str) -> Result<QueueCounts, StoreError> {
        let counts: Vec<u64> = self
            .shared
            .scripts
            .counts
            .arg(&self.shared.prefix)
            .arg(queue)
            .invoke_async(&mut self.connection())
            .await
            .map_err(|error| command_failed("count messages", error))?;

        let mut total = QueueCounts::default();
        for (state, count) in MessageState::ALL.into_iter().zip(counts) {
            *total.get_mut(state) = count;
        }
        Ok(total)
    }

    async fn list(
        &self,
        queue: &str,
        state: MessageState,
        limit: usize,
        after: Option<MessageId>,
    ) -> Result<Vec<Message>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let raw: Vec<RawMessage> = self
            .shared
            .scripts
            .list
            .arg(&self.shared.prefix)
            .arg(queue)
            .arg(state.as_str())
            .arg(after.map(|id| id.to_string()).unwrap_or_default())
            .arg(limit.min(MAX_LIMIT))
            .invoke_async(&mut self.connection())
            .await
            .map_err(|error| command_failed("list messages", error))?;
        raw.into_iter()
            .map(|raw| decode_message(raw).map(|(message, _)| message))
            .collect()
    }

    async fn retry(&self, id: MessageId) -> Result<bool, StoreError> {
        let retried: Option<String> = self
            .shared
            .scripts
            .retry
            .arg(&self.shared.prefix)
            .arg(&self.shared.channel)
            .arg(id.to_string())
            .invoke_async(&mut self.connection())
            .await
            .map_err(|error| command_failed("retry a message", error))?;
        let Some(queue) = retried else {
            return Ok(false);
        };
        self.shared.notifier.notify(&queue);
        Ok(true)
    }

    async fn purge(
        &self,
        queue: &str,
        state: MessageState,
        older_than: SystemTime,
    ) -> Result<u64, StoreError> {
        if state == MessageState::InFlight {
            return Ok(0);
        }
        let mut total = 0;
        loop {
            let deleted: usize = self
                .shared
                .scripts
                .purge
                .arg(&self.shared.prefix)
                .arg(queue)
                .arg(state.as_str())
                .arg(to_millis(older_than))
                .arg(PURGE_BATCH)
                .invoke_async(&mut self.connection())
                .await
                .map_err(|error| command_failed("purge messages", error))?;
            total += deleted as u64;
            if deleted < PURGE_BATCH {
                return Ok(total);
            }
        }
    }

    fn subscribe(&self, queue: &str) -> Subscription {
        self.shared
            .subscribed
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(queue.to_owned());
        self.shared.notifier.subscribe(queue)
    }
}

impl RedisStore {
    /// Moves a claimed message to the final `state`.
    async fn finish(
        &self,
        lease: &Lease,
        state: MessageState,
        error: Option<&str>,
        outcome: Option<Outcome>,
    ) -> Result<(), StoreError> {
        let status = outcome
            .as_ref()
            .map(|outcome| outcome.status.as_str().to_owned())
            .unwrap_or_default();
        let body = outcome.map(|outcome| outcome.body).unwrap_or_default();
        let applied: i64 = self
            .shared
            .scripts
            .finish
            .arg(&self.shared.prefix)
            .arg(lease.id.to_string())
            .arg(lease.token.0)
            .arg(state.as_str())
            .arg(if error.is_some() { "1" } else { "0" })
            .arg(error.unwrap_or_default())
            .arg(status)
            .arg(body.as_ref())
            .invoke_async(&mut self.connection())
            .await
            .map_err(|error| command_failed("finish a message", error))?;
        applied_or_lost(applied, lease)
    }

    /// Returns a claimed message to `pending`: at `available_at` (empty for
    /// the server's now) with `error` for a reschedule, or now with the
    /// attempt given back for a release.
    async fn requeue(
        &self,
        lease: &Lease,
        available_at: &str,
        error: Option<&str>,
    ) -> Result<(), StoreError> {
        let script = &self.shared.scripts.requeue;
        let queue: Option<String> = script
            .arg(&self.shared.prefix)
            .arg(&self.shared.channel)
            .arg(lease.id.to_string())
            .arg(lease.token.0)
            .arg(available_at)
            .arg(if error.is_some() { "1" } else { "0" })
            .arg(error.unwrap_or_default())
            .arg(if error.is_some() { "0" } else { "1" })
            .invoke_async(&mut self.connection())
            .await
            .map_err(|error| command_failed("requeue a message", error))?;
        // Wakes local subscribers now; the subscriber would too, a round
        // trip later.
        let queue = queue.ok_or_else(|| lease_lost(lease))?;
        self.shared.notifier.notify(&queue);
        Ok(())
    }
}

fn applied_or_lost(applied: i64, lease: &Lease) -> Result<(), StoreError> {
    if applied == 1 {
        Ok(())
    } else {
        Err(lease_lost(lease))
    }
}

fn lease_lost(lease: &Lease) -> StoreError {
    StoreError::lease_lost(format!(
        "lease on message {} with token {} is no longer current",
        lease.id, lease.token.0
    ))
}
