//! [`MessageQueue`] on PostgreSQL.

use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use sqlx::Row;
use sqlx::postgres::PgRow;
use tokio::sync::oneshot;

use super::finish::{FinalState, FinishRequest, finish_alone};
use super::row::{decode_message, duration_micros, from_micros, lease_lost, strip_nul, to_micros};
use super::sql::query;
use super::writer::{EncodedMessage, EnqueueRequest, insert_alone};
use super::{PostgresStore, invalid, query_failed};
use crate::MessageId;
use crate::store::{
    Claimed, Lease, Message, MessageQueue, MessageState, NewMessage, Outcome, QueueCounts,
    StoreError, Subscription,
};

/// The maximum number of rows one purge statement deletes.
const PURGE_BATCH: i64 = 10_000;

#[async_trait]
impl MessageQueue for PostgresStore {
    async fn enqueue(&self, messages: Vec<NewMessage>) -> Result<Vec<bool>, StoreError> {
        if messages.is_empty() {
            return Ok(Vec::new());
        }
        let messages = messages
            .into_iter()
            .map(EncodedMessage::new)
            .collect::<Result<Vec<_>, _>>()?;

        let writer = match &self.writer {
            Some(writer) if messages.len() <= self.shared.batch_size => writer,
            _ => return insert_alone(&self.shared, &messages).await,
        };
        let (reply, answer) = oneshot::channel();
        let stopped = || StoreError::unavailable("postgres enqueue writer stopped", "task ended");
        writer
            .send(EnqueueRequest { messages, reply })
            .await
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
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
        let rows = query(&self.shared.sql.claim)
            .bind(queue)
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .bind(duration_micros(lease))
            .fetch_all(&self.shared.pool)
            .await
            .map_err(|error| query_failed("claim messages", error))?;

        let mut claimed = rows
            .iter()
            .map(decode_claimed)
            .collect::<Result<Vec<_>, _>>()?;
        // `UPDATE ... RETURNING` does not keep the order of the CTE.
        claimed.sort_by_key(|claim| (claim.message.available_at, claim.message.id));
        Ok(claimed)
    }

    async fn renew(&self, lease: &Lease, extend_by: Duration) -> Result<Lease, StoreError> {
        let row = query(&self.shared.sql.renew)
            .bind(lease.id.to_string())
            .bind(lease.token.0 as i64)
            .bind(duration_micros(extend_by))
            .fetch_optional(&self.shared.pool)
            .await
            .map_err(|error| query_failed("renew a lease", error))?
            .ok_or_else(|| lease_lost(lease.id, lease.token.0))?;

        let expires: i64 = row
            .try_get(0)
            .map_err(|error| query_failed("read a renewed lease", error))?;
        Ok(Lease {
            expires_at: from_micros(expires),
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
        let error = strip_nul(error);
        let rows = query(&self.shared.sql.reschedule)
            .bind(&self.shared.sql.channel)
            .bind(lease.id.to_string())
            .bind(lease.token.0 as i64)
            .bind(to_micros(available_at))
            .bind(error.as_ref())
            .fetch_all(&self.shared.pool)
            .await
            .map_err(|error| query_failed("reschedule a message", error))?;
        self.woke_one(&rows, lease)
    }

    async fn release(&self, lease: &Lease) -> Result<(), StoreError> {
        let rows = query(&self.shared.sql.release)
            .bind(&self.shared.sql.channel)
            .bind(lease.id.to_string())
            .bind(lease.token.0 as i64)
            .fetch_all(&self.shared.pool)
            .await
            .map_err(|error| query_failed("release a message", error))?;
        self.woke_one(&rows, lease)
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
        let row = query(&self.shared.sql.get)
            .bind(id.to_string())
            .fetch_optional(&self.shared.pool)
            .await
            .map_err(|error| query_failed("read a message", error))?;
        row.map(|row| decode_message(&row).map(|(message, _)| message))
            .transpose()
    }

    async fn counts(&self, queue: &str) -> Result<QueueCounts, StoreError> {
        let rows = query(&self.shared.sql.counts)
            .bind(queue)
            .fetch_all(&self.shared.pool)
            .await
            .map_err(|error| query_failed("count messages", error))?;

        let mut counts = QueueCounts::default();
        for row in rows {
            let fail = |error| query_failed("read message counts", error);
            let state: String = row.try_get(0).map_err(fail)?;
            let count: i64 = row.try_get(1).map_err(fail)?;
            if let Some(state) = MessageState::parse(&state) {
                *counts.get_mut(state) = count as u64;
            }
        }
        Ok(counts)
    }

    async fn list(
        &self,
        queue: &str,
        state: MessageState,
        limit: usize,
        after: Option<MessageId>,
    ) -> Result<Vec<Message>, StoreError> {
        let rows = query(&self.shared.sql.list)
            .bind(queue)
            .bind(state.as_str())
            .bind(after.map(|id| id.to_string()))
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_all(&self.shared.pool)
            .await
            .map_err(|error| query_failed("list messages", error))?;
        rows.iter()
            .map(|row| decode_message(row).map(|(message, _)| message))
            .collect()
    }

    async fn retry(&self, id: MessageId) -> Result<bool, StoreError> {
        let rows = query(&self.shared.sql.retry)
            .bind(&self.shared.sql.channel)
            .bind(id.to_string())
            .fetch_all(&self.shared.pool)
            .await
            .map_err(|error| query_failed("retry a message", error))?;
        let Some(row) = rows.first() else {
            return Ok(false);
        };
        self.notify_queue_of(row)?;
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
            let result = query(&self.shared.sql.purge)
                .bind(queue)
                .bind(state.as_str())
                .bind(to_micros(older_than))
                .bind(PURGE_BATCH)
                .execute(&self.shared.pool)
                .await
                .map_err(|error| query_failed("purge messages", error))?;
            total += result.rows_affected();
            if result.rows_affected() < PURGE_BATCH as u64 {
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

impl PostgresStore {
    /// Moves a claimed message to the final `state`, through the finisher
    /// when group commit is on.
    async fn finish(
        &self,
        lease: &Lease,
        state: MessageState,
        error: Option<&str>,
        outcome: Option<Outcome>,
    ) -> Result<(), StoreError> {
        let row = FinalState::new(lease, state, error, outcome);
        let Some(finisher) = &self.finisher else {
            return finish_alone(&self.shared, &row).await;
        };

        let (reply, answer) = oneshot::channel();
        let stopped = || StoreError::unavailable("postgres finisher stopped", "task ended");
        finisher
            .send(FinishRequest { row, reply })
            .await
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }

    /// Checks that a notifying write matched its message, and wakes local
    /// subscribers of the message's queue.
    fn woke_one(&self, rows: &[PgRow], lease: &Lease) -> Result<(), StoreError> {
        let row = rows
            .first()
            .ok_or_else(|| lease_lost(lease.id, lease.token.0))?;
        self.notify_queue_of(row)
    }

    /// Wakes local subscribers of the queue a notifying write returned; the
    /// listener would too, a round trip later.
    fn notify_queue_of(&self, row: &PgRow) -> Result<(), StoreError> {
        let queue: String = row
            .try_get(0)
            .map_err(|error| query_failed("read a message queue", error))?;
        self.shared.notifier.notify(&queue);
        Ok(())
    }
}

fn decode_claimed(row: &PgRow) -> Result<Claimed, StoreError> {
    let (message, lease) = decode_message(row)?;
    let lease = lease.ok_or_else(|| invalid("claimed message has no lease"))?;
    Ok(Claimed { message, lease })
}
