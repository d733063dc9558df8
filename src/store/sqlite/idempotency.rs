//! The statements of idempotency records. Writes run on the writer task,
//! [`get`] on the read pool.

use std::time::SystemTime;

use bytes::Bytes;
use http::StatusCode;
use sqlx::sqlite::SqliteRow;
use sqlx::{SqliteConnection, SqlitePool};

use super::rows::{self, from_nanos, to_nanos, unavailable};
use super::writer::{Applied, Response};
use crate::store::{
    ClaimOutcome, CompletedRecord, FencingToken, Fingerprint, IdempotencyRecord, StoreError,
    StoreErrorKind, StoredResponse, decode_headers, encode_headers,
};

pub(super) async fn claim(
    connection: &mut SqliteConnection,
    digest: &str,
    fingerprint: Fingerprint,
    expires_at: SystemTime,
    now: SystemTime,
) -> Applied {
    // Inserts a claim, or takes over a record whose lease or retention
    // ended; a live record makes the statement return no row.
    let token: Option<i64> = sqlx::query_scalar(
        "INSERT INTO courier_idempotency (key_digest, fingerprint, token, expires_at, completed) \
         VALUES (?, ?, (SELECT value + 1 FROM courier_counters WHERE name = 'idempotency_token'), ?, 0) \
         ON CONFLICT (key_digest) DO UPDATE SET fingerprint = excluded.fingerprint, \
             token = excluded.token, expires_at = excluded.expires_at, completed = 0, \
             status = NULL, headers = NULL, body = NULL \
         WHERE courier_idempotency.expires_at <= ? \
         RETURNING token",
    )
    .bind(digest)
    .bind(fingerprint.0.to_vec())
    .bind(to_nanos(expires_at))
    .bind(to_nanos(now))
    .fetch_optional(&mut *connection)
    .await?;

    if let Some(token) = token {
        sqlx::query("UPDATE courier_counters SET value = ? WHERE name = 'idempotency_token'")
            .bind(token)
            .execute(&mut *connection)
            .await?;
        let outcome = ClaimOutcome::Claimed(FencingToken(token as u64));
        return Ok(Ok(Response::Idempotency(outcome)));
    }

    let row = sqlx::query(select_statement())
        .bind(digest)
        .fetch_one(&mut *connection)
        .await?;
    Ok(record(&row).map(|record| {
        Response::Idempotency(match record {
            IdempotencyRecord::InProgress { fingerprint, .. } => {
                ClaimOutcome::InProgress { fingerprint }
            }
            IdempotencyRecord::Completed(completed) => ClaimOutcome::Completed(completed),
        })
    }))
}

fn select_statement() -> &'static str {
    "SELECT fingerprint, token, expires_at, completed, status, headers, body \
     FROM courier_idempotency WHERE key_digest = ?"
}

fn lease_lost(token: FencingToken) -> StoreError {
    StoreError::lease_lost(format!(
        "idempotency claim with token {} is no longer held",
        token.0
    ))
}

fn done_or_lost(rows_affected: u64, token: FencingToken) -> Result<Response, StoreError> {
    if rows_affected == 0 {
        return Err(lease_lost(token));
    }
    Ok(Response::Done)
}

pub(super) async fn renew(
    connection: &mut SqliteConnection,
    digest: &str,
    token: FencingToken,
    expires_at: SystemTime,
) -> Applied {
    let updated = sqlx::query(
        "UPDATE courier_idempotency SET expires_at = ? \
         WHERE key_digest = ? AND token = ? AND completed = 0",
    )
    .bind(to_nanos(expires_at))
    .bind(digest)
    .bind(token.0 as i64)
    .execute(&mut *connection)
    .await?;
    Ok(done_or_lost(updated.rows_affected(), token))
}

pub(super) async fn complete(
    connection: &mut SqliteConnection,
    digest: &str,
    token: FencingToken,
    response: &StoredResponse,
    expires_at: SystemTime,
) -> Applied {
    let updated = sqlx::query(
        "UPDATE courier_idempotency SET completed = 1, status = ?, headers = ?, body = ?, \
         expires_at = ? WHERE key_digest = ? AND token = ? AND completed = 0",
    )
    .bind(i64::from(response.status.as_u16()))
    .bind(encode_headers(&response.headers))
    .bind(response.body.to_vec())
    .bind(to_nanos(expires_at))
    .bind(digest)
    .bind(token.0 as i64)
    .execute(&mut *connection)
    .await?;
    Ok(done_or_lost(updated.rows_affected(), token))
}

pub(super) async fn release(
    connection: &mut SqliteConnection,
    digest: &str,
    token: FencingToken,
) -> Applied {
    let deleted = sqlx::query(
        "DELETE FROM courier_idempotency WHERE key_digest = ? AND token = ? AND completed = 0",
    )
    .bind(digest)
    .bind(token.0 as i64)
    .execute(&mut *connection)
    .await?;
    Ok(done_or_lost(deleted.rows_affected(), token))
}

pub(super) async fn purge_expired(connection: &mut SqliteConnection, now: SystemTime) -> Applied {
    let deleted = sqlx::query("DELETE FROM courier_idempotency WHERE expires_at <= ?")
        .bind(to_nanos(now))
        .execute(&mut *connection)
        .await?;
    Ok(Ok(Response::Count(deleted.rows_affected())))
}

/// Returns the live record of `digest`, read from the pool.
pub(super) async fn get(
    pool: &SqlitePool,
    digest: &str,
    now: SystemTime,
) -> Result<Option<IdempotencyRecord>, StoreError> {
    let row = sqlx::query(
        "SELECT fingerprint, token, expires_at, completed, status, headers, body \
         FROM courier_idempotency WHERE key_digest = ? AND expires_at > ?",
    )
    .bind(digest)
    .bind(to_nanos(now))
    .fetch_optional(pool)
    .await
    .map_err(unavailable)?;
    row.as_ref().map(record).transpose()
}

fn record(row: &SqliteRow) -> Result<IdempotencyRecord, StoreError> {
    let fingerprint: Vec<u8> = rows::get(row, "fingerprint")?;
    let fingerprint = Fingerprint(fingerprint.try_into().map_err(|_| {
        StoreError::new(
            StoreErrorKind::Corrupt,
            "stored fingerprint is not 32 bytes",
        )
    })?);
    let expires_at = from_nanos(rows::get(row, "expires_at")?);

    if rows::get::<i64>(row, "completed")? == 0 {
        let token: i64 = rows::get(row, "token")?;
        return Ok(IdempotencyRecord::InProgress {
            fingerprint,
            token: FencingToken(token as u64),
            expires_at,
        });
    }

    let status: i64 = rows::get(row, "status")?;
    let headers: Vec<u8> = rows::get(row, "headers")?;
    let body: Vec<u8> = rows::get(row, "body")?;
    let status = u16::try_from(status)
        .ok()
        .and_then(|status| StatusCode::from_u16(status).ok())
        .ok_or_else(|| StoreError::new(StoreErrorKind::Corrupt, "stored status is invalid"))?;
    Ok(IdempotencyRecord::Completed(CompletedRecord {
        fingerprint,
        response: StoredResponse {
            status,
            headers: decode_headers(&headers)?,
            body: Bytes::from(body),
        },
        expires_at,
    }))
}
