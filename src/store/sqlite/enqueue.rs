//! The insert statements of enqueues.
//!
//! Messages go in with multi-row `INSERT ... ON CONFLICT (id) DO NOTHING
//! RETURNING id` statements of 1, 8 or 64 rows. A chunk with fewer
//! messages than its statement has rows repeats its last message to fill
//! the statement: the copy has the same id, so the conflict clause skips
//! it. This keeps sqlx's statement cache to six statements (three sizes,
//! bare or wrapped in a transaction) however batches vary.

use std::collections::HashSet;
use std::sync::OnceLock;
use std::time::SystemTime;

use sqlx::SqliteConnection;

use super::rows::{self, id_bytes, metadata_json, to_nanos};
use super::writer::{Request, Response};
use crate::MessageId;
use crate::store::{NewMessage, StoreError, encode_headers};

/// Row counts of the insert statements, smallest first.
const SIZES: [usize; 3] = [1, 8, 64];

/// The most messages one statement inserts.
pub(super) const MAX_ROWS: usize = SIZES[SIZES.len() - 1];

/// Whether an insert statement runs inside the caller's transaction or
/// carries its own `BEGIN IMMEDIATE` and `COMMIT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wrapping {
    Bare,
    OwnTransaction,
}

fn statement(rows: usize, wrapping: Wrapping) -> &'static str {
    static STATEMENTS: OnceLock<Vec<String>> = OnceLock::new();
    let statements = STATEMENTS.get_or_init(|| {
        let bare = SIZES.iter().map(|rows| build_insert(*rows));
        let wrapped = bare
            .clone()
            .map(|insert| format!("BEGIN IMMEDIATE; {insert}; COMMIT"));
        bare.chain(wrapped).collect()
    });
    let size = SIZES
        .iter()
        .position(|size| *size == rows)
        .expect("rows is one of SIZES");
    let offset = if wrapping == Wrapping::Bare {
        0
    } else {
        SIZES.len()
    };
    &statements[offset + size]
}

fn build_insert(rows: usize) -> String {
    let row = "(?, ?, ?, ?, ?, ?, ?, ?, 'pending', 0, 0, ?, ?, ?, ?)";
    let values = vec![row; rows].join(", ");
    format!(
        "INSERT INTO courier_messages (id, queue, destination, method, path_and_query, headers, \
         body, metadata, state, attempts, token, available_at, due_at, created_at, updated_at) \
         VALUES {values} ON CONFLICT (id) DO NOTHING RETURNING id"
    )
}

/// Inserts `messages`, skipping ids that exist, and returns the ids that
/// were inserted. Runs on any connection, inside the caller's transaction.
pub(super) async fn insert(
    connection: &mut SqliteConnection,
    messages: &[&NewMessage],
    now: SystemTime,
) -> Result<HashSet<MessageId>, sqlx::Error> {
    let mut inserted = HashSet::with_capacity(messages.len());
    for chunk in messages.chunks(MAX_ROWS) {
        insert_chunk(connection, chunk, Wrapping::Bare, now, &mut inserted).await?;
    }
    Ok(inserted)
}

/// Inserts at most [`MAX_ROWS`] messages and commits them, all in one
/// round trip to the driver's thread. On an error the transaction may be
/// left open: the caller must roll it back.
async fn insert_committed(
    connection: &mut SqliteConnection,
    messages: &[&NewMessage],
    now: SystemTime,
) -> Result<HashSet<MessageId>, sqlx::Error> {
    let mut inserted = HashSet::with_capacity(messages.len());
    insert_chunk(
        connection,
        messages,
        Wrapping::OwnTransaction,
        now,
        &mut inserted,
    )
    .await?;
    Ok(inserted)
}

async fn insert_chunk(
    connection: &mut SqliteConnection,
    chunk: &[&NewMessage],
    wrapping: Wrapping,
    now: SystemTime,
    inserted: &mut HashSet<MessageId>,
) -> Result<(), sqlx::Error> {
    let rows = *SIZES
        .iter()
        .find(|size| **size >= chunk.len())
        .expect("chunks have at most MAX_ROWS messages");
    let last = *chunk.last().expect("chunks are not empty");
    let padded = chunk.iter().copied().chain(std::iter::repeat(last));

    let now = to_nanos(now);
    let mut query = sqlx::query(statement(rows, wrapping));
    for message in padded.take(rows) {
        let available_at = to_nanos(message.available_at);
        query = query
            .bind(id_bytes(message.id))
            .bind(message.queue.as_str())
            .bind(message.destination.as_str())
            .bind(message.method.as_str())
            .bind(message.path_and_query.as_str())
            .bind(encode_headers(&message.headers))
            .bind(message.body.to_vec())
            .bind(metadata_json(&message.metadata))
            .bind(available_at)
            .bind(available_at)
            .bind(now)
            .bind(now);
    }

    for row in query.fetch_all(&mut *connection).await? {
        let id = rows::read_id(&row, "id").map_err(|error| sqlx::Error::Decode(error.into()))?;
        inserted.insert(id);
    }
    Ok(())
}

/// The replies of a batch, at the positions of its requests; `None` for a
/// request not answered yet.
pub(super) type Replies = Vec<Option<Result<Response, StoreError>>>;

fn enqueued<'a>(requests: &[&'a Request]) -> Vec<&'a NewMessage> {
    requests
        .iter()
        .filter_map(|request| match request {
            Request::Enqueue(messages) => Some(messages),
            _ => None,
        })
        .flatten()
        .collect()
}

/// Returns the replies of the enqueues in `requests`, given the ids that
/// were inserted.
fn replies(requests: &[&Request], mut inserted: HashSet<MessageId>) -> Replies {
    // The first occurrence of an inserted id takes it out of the set, so
    // a later duplicate in the same batch reads as skipped.
    requests
        .iter()
        .map(|request| match request {
            Request::Enqueue(messages) => {
                let stored = messages.iter().map(|m| inserted.remove(&m.id)).collect();
                Some(Ok(Response::Stored(stored)))
            }
            _ => None,
        })
        .collect()
}

/// Inserts the messages of every enqueue in `requests`, inside the open
/// transaction, and returns the enqueues' replies.
pub(super) async fn enqueue_merged(
    connection: &mut SqliteConnection,
    requests: &[&Request],
    now: SystemTime,
) -> Result<Replies, sqlx::Error> {
    let inserted = insert(connection, &enqueued(requests), now).await?;
    Ok(replies(requests, inserted))
}

/// Applies a batch of nothing but enqueues of at most [`MAX_ROWS`]
/// messages in one round trip, transaction included, and returns the
/// replies; returns `None` for any other batch.
///
/// This is the common batch under many producers, and every round trip
/// to the driver's thread costs two thread wake-ups.
pub(super) async fn enqueue_only(
    connection: &mut SqliteConnection,
    requests: &[&Request],
    now: SystemTime,
) -> Option<Result<Vec<Result<Response, StoreError>>, sqlx::Error>> {
    let only_enqueues = requests.iter().all(|r| matches!(r, Request::Enqueue(_)));
    let messages = enqueued(requests);
    if !only_enqueues || messages.is_empty() || messages.len() > MAX_ROWS {
        return None;
    }

    let result = insert_committed(connection, &messages, now).await;
    Some(result.map(|inserted| {
        replies(requests, inserted)
            .into_iter()
            .map(|reply| reply.expect("every request is an enqueue"))
            .collect()
    }))
}
