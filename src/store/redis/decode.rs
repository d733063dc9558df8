//! Conversions between store types and the values the scripts return.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{Method, StatusCode};

use crate::store::{
    CompletedRecord, FencingToken, Fingerprint, IdempotencyRecord, Lease, Message, MessageState,
    Metadata, Outcome, StoreError, StoreErrorKind, StoredResponse, decode_headers,
};

/// A message as a script returns it: the id, then the hash fields in the
/// scripts' `FIELDS` order, `None` for a missing field.
pub(super) type RawMessage = Vec<Option<Vec<u8>>>;

/// Returns `time` as milliseconds since the Unix epoch, negative before it.
pub(super) fn to_millis(time: SystemTime) -> i64 {
    match time.duration_since(UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_millis()).unwrap_or(i64::MAX),
        Err(before) => i64::try_from(before.duration().as_millis()).map_or(i64::MIN, |ms| -ms),
    }
}

/// Returns milliseconds since the Unix epoch as a time.
pub(super) fn from_millis(millis: i64) -> SystemTime {
    let magnitude = Duration::from_millis(millis.unsigned_abs());
    if millis >= 0 {
        UNIX_EPOCH + magnitude
    } else {
        UNIX_EPOCH - magnitude
    }
}

/// Returns `duration` in whole milliseconds, at least 1 so that a short
/// lease or time to live is never "no expiry", and at most 2^52 so that
/// Lua's doubles add it exactly.
pub(super) fn duration_millis(duration: Duration) -> u64 {
    let millis = u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
    millis.clamp(1, 1 << 52)
}

/// Decodes a message, with its lease when it is in flight.
pub(super) fn decode_message(raw: RawMessage) -> Result<(Message, Option<Lease>), StoreError> {
    let mut fields = raw.into_iter();
    let mut next = || fields.next().flatten();
    let id = text(next(), "id")?.parse().map_err(|_| corrupt("id"))?;
    let queue = text(next(), "queue")?;
    let destination = text(next(), "destination")?;
    let method = Method::from_bytes(&required(next(), "method")?).map_err(|_| corrupt("method"))?;
    let path_and_query = text(next(), "path")?;
    let headers = decode_headers(&required(next(), "headers")?)?;
    let body = Bytes::from(required(next(), "body")?);
    let metadata: Metadata =
        serde_json::from_slice(&required(next(), "metadata")?).map_err(|_| corrupt("metadata"))?;
    let state = MessageState::parse(&text(next(), "state")?).ok_or_else(|| corrupt("state"))?;
    let attempts = number::<u32>(next(), "attempts")?;
    let token = number::<u64>(next(), "token")?;
    let available_at = from_millis(number(next(), "available_at")?);
    let created_at = from_millis(number(next(), "created_at")?);
    let updated_at = from_millis(number(next(), "updated_at")?);
    let last_error = next().map(|bytes| String::from_utf8_lossy(&bytes).into_owned());
    let outcome = decode_outcome(next(), next())?;
    let lease_expires = next();

    let message = Message {
        id,
        queue,
        destination,
        method,
        path_and_query,
        headers,
        body,
        metadata,
        state,
        attempts,
        available_at,
        created_at,
        updated_at,
        last_error,
        outcome,
    };
    let lease = match lease_expires {
        Some(expires) if state == MessageState::InFlight => Some(Lease {
            id,
            token: FencingToken(token),
            expires_at: from_millis(number(Some(expires), "lease_expires_at")?),
        }),
        _ => None,
    };
    Ok((message, lease))
}

fn decode_outcome(
    status: Option<Vec<u8>>,
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

/// Decodes a record as `RECORD_FIELDS` lists it.
pub(super) fn decode_record(raw: Vec<Option<Vec<u8>>>) -> Result<IdempotencyRecord, StoreError> {
    let mut fields = raw.into_iter();
    let mut next = || fields.next().flatten();
    let state = text(next(), "record state")?;
    let fingerprint = Fingerprint(
        required(next(), "fingerprint")?
            .try_into()
            .map_err(|_| corrupt("fingerprint"))?,
    );
    let token = FencingToken(number(next(), "token")?);
    let expires_at = from_millis(number(next(), "expires_at")?);

    match state.as_str() {
        "in_progress" => Ok(IdempotencyRecord::InProgress {
            fingerprint,
            token,
            expires_at,
        }),
        "completed" => {
            let response = StoredResponse {
                status: decode_status(required(next(), "status")?)?,
                headers: decode_headers(&required(next(), "headers")?)?,
                body: Bytes::from(required(next(), "body")?),
            };
            Ok(IdempotencyRecord::Completed(CompletedRecord {
                fingerprint,
                response,
                expires_at,
            }))
        }
        _ => Err(corrupt("record state")),
    }
}

fn decode_status(bytes: Vec<u8>) -> Result<StatusCode, StoreError> {
    StatusCode::from_bytes(&bytes).map_err(|_| corrupt("status"))
}

pub(super) fn number<T: std::str::FromStr>(
    value: Option<Vec<u8>>,
    field: &str,
) -> Result<T, StoreError> {
    text(value, field)?.parse().map_err(|_| corrupt(field))
}

fn text(value: Option<Vec<u8>>, field: &str) -> Result<String, StoreError> {
    String::from_utf8(required(value, field)?).map_err(|_| corrupt(field))
}

fn required(value: Option<Vec<u8>>, field: &str) -> Result<Vec<u8>, StoreError> {
    value.ok_or_else(|| corrupt(field))
}

fn corrupt(field: &str) -> StoreError {
    StoreError::new(
        StoreErrorKind::Corrupt,
        format!("missing or invalid {field} in a redis value"),
    )
}
