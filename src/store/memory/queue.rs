use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;

use super::MemoryStore;
use crate::MessageId;
use crate::store::{
    Claimed, FencingToken, Lease, Message, MessageQueue, MessageState, NewMessage, Outcome,
    QueueCounts, StoreError, StoreErrorKind, Subscription,
};

/// The messages of a [`MemoryStore`], with a per-queue index of claimable
/// ones.
#[derive(Debug, Default)]
pub(super) struct Messages {
    entries: HashMap<MessageId, Entry>,
    /// Per queue, `(due_at, id)` of every claimable message: pending ones
    /// due at `available_at`, in-flight ones due when their lease expires.
    due: HashMap<String, BTreeSet<(SystemTime, MessageId)>>,
    last_token: u64,
}

#[derive(Debug)]
struct Entry {
    message: Message,
    token: FencingToken,
    lease_expires_at: SystemTime,
}

impl Entry {
    fn due_at(&self) -> Option<SystemTime> {
        match self.message.state {
            MessageState::Pending => Some(self.message.available_at),
            MessageState::InFlight => Some(self.lease_expires_at),
            _ => None,
        }
    }

    fn lease(&self) -> Lease {
        Lease {
            id: self.message.id,
            token: self.token,
            expires_at: self.lease_expires_at,
        }
    }
}

impl Messages {
    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }

    fn enqueue(
        &mut self,
        messages: Vec<NewMessage>,
        now: SystemTime,
        max: usize,
    ) -> Result<Vec<bool>, StoreError> {
        let mut seen = std::collections::HashSet::new();
        let stored: Vec<bool> = messages
            .iter()
            .map(|message| !self.entries.contains_key(&message.id) && seen.insert(message.id))
            .collect();

        let new = stored.iter().filter(|stored| **stored).count();
        if self.entries.len() + new > max {
            return Err(StoreError::new(
                StoreErrorKind::Full,
                format!(
                    "memory store is full: {} messages kept, {max} allowed; purge finished messages or raise max_messages",
                    self.entries.len()
                ),
            ));
        }

        for (message, _) in messages.into_iter().zip(&stored).filter(|(_, s)| **s) {
            self.insert(message, now);
        }
        Ok(stored)
    }

    fn insert(&mut self, new: NewMessage, now: SystemTime) {
        let message = Message {
            id: new.id,
            queue: new.queue,
            destination: new.destination,
            method: new.method,
            path_and_query: new.path_and_query,
            headers: new.headers,
            body: new.body,
            metadata: new.metadata,
            state: MessageState::Pending,
            attempts: 0,
            available_at: new.available_at,
            created_at: now,
            updated_at: now,
            last_error: None,
            outcome: None,
        };
        let entry = Entry {
            message,
            token: FencingToken(0),
            lease_expires_at: now,
        };
        self.index(&entry);
        self.entries.insert(entry.message.id, entry);
    }

    fn claim(
        &mut self,
        queue: &str,
        limit: usize,
        lease: Duration,
        now: SystemTime,
    ) -> Vec<Claimed> {
        let ids: Vec<MessageId> = match self.due.get(queue) {
            Some(due) => due
                .iter()
                .take_while(|(due_at, _)| *due_at <= now)
                .take(limit)
                .map(|(_, id)| *id)
                .collect(),
            None => return Vec::new(),
        };

        ids.into_iter()
            .map(|id| {
                self.last_token += 1;
                let token = FencingToken(self.last_token);
                self.update(id, |entry| {
                    entry.message.state = MessageState::InFlight;
                    entry.message.attempts += 1;
                    entry.message.updated_at = now;
                    entry.token = token;
                    entry.lease_expires_at = now + lease;
                    Claimed {
                        message: entry.message.clone(),
                        lease: entry.lease(),
                    }
                })
            })
            .collect()
    }

    /// Applies `change` to the message that `lease` covers, if the lease is
    /// still the message's current one.
    fn with_lease<R>(
        &mut self,
        lease: &Lease,
        change: impl FnOnce(&mut Entry) -> R,
    ) -> Result<R, StoreError> {
        let current = self.entries.get(&lease.id).is_some_and(|entry| {
            entry.message.state == MessageState::InFlight && entry.token == lease.token
        });
        if !current {
            return Err(StoreError::lease_lost(format!(
                "lease on message {} with token {} is no longer held",
                lease.id, lease.token.0
            )));
        }
        Ok(self.update(lease.id, change))
    }

    /// Applies `change` to an existing entry and keeps the due index right.
    fn update<R>(&mut self, id: MessageId, change: impl FnOnce(&mut Entry) -> R) -> R {
        let mut entry = self
            .entries
            .remove(&id)
            .expect("update is only called for ids read from the map");
        self.unindex(&entry);
        let result = change(&mut entry);
        self.index(&entry);
        self.entries.insert(id, entry);
        result
    }

    fn index(&mut self, entry: &Entry) {
        if let Some(due_at) = entry.due_at() {
            self.due
                .entry(entry.message.queue.clone())
                .or_default()
                .insert((due_at, entry.message.id));
        }
    }

    fn unindex(&mut self, entry: &Entry) {
        if let (Some(due_at), Some(due)) = (entry.due_at(), self.due.get_mut(&entry.message.queue))
        {
            due.remove(&(due_at, entry.message.id));
        }
    }

    fn finish(
        &mut self,
        lease: &Lease,
        state: MessageState,
        error: Option<&str>,
        outcome: Option<Outcome>,
        now: SystemTime,
    ) -> Result<(), StoreError> {
        self.with_lease(lease, |entry| {
            entry.message.state = state;
            entry.message.updated_at = now;
            entry.message.outcome = outcome;
            if let Some(error) = error {
                entry.message.last_error = Some(error.to_owned());
            }
        })
    }

    fn make_pending(entry: &mut Entry, available_at: SystemTime, now: SystemTime) {
        entry.message.state = MessageState::Pending;
        entry.message.available_at = available_at;
        entry.message.updated_at = now;
    }

    fn retry(&mut self, id: MessageId, now: SystemTime) -> Option<String> {
        let state = self.entries.get(&id)?.message.state;
        if !matches!(state, MessageState::Dead | MessageState::Failed) {
            return None;
        }
        Some(self.update(id, |entry| {
            Self::make_pending(entry, now, now);
            entry.message.attempts = 0;
            entry.message.queue.clone()
        }))
    }

    fn counts(&self, queue: &str) -> QueueCounts {
        let mut counts = QueueCounts::default();
        for entry in self.entries.values().filter(|e| e.message.queue == queue) {
            *counts.get_mut(entry.message.state) += 1;
        }
        counts
    }

    fn list(
        &self,
        queue: &str,
        state: MessageState,
        limit: usize,
        after: Option<MessageId>,
    ) -> Vec<Message> {
        let mut messages: Vec<&Message> = self
            .entries
            .values()
            .map(|entry| &entry.message)
            .filter(|message| message.queue == queue && message.state == state)
            .filter(|message| after.is_none_or(|after| message.id > after))
            .collect();
        messages.sort_by_key(|message| message.id);
        messages.into_iter().take(limit).cloned().collect()
    }

    fn purge(&mut self, queue: &str, state: MessageState, older_than: SystemTime) -> u64 {
        if state == MessageState::InFlight {
            return 0;
        }
        let doomed: Vec<MessageId> = self
            .entries
            .values()
            .map(|entry| &entry.message)
            .filter(|m| m.queue == queue && m.state == state && m.updated_at < older_than)
            .map(|message| message.id)
            .collect();
        for id in &doomed {
            let entry = self
                .entries
                .remove(id)
                .expect("id was just read from the map");
            self.unindex(&entry);
        }
        doomed.len() as u64
    }
}

#[async_trait]
impl MessageQueue for MemoryStore {
    async fn enqueue(&self, messages: Vec<NewMessage>) -> Result<Vec<bool>, StoreError> {
        let mut queues: Vec<String> = messages.iter().map(|m| m.queue.clone()).collect();
        let stored = self
            .messages()
            .enqueue(messages, self.clock.now(), self.max_messages)?;

        queues.sort_unstable();
        queues.dedup();
        for queue in &queues {
            self.notifier.notify(queue);
        }
        Ok(stored)
    }

    async fn claim(
        &self,
        queue: &str,
        limit: usize,
        lease: Duration,
    ) -> Result<Vec<Claimed>, StoreError> {
        Ok(self.messages().claim(queue, limit, lease, self.clock.now()))
    }

    async fn renew(&self, lease: &Lease, extend_by: Duration) -> Result<Lease, StoreError> {
        let expires_at = self.clock.now() + extend_by;
        self.messages().with_lease(lease, |entry| {
            entry.lease_expires_at = expires_at;
            entry.lease()
        })
    }

    async fn complete(&self, lease: &Lease, outcome: Option<Outcome>) -> Result<(), StoreError> {
        let now = self.clock.now();
        self.messages()
            .finish(lease, MessageState::Succeeded, None, outcome, now)
    }

    async fn reschedule(
        &self,
        lease: &Lease,
        available_at: SystemTime,
        error: &str,
    ) -> Result<(), StoreError> {
        let now = self.clock.now();
        let queue = self.messages().with_lease(lease, |entry| {
            Messages::make_pending(entry, available_at, now);
            entry.message.last_error = Some(error.to_owned());
            entry.message.queue.clone()
        })?;
        self.notifier.notify(&queue);
        Ok(())
    }

    async fn release(&self, lease: &Lease) -> Result<(), StoreError> {
        let now = self.clock.now();
        let queue = self.messages().with_lease(lease, |entry| {
            Messages::make_pending(entry, now, now);
            entry.message.attempts = entry.message.attempts.saturating_sub(1);
            entry.message.queue.clone()
        })?;
        self.notifier.notify(&queue);
        Ok(())
    }

    async fn fail(
        &self,
        lease: &Lease,
        error: &str,
        outcome: Option<Outcome>,
    ) -> Result<(), StoreError> {
        let now = self.clock.now();
        self.messages()
            .finish(lease, MessageState::Failed, Some(error), outcome, now)
    }

    async fn dead_letter(
        &self,
        lease: &Lease,
        error: &str,
        outcome: Option<Outcome>,
    ) -> Result<(), StoreError> {
        let now = self.clock.now();
        self.messages()
            .finish(lease, MessageState::Dead, Some(error), outcome, now)
    }

    async fn get(&self, id: MessageId) -> Result<Option<Message>, StoreError> {
        Ok(self.messages().entries.get(&id).map(|e| e.message.clone()))
    }

    async fn counts(&self, queue: &str) -> Result<QueueCounts, StoreError> {
        Ok(self.messages().counts(queue))
    }

    async fn list(
        &self,
        queue: &str,
        state: MessageState,
        limit: usize,
        after: Option<MessageId>,
    ) -> Result<Vec<Message>, StoreError> {
        Ok(self.messages().list(queue, state, limit, after))
    }

    async fn retry(&self, id: MessageId) -> Result<bool, StoreError> {
        let queue = self.messages().retry(id, self.clock.now());
        if let Some(queue) = &queue {
            self.notifier.notify(queue);
        }
        Ok(queue.is_some())
    }

    async fn purge(
        &self,
        queue: &str,
        state: MessageState,
        older_than: SystemTime,
    ) -> Result<u64, StoreError> {
        Ok(self.messages().purge(queue, state, older_than))
    }

    fn subscribe(&self, queue: &str) -> Subscription {
        self.notifier.subscribe(queue)
    }
}
