//! Group commit of enqueues.
//!
//! One writer task per store takes every enqueue that arrived while the
//! previous commit ran, up to the batch size, and writes them with one
//! multi-row `INSERT ... ON CONFLICT (id) DO NOTHING` in one transaction.
//! Each caller gets its result after that commit. A commit costs one WAL flush
//! whatever its size, so many producers share the flush instead of queueing
//! for one each.

use std::collections::HashSet;
use std::sync::Arc;

use sqlx::Row;
use sqlx::postgres::PgExecutor;
use tokio::sync::{mpsc, oneshot};

use super::row::to_micros;
use super::sql::{Sql, query};
use super::{Shared, invalid, query_failed};
use crate::store::{NewMessage, StoreError, encode_headers};

/// One caller's enqueue, waiting for the writer.
pub(super) struct EnqueueRequest {
    pub(super) messages: Vec<EncodedMessage>,
    pub(super) reply: oneshot::Sender<Result<Vec<bool>, StoreError>>,
}

/// A message in the form its row is bound in.
pub(super) struct EncodedMessage {
    id: String,
    queue: String,
    destination: String,
    method: String,
    path_and_query: String,
    headers: Vec<u8>,
    body: Vec<u8>,
    metadata: String,
    available_us: i64,
}

impl EncodedMessage {
    /// Encodes `message`, rejecting text PostgreSQL cannot store.
    pub(super) fn new(message: NewMessage) -> Result<Self, StoreError> {
        let texts = [
            &message.queue,
            &message.destination,
            &message.path_and_query,
        ];
        let metadata_texts = message.metadata.iter().flat_map(|(k, v)| [k, v]);
        if texts
            .into_iter()
            .chain(metadata_texts)
            .any(|text| text.contains('\0'))
        {
            // PostgreSQL `text` and `jsonb` cannot hold U+0000.
            return Err(invalid(format!(
                "invalid message {}: queue, destination, path and metadata must not contain NUL",
                message.id
            )));
        }
        let metadata = serde_json::to_string(&message.metadata)
            .map_err(|error| invalid("invalid message metadata").with_source(error))?;

        Ok(Self {
            id: message.id.to_string(),
            queue: message.queue,
            destination: message.destination,
            method: message.method.as_str().to_owned(),
            path_and_query: message.path_and_query,
            headers: encode_headers(&message.headers),
            body: message.body.to_vec(),
            metadata,
            available_us: to_micros(message.available_at),
        })
    }
}

/// Runs the writer until every store handle is dropped.
pub(super) async fn run(shared: Arc<Shared>, mut receiver: mpsc::Receiver<EnqueueRequest>) {
    let size = |request: &EnqueueRequest| request.messages.len();
    while let Some(batch) = next_batch(&mut receiver, shared.batch_size, size).await {
        write_batch(&shared, batch).await;
    }
}

/// Waits for a request, then adds those already waiting while the batch's
/// total `size` is below `limit`. Returns `None` once every sender is gone.
pub(super) async fn next_batch<T>(
    receiver: &mut mpsc::Receiver<T>,
    limit: usize,
    size: impl Fn(&T) -> usize,
) -> Option<Vec<T>> {
    let first = receiver.recv().await?;
    let mut total = size(&first);
    let mut batch = vec![first];
    while total < limit {
        let Ok(next) = receiver.try_recv() else {
            break;
        };
        total += size(&next);
        batch.push(next);
    }
    Some(batch)
}

/// Writes `batch` in one transaction, and sends every caller its result.
async fn write_batch(shared: &Shared, batch: Vec<EnqueueRequest>) {
    let all: Vec<&EncodedMessage> = batch.iter().flat_map(|request| &request.messages).collect();
    match insert(&shared.sql, &shared.pool, &all).await {
        Ok(inserted) => {
            // Shared by the whole batch, so that of two callers that enqueue
            // one id in the same batch, only the first gets `true`.
            let mut seen = HashSet::new();
            for request in batch {
                let answer = mark_inserted(&request.messages, &inserted, &mut seen);
                notify_local(shared, &request.messages, &answer);
                let _ = request.reply.send(Ok(answer));
            }
        }
        // One caller's bad value must not fail the others, so a shared
        // batch that failed is retried one caller per transaction.
        Err(_) if batch.len() > 1 => {
            tracing::debug!(
                requests = batch.len(),
                "group commit failed; retrying each enqueue alone"
            );
            for request in batch {
                let answer = insert_alone(shared, &request.messages).await;
                let _ = request.reply.send(answer);
            }
        }
        Err(error) => {
            if let Some(request) = batch.into_iter().next() {
                let _ = request.reply.send(Err(error));
            }
        }
    }
}

/// Inserts `messages` in a transaction of their own.
pub(super) async fn insert_alone(
    shared: &Shared,
    messages: &[EncodedMessage],
) -> Result<Vec<bool>, StoreError> {
    let answer = insert_on(&shared.sql, &shared.pool, messages).await?;
    notify_local(shared, messages, &answer);
    Ok(answer)
}

/// Inserts `messages` with `executor` and returns, for each message,
/// whether it was inserted. Local subscribers are not woken: the caller
/// does that after the commit.
pub(super) async fn insert_on<'e>(
    sql: &Sql,
    executor: impl PgExecutor<'e>,
    messages: &[EncodedMessage],
) -> Result<Vec<bool>, StoreError> {
    let all: Vec<&EncodedMessage> = messages.iter().collect();
    let inserted = insert(sql, executor, &all).await?;
    Ok(mark_inserted(messages, &inserted, &mut HashSet::new()))
}

/// Runs one insert statement, which notifies listeners when its
/// transaction commits, and returns the ids it inserted.
async fn insert<'e>(
    sql: &Sql,
    executor: impl PgExecutor<'e>,
    messages: &[&EncodedMessage],
) -> Result<HashSet<String>, StoreError> {
    let column = |field: fn(&EncodedMessage) -> String| -> Vec<String> {
        messages.iter().map(|message| field(message)).collect()
    };
    let bytes = |field: fn(&EncodedMessage) -> &Vec<u8>| -> Vec<&[u8]> {
        messages
            .iter()
            .map(|message| field(message).as_slice())
            .collect()
    };
    let available: Vec<i64> = messages
        .iter()
        .map(|message| message.available_us)
        .collect();

    let rows = query(&sql.insert)
        .bind(&sql.channel)
        .bind(column(|m| m.id.clone()))
        .bind(column(|m| m.queue.clone()))
        .bind(column(|m| m.destination.clone()))
        .bind(column(|m| m.method.clone()))
        .bind(column(|m| m.path_and_query.clone()))
        .bind(bytes(|m| &m.headers))
        .bind(bytes(|m| &m.body))
        .bind(column(|m| m.metadata.clone()))
        .bind(available)
        .fetch_all(executor)
        .await
        .map_err(|error| query_failed("enqueue messages", error))?;

    rows.iter()
        .filter_map(|row| row.try_get::<Option<String>, _>(0).transpose())
        .collect::<Result<_, _>>()
        .map_err(|error| query_failed("read enqueued ids", error))
}

/// Returns `true` for the first occurrence of each inserted id not in
/// `seen`, so that a repeated id within one statement is reported skipped
/// like an existing one.
fn mark_inserted(
    messages: &[EncodedMessage],
    inserted: &HashSet<String>,
    seen: &mut HashSet<String>,
) -> Vec<bool> {
    messages
        .iter()
        .map(|message| inserted.contains(&message.id) && seen.insert(message.id.clone()))
        .collect()
}

/// Wakes this process's subscribers at once instead of after the
/// notification's round trip through the server.
fn notify_local(shared: &Shared, messages: &[EncodedMessage], inserted: &[bool]) {
    let queues: HashSet<&str> = messages
        .iter()
        .zip(inserted)
        .filter(|(_, inserted)| **inserted)
        .map(|(message, _)| message.queue.as_str())
        .collect();
    for queue in queues {
        shared.notifier.notify(queue);
    }
}
