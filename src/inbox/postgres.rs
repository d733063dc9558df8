use futures_util::future::BoxFuture;
use sqlx::PgConnection;

use super::{InboxConnection, InboxError, sealed};

const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS courier_inbox (
    consumer TEXT NOT NULL,
    message_key TEXT NOT NULL,
    recorded_at BIGINT NOT NULL,
    PRIMARY KEY (consumer, message_key)
)";

/// An advisory lock key private to this table: the first eight bytes of
/// "courier_inbox" (`courier_`) read as a big-endian integer.
const LOCK: &str = "SELECT pg_advisory_xact_lock(7165074666424726111)";

const INSERT: &str = "INSERT INTO courier_inbox (consumer, message_key, recorded_at)
    VALUES ($1, $2, $3) ON CONFLICT DO NOTHING";

const DELETE_BEFORE: &str = "DELETE FROM courier_inbox WHERE recorded_at < $1";

impl sealed::Sealed for PgConnection {}

impl InboxConnection for PgConnection {
    fn ensure_schema(&mut self) -> BoxFuture<'_, Result<(), InboxError>> {
        // Two sessions running `CREATE TABLE IF NOT EXISTS` at once can both
        // miss the table and one then fails on a unique index of the
        // catalog, so the creation runs under a transaction-scoped lock.
        Box::pin(async move {
            let create = |error| InboxError::new("create", error);
            let mut tx = sqlx::Connection::begin(&mut *self).await.map_err(create)?;
            sqlx::query(LOCK).execute(&mut *tx).await.map_err(create)?;
            sqlx::query(SCHEMA)
                .execute(&mut *tx)
                .await
                .map_err(create)?;
            tx.commit().await.map_err(create)
        })
    }

    fn insert_key<'a>(
        &'a mut self,
        consumer: &'a str,
        message_key: &'a str,
        at: i64,
    ) -> BoxFuture<'a, Result<bool, InboxError>> {
        Box::pin(async move {
            let result = sqlx::query(INSERT)
                .bind(consumer.to_owned())
                .bind(message_key.to_owned())
                .bind(at)
                .execute(&mut *self)
                .await
                .map_err(|error| InboxError::new("record a key", error))?;
            Ok(result.rows_affected() == 1)
        })
    }

    fn delete_before(&mut self, before: i64) -> BoxFuture<'_, Result<u64, InboxError>> {
        Box::pin(async move {
            let result = sqlx::query(DELETE_BEFORE)
                .bind(before)
                .execute(&mut *self)
                .await
                .map_err(|error| InboxError::new("purge keys", error))?;
            Ok(result.rows_affected())
        })
    }
}
