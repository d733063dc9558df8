//! Conversions between stored rows and the store types.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{Method, StatusCode};
use sqlx::Row;
use sqlx::sqlite::SqliteRow;

use crate::MessageId;
use crate::store::{
    Message, MessageState, Metadata, Outcome, StoreError, StoreErrorKind, decode_headers,
};

/// The columns of `courier_messages` that [`message`] reads, in order.
pub(super) const MESSAGE_COLUMNS: &str = "id, queue, destination, method, path_and_query, \
     headers, body, metadata, state, attempts, token, available_at, due_at, created_at, \
     updated_at, last_error, outcome_status, outcome_body";

/// Returns `time` as nanoseconds since the Unix epoch, the unit of every
/// time column. Times before the epoch store as 0, and times after the
/// year 2262 as the largest value.
pub(super) fn to_nanos(time: SystemTime) -> i64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |since| {
        i64::try_from(since.as_nanos()).unwrap_or(i64::MAX)
    })
}

/// Returns the time that [`to_nanos`] stored as `nanos`.
pub(super) fn from_nanos(nanos: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(u64::try_from(nanos).unwrap_or(0))
}

/// Returns the stored form of a message id: its 16 UUID bytes.
pub(super) fn id_bytes(id: MessageId) -> Vec<u8> {
    id.to_bytes().to_vec()
}

/// Reads a message id stored by [`id_bytes`].
pub(super) fn read_id(row: &SqliteRow, column: &str) -> Result<MessageId, StoreError> {
    let bytes: Vec<u8> = row.try_get(column).map_err(corrupt)?;
    let bytes: [u8; 16] = bytes.try_into().map_err(|_| {
        StoreError::new(StoreErrorKind::Corrupt, "stored message id is not 16 bytes")
    })?;
    Ok(MessageId::from_bytes(bytes))
}

/// Returns the stored form of message metadata: a JSON object.
pub(super) fn metadata_json(metadata: &Metadata) -> String {
    serde_json::to_string(metadata).expect("a map of strings always serializes")
}

/// Reads a message from a row that selected [`MESSAGE_COLUMNS`].
pub(super) fn message(row: &SqliteRow) -> Result<Message, StoreError> {
    let method: String = get(row, "method")?;
    let state: String = get(row, "state")?;
    let metadata: String = get(row, "metadata")?;
    let headers: Vec<u8> = get(row, "headers")?;
    let body: Vec<u8> = get(row, "body")?;
    let attempts: i64 = get(row, "attempts")?;

    Ok(Message {
        id: read_id(row, "id")?,
        queue: get(row, "queue")?,
        destination: get(row, "destination")?,
        method: Method::from_bytes(method.as_bytes()).map_err(|error| invalid("method", error))?,
        path_and_query: get(row, "path_and_query")?,
        headers: decode_headers(&headers)?,
        body: Bytes::from(body),
        metadata: serde_json::from_str(&metadata).map_err(|error| invalid("metadata", error))?,
        state: MessageState::parse(&state).ok_or_else(|| {
            StoreError::new(
                StoreErrorKind::Corrupt,
                format!("unknown message state {state:?}"),
            )
        })?,
        attempts: u32::try_from(attempts).map_err(|error| invalid("attempts", error))?,
        available_at: from_nanos(get(row, "available_at")?),
        created_at: from_nanos(get(row, "created_at")?),
        updated_at: from_nanos(get(row, "updated_at")?),
        last_error: get(row, "last_error")?,
        outcome: outcome(row)?,
    })
}

fn outcome(row: &SqliteRow) -> Result<Option<Outcome>, StoreError> {
    let Some(status) = get::<Option<i64>>(row, "outcome_status")? else {
        return Ok(None);
    };
    let status = u16::try_from(status)
        .ok()
        .and_then(|status| StatusCode::from_u16(status).ok())
        .ok_or_else(|| StoreError::new(StoreErrorKind::Corrupt, "stored status is invalid"))?;
    let body: Option<Vec<u8>> = get(row, "outcome_body")?;
    Ok(Some(Outcome {
        status,
        body: Bytes::from(body.unwrap_or_default()),
    }))
}

/// Reads one column, reporting a missing or mistyped column as corrupt.
pub(super) fn get<T>(row: &SqliteRow, column: &str) -> Result<T, StoreError>
where
    T: for<'r> sqlx::Decode<'r, sqlx::Sqlite> + sqlx::Type<sqlx::Sqlite>,
{
    row.try_get(column).map_err(corrupt)
}

fn corrupt(error: sqlx::Error) -> StoreError {
    StoreError::new(StoreErrorKind::Corrupt, "stored row is invalid").with_source(error)
}

fn invalid(column: &str, error: impl std::error::Error + Send + Sync + 'static) -> StoreError {
    StoreError::new(
        StoreErrorKind::Corrupt,
        format!("stored {column} is invalid"),
    )
    .with_source(error)
}

/// Maps a driver error to [`StoreErrorKind::Unavailable`].
pub(super) fn unavailable(error: sqlx::Error) -> StoreError {
    StoreError::unavailable("sqlite operation failed", error)
}
