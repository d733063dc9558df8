//! The read statements of the message queue, run on the read pool.

use sqlx::SqlitePool;

use super::rows::{self, MESSAGE_COLUMNS, id_bytes, unavailable};
use crate::MessageId;
use crate::store::{Message, MessageState, QueueCounts, StoreError, StoreErrorKind};

pub(super) async fn get(pool: &SqlitePool, id: MessageId) -> Result<Option<Message>, StoreError> {
    let statement = format!("SELECT {MESSAGE_COLUMNS} FROM courier_messages WHERE id = ?");
    let row = sqlx::query(sqlx::AssertSqlSafe(statement))
        .bind(id_bytes(id))
        .fetch_optional(pool)
        .await
        .map_err(unavailable)?;
    row.as_ref().map(rows::message).transpose()
}

pub(super) async fn counts(pool: &SqlitePool, queue: &str) -> Result<QueueCounts, StoreError> {
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT state, count(*) FROM courier_messages WHERE queue = ? GROUP BY state",
    )
    .bind(queue)
    .fetch_all(pool)
    .await
    .map_err(unavailable)?;

    let mut counts = QueueCounts::default();
    for (state, count) in rows {
        let state = MessageState::parse(&state).ok_or_else(|| {
            StoreError::new(
                StoreErrorKind::Corrupt,
                format!("unknown message state {state:?}"),
            )
        })?;
        *counts.get_mut(state) = u64::try_from(count).unwrap_or(0);
    }
    Ok(counts)
}

pub(super) async fn list(
    pool: &SqlitePool,
    queue: &str,
    state: MessageState,
    limit: usize,
    after: Option<MessageId>,
) -> Result<Vec<Message>, StoreError> {
    // An empty blob sorts before every 16-byte id, so "no cursor" needs no
    // second statement shape.
    let after = after.map(id_bytes).unwrap_or_default();
    let statement = format!(
        "SELECT {MESSAGE_COLUMNS} FROM courier_messages \
         WHERE queue = ? AND state = ? AND id > ? ORDER BY id LIMIT ?"
    );
    let rows = sqlx::query(sqlx::AssertSqlSafe(statement))
        .bind(queue)
        .bind(state.as_str())
        .bind(after)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(pool)
        .await
        .map_err(unavailable)?;
    rows.iter().map(rows::message).collect()
}
