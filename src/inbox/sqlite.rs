use futures_util::future::BoxFuture;
use sqlx::SqliteConnection;

use super::{InboxConnection, InboxError, sealed};

const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS courier_inbox (
    consumer TEXT NOT NULL,
    message_key TEXT NOT NULL,
    recorded_at INTEGER NOT NULL,
    PRIMARY KEY (consumer, message_key)
)";

const INSERT: &str = "INSERT INTO courier_inbox (consumer, message_key, recorded_at)
    VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING";

const DELETE_BEFORE: &str = "DELETE FROM courier_inbox WHERE recorded_at < ?1";

impl sealed::Sealed for SqliteConnection {}

impl InboxConnection for SqliteConnection {
    fn ensure_schema(&mut self) -> BoxFuture<'_, Result<(), InboxError>> {
        Box::pin(async move {
            sqlx::query(SCHEMA)
                .execute(&mut *self)
                .await
                .map_err(|error| InboxError::new("create", error))?;
            Ok(())
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
