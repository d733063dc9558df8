//! Conversions between store types and PostgreSQL rows.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{Method, StatusCode};
use sqlx::Row;
use sqlx::postgres::PgRow;

use super::query_failed;
use crate::MessageId;
use crate::store::{
    FencingToken, Lease, Message, MessageState, Metadata, Outcome, StoreError, StoreErrorKind,
    decode_headers,
};

/// Returns `time` as microseconds since the Unix epoch, negative before it.
pub(super) fn to_micros(time: SystemTime) -> i64 {
    match time.duration_since(UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_micros()).unwrap_or(i64::MAX),
        Err(before) => i64::try_from(before.duration().as_micros()).map_or(i64::MIN, |us| -us),
    }
}

/// Returns microseconds since the Unix epoch as a time.
pub(super) fn from_micros(micros: i64) -> SystemTime {
    let magnitude = Duration::from_micros(micros.unsigned_abs());
    if micros >= 0 {
        UNIX_EPOCH + magnitude
    } else {
        UNIX_EPOCH - magnitude
    }
}

/// Returns `duration` in whole microseconds, saturating.
pub(super) fn duration_micros(duration: Duration) -> i64 {
    i64::try_from(duration.as_micros()).unwrap_or(i64::MAX)
}

/// Decodes a row of `MESSAGE_COLUMNS`, with the lease it carries when the
/// message is in flight.
pub(super) fn decode_message(row: &PgRow) -> Result<(Message, Option<Lease>), StoreError> {
    let fail = |error| query_failed("decode a message", error);
    let id = parse_id(&row.try_get::<String, _>(0).map_err(fail)?)?;
    let method: String = row.try_get(3).map_err(fail)?;
    let headers: Vec<u8> = row.try_get(5).map_err(fail)?;
    let body: Vec<u8> = row.try_get(6).map_err(fail)?;
    let metadata: String = row.try_get(7).map_err(fail)?;
    let state: String = row.try_get(8).map_err(fail)?;
    let attempts: i32 = row.try_get(9).map_err(fail)?;
    let token: i64 = row.try_get(10).map_err(fail)?;
    let outcome_status: Option<i16> = row.try_get(15).map_err(fail)?;
    let outcome_body: Option<Vec<u8>> = row.try_get(16).map_err(fail)?;
    let lease_expires: Option<i64> = row.try_get(17).map_err(fail)?;

    let message = Message {
        id,
        queue: row.try_get(1).map_err(fail)?,
        destination: row.try_get(2).map_err(fail)?,
        method: Method::from_bytes(method.as_bytes()).map_err(|_| corrupt("method"))?,
        path_and_query: row.try_get(4).map_err(fail)?,
        headers: decode_headers(&headers)?,
        body: Bytes::from(body),
        metadata: serde_json::from_str::<Metadata>(&metadata).map_err(|_| corrupt("metadata"))?,
        state: MessageState::parse(&state).ok_or_else(|| corrupt("state"))?,
        attempts: u32::try_from(attempts).map_err(|_| corrupt("attempts"))?,
        available_at: from_micros(row.try_get(11).map_err(fail)?),
        created_at: from_micros(row.try_get(12).map_err(fail)?),
        updated_at: from_micros(row.try_get(13).map_err(fail)?),
        last_error: row.try_get(14).map_err(fail)?,
        outcome: decode_outcome(outcome_status, outcome_body)?,
    };
    let lease = lease_expires
        .filter(|_| message.state == MessageState::InFlight)
        .map(|expires| Lease {
            id,
            token: FencingToken(token as u64),
            expires_at: from_micros(expires),
        });
    Ok((message, lease))
}

/// Decodes a status and body pair; both are set or neither is.
pub(super) fn decode_outcome(
    status: Option<i16>,
    body: Option<Vec<u8>>,
) -> Result<Option<Outcome>, StoreError> {
    let Some(status) = status else {
        return Ok(None);
    };
    Ok(Some(Outcome {
        status: decode_status(status)?,
        body: Bytes::from(body.unwrap_or_default()),
    }))
}

pub(super) fn decode_status(status: i16) -> Result<StatusCode, StoreError> {
    u16::try_from(status)
        .ok()
        .and_then(|status| StatusCode::from_u16(status).ok())
        .ok_or_else(|| corrupt("status"))
}

pub(super) fn parse_id(text: &str) -> Result<MessageId, StoreError> {
    text.parse().map_err(|_| corrupt("id"))
}

pub(super) fn corrupt(field: &str) -> StoreError {
    StoreError::new(
        StoreErrorKind::Corrupt,
        format!("invalid {field} in a postgres row"),
    )
}

/// Returns the error for a write whose lease on message `id` with `token`
/// is no longer current.
pub(super) fn lease_lost(id: impl std::fmt::Display, token: u64) -> StoreError {
    StoreError::lease_lost(format!(
        "lease on message {id} with token {token} is no longer current"
    ))
}

/// Removes U+0000, which PostgreSQL `text` cannot hold, from error text.
pub(super) fn strip_nul(text: &str) -> std::borrow::Cow<'_, str> {
    if text.contains('\0') {
        text.replace('\0', "").into()
    } else {
        text.into()
    }
}
