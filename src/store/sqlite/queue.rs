//! The write statements of the message queue after enqueue, run by the
//! writer task.

use std::sync::OnceLock;
use std::time::SystemTime;

use sqlx::SqliteConnection;

use super::rows::{self, MESSAGE_COLUMNS, id_bytes, to_nanos};
use super::writer::{Applied, Response};
use crate::MessageId;
use crate::store::{Claimed, Lease, MessageState, Outcome, StoreError};

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
