//! The write statements of the message queue, run by the writer task.

use std::collections::HashSet;
use std::sync::OnceLock;
use std::time::SystemTime;

use sqlx::SqliteConnection;

use super::rows::{self, MESSAGE_COLUMNS, id_bytes, metadata_json, to_nanos};
use super::writer::{Applied, Request, Response};
use crate::MessageId;
use crate::store::{Claimed, Lease, MessageState, NewMessage, Outcome, StoreError, encode_headers};

/// Row counts of the multi-row insert statements, largest first. A batch
/// is cut into these sizes, so sqlx's statement cache contains a fixed set
/// of prepared statements however batches vary.
const INSERT_SIZES: [usize; 7] = [64, 32, 16, 8, 4, 2, 1];

fn insert_statement(rows: usize) -> &'static str {
    static STATEMENTS: OnceLock<Vec<String>> = OnceLock::new();
    let statements =
        STATEMENTS.get_or_init(|| INSERT_SIZES.iter().map(|n| build_insert(*n)).collect());
    let index = INSERT_SIZES
        .iter()
        .position(|size| *size == rows)
        .expect("rows is one of INSERT_SIZES");
    &statements[index]
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
    let mut rest = messages;
    while !rest.is_empty() {
        let size = *INSERT_SIZES
            .iter()
            .find(|size| **size <= rest.len())
            .expect("the smallest size is 1");
        let (chunk, tail) = rest.split_at(size);
        insert_chunk(connection, chunk, now, &mut inserted).await?;
        rest = tail;
    }
    Ok(inserted)
}

async fn insert_chunk(
    connection: &mut SqliteConnection,
    chunk: &[&NewMessage],
    now: SystemTime,
    inserted: &mut HashSet<MessageId>,
) -> Result<(), sqlx::Error> {
    let now = to_nanos(now);
    let mut query = sqlx::query(insert_statement(chunk.len()));
    for message in chunk {
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

/// Inserts the messages of every enqueue in `requests` with one set of
/// multi-row statements, and returns the enqueues' replies at their
/// positions (other positions are `None`).
pub(super) async fn enqueue_merged(
    connection: &mut SqliteConnection,
    requests: &[&Request],
    now: SystemTime,
) -> Result<Vec<Option<Result<Response, StoreError>>>, sqlx::Error> {
    let messages: Vec<&NewMessage> = requests
        .iter()
        .filter_map(|request| match request {
            Request::Enqueue(messages) => Some(messages),
            _ => None,
        })
        .flatten()
        .collect();
    let mut inserted = insert(connection, &messages, now).await?;

    // The first occurrence of an inserted id takes it out of the set, so
    // a later duplicate in the same batch reads as skipped.
    let answers = requests
        .iter()
        .map(|request| match request {
            Request::Enqueue(messages) => {
                let stored = messages.iter().map(|m| inserted.remove(&m.id)).collect();
                Some(Ok(Response::Stored(stored)))
            }
            _ => None,
        })
        .collect();
    Ok(answers)
}

pub(super) async fn claim(
    connection: &mut SqliteConnection,
    queue: &str,
    limit: usize,
    now: SystemTime,
    lease_end: SystemTime,
) -> Applied {
    let statement: &'static str = claim_statement();
    let rows = sqlx::query(statement)
        .bind(to_nanos(lease_end))
        .bind(to_nanos(now))
        .bind(queue)
        .bind(to_nanos(now))
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&mut *connection)
        .await?;

    let mut claimed = Vec::with_capacity(rows.len());
    for row in &rows {
        match claimed_row(row) {
            Ok(claim) => claimed.push(claim),
            Err(error) => return Ok(Err(error)),
        }
    }
    // RETURNING has no order, and the contract promises oldest first.
    claimed.sort_by_key(|claim: &Claimed| (claim.message.available_at, claim.message.id));
    Ok(Ok(Response::Claimed(claimed)))
}

fn claim_statement() -> &'static str {
    static STATEMENT: OnceLock<String> = OnceLock::new();
    STATEMENT.get_or_init(|| {
        format!(
            "UPDATE courier_messages SET state = 'in_flight', attempts = attempts + 1, \
             token = token + 1, due_at = ?, updated_at = ? \
             WHERE id IN (SELECT id FROM courier_messages \
                 WHERE queue = ? AND due_at IS NOT NULL AND due_at <= ? \
                 ORDER BY due_at LIMIT ?) \
             RETURNING {MESSAGE_COLUMNS}"
        )
    })
}

fn claimed_row(row: &sqlx::sqlite::SqliteRow) -> Result<Claimed, StoreError> {
    let message = rows::message(row)?;
    let token: i64 = rows::get(row, "token")?;
    let due_at: i64 = rows::get(row, "due_at")?;
    let lease = Lease {
        id: message.id,
        token: crate::store::FencingToken(token as u64),
        expires_at: rows::from_nanos(due_at),
    };
    Ok(Claimed { message, lease })
}

fn lease_lost(lease: &Lease) -> StoreError {
    StoreError::lease_lost(format!(
        "lease on message {} with token {} is no longer held",
        lease.id, lease.token.0
    ))
}

pub(super) async fn renew(
    connection: &mut SqliteConnection,
    lease: &Lease,
    expires_at: SystemTime,
) -> Applied {
    let updated = sqlx::query(
        "UPDATE courier_messages SET due_at = ? \
         WHERE id = ? AND token = ? AND state = 'in_flight'",
    )
    .bind(to_nanos(expires_at))
    .bind(id_bytes(lease.id))
    .bind(lease.token.0 as i64)
    .execute(&mut *connection)
    .await?;

    if updated.rows_affected() == 0 {
        return Ok(Err(lease_lost(lease)));
    }
    let renewed = Lease {
        expires_at: rows::from_nanos(to_nanos(expires_at)),
        ..*lease
    };
    Ok(Ok(Response::Renewed(renewed)))
}

pub(super) async fn finish(
    connection: &mut SqliteConnection,
    lease: &Lease,
    state: MessageState,
    error: Option<&str>,
    outcome: Option<&Outcome>,
    now: SystemTime,
) -> Applied {
    let updated = sqlx::query(
        "UPDATE courier_messages SET state = ?, due_at = NULL, updated_at = ?, \
         last_error = coalesce(?, last_error), outcome_status = ?, outcome_body = ? \
         WHERE id = ? AND token = ? AND state = 'in_flight'",
    )
    .bind(state.as_str())
    .bind(to_nanos(now))
    .bind(error)
    .bind(outcome.map(|outcome| i64::from(outcome.status.as_u16())))
    .bind(outcome.map(|outcome| outcome.body.to_vec()))
    .bind(id_bytes(lease.id))
    .bind(lease.token.0 as i64)
    .execute(&mut *connection)
    .await?;

    if updated.rows_affected() == 0 {
        return Ok(Err(lease_lost(lease)));
    }
    Ok(Ok(Response::Done))
}

pub(super) async fn reschedule(
    connection: &mut SqliteConnection,
    lease: &Lease,
    available_at: SystemTime,
    error: &str,
    now: SystemTime,
) -> Applied {
    let available_at = to_nanos(available_at);
    let queue: Option<String> = sqlx::query_scalar(
        "UPDATE courier_messages SET state = 'pending', available_at = ?, due_at = ?, \
         updated_at = ?, last_error = ? \
         WHERE id = ? AND token = ? AND state = 'in_flight' RETURNING queue",
    )
    .bind(available_at)
    .bind(available_at)
    .bind(to_nanos(now))
    .bind(error)
    .bind(id_bytes(lease.id))
    .bind(lease.token.0 as i64)
    .fetch_optional(&mut *connection)
    .await?;

    Ok(queue.map(Response::Due).ok_or_else(|| lease_lost(lease)))
}

pub(super) async fn release(
    connection: &mut SqliteConnection,
    lease: &Lease,
    now: SystemTime,
) -> Applied {
    let now = to_nanos(now);
    let queue: Option<String> = sqlx::query_scalar(
        "UPDATE courier_messages SET state = 'pending', available_at = ?, due_at = ?, \
         updated_at = ?, attempts = max(attempts - 1, 0) \
         WHERE id = ? AND token = ? AND state = 'in_flight' RETURNING queue",
    )
    .bind(now)
    .bind(now)
    .bind(now)
    .bind(id_bytes(lease.id))
    .bind(lease.token.0 as i64)
    .fetch_optional(&mut *connection)
    .await?;

    Ok(queue.map(Response::Due).ok_or_else(|| lease_lost(lease)))
}

pub(super) async fn retry(
    connection: &mut SqliteConnection,
    id: MessageId,
    now: SystemTime,
) -> Applied {
    let now = to_nanos(now);
    let queue: Option<String> = sqlx::query_scalar(
        "UPDATE courier_messages SET state = 'pending', attempts = 0, available_at = ?, \
         due_at = ?, updated_at = ? \
         WHERE id = ? AND state IN ('dead', 'failed') RETURNING queue",
    )
    .bind(now)
    .bind(now)
    .bind(now)
    .bind(id_bytes(id))
    .fetch_optional(&mut *connection)
    .await?;

    Ok(Ok(Response::Retried(queue)))
}

pub(super) async fn purge(
    connection: &mut SqliteConnection,
    queue: &str,
    state: MessageState,
    older_than: SystemTime,
) -> Applied {
    if state == MessageState::InFlight {
        return Ok(Ok(Response::Count(0)));
    }
    let deleted = sqlx::query(
        "DELETE FROM courier_messages WHERE queue = ? AND state = ? AND updated_at < ?",
    )
    .bind(queue)
    .bind(state.as_str())
    .bind(to_nanos(older_than))
    .execute(&mut *connection)
    .await?;

    Ok(Ok(Response::Count(deleted.rows_affected())))
}
