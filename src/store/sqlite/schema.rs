//! Creates and migrates the tables of the SQLite store.
//!
//! The crate keeps its own version table, `courier_schema_version`, rather
//! than use sqlx's migrator, for three reasons. The schema is a few
//! statements compiled into the crate. The version row is read and written
//! in the same `BEGIN IMMEDIATE` transaction as the migration, so two
//! processes opening one file cannot both migrate. And no
//! `_sqlx_migrations` table appears in a database that the user may share
//! with their own sqlx migrations.

use sqlx::{Connection, SqliteConnection};

use super::rows::unavailable;
use crate::store::{StoreError, StoreErrorKind};

/// The schema version this crate writes and reads.
pub(super) const VERSION: i64 = 1;

/// The statements that take an empty database to version 1.
const VERSION_1: &[&str] = &[
    "CREATE TABLE courier_messages (
        id BLOB NOT NULL PRIMARY KEY,
        queue TEXT NOT NULL,
        destination TEXT NOT NULL,
        method TEXT NOT NULL,
        path_and_query TEXT NOT NULL,
        headers BLOB NOT NULL,
        body BLOB NOT NULL,
        metadata TEXT NOT NULL,
        state TEXT NOT NULL,
        attempts INTEGER NOT NULL,
        token INTEGER NOT NULL,
        available_at INTEGER NOT NULL,
        due_at INTEGER,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL,
        last_error TEXT,
        outcome_status INTEGER,
        outcome_body BLOB
    )",
    // `due_at` is `available_at` for pending messages, the lease expiry for
    // in-flight ones and NULL for finished ones, so one index range finds
    // every claimable message, expired leases included.
    "CREATE INDEX courier_messages_due ON courier_messages (queue, due_at)
        WHERE due_at IS NOT NULL",
    "CREATE INDEX courier_messages_state ON courier_messages (queue, state, id)",
    "CREATE TABLE courier_idempotency (
        key_digest TEXT NOT NULL PRIMARY KEY,
        fingerprint BLOB NOT NULL,
        token INTEGER NOT NULL,
        expires_at INTEGER NOT NULL,
        completed INTEGER NOT NULL,
        status INTEGER,
        headers BLOB,
        body BLOB
    )",
    "CREATE INDEX courier_idempotency_expiry ON courier_idempotency (expires_at)",
    "CREATE TABLE courier_replay (
        kid TEXT NOT NULL,
        nonce TEXT NOT NULL,
        expires_at INTEGER NOT NULL,
        PRIMARY KEY (kid, nonce)
    )",
    "CREATE INDEX courier_replay_expiry ON courier_replay (expires_at)",
    // Idempotency tokens come from one counter so that a claim taken
    // after a release or a purge never reuses an earlier token.
    "CREATE TABLE courier_counters (name TEXT NOT NULL PRIMARY KEY, value INTEGER NOT NULL)",
    "INSERT INTO courier_counters (name, value) VALUES ('idempotency_token', 0)",
];

/// Brings the database on `connection` to [`VERSION`].
///
/// # Errors
///
/// Fails with [`StoreErrorKind::Invalid`] if the file was written by a
/// newer version of the crate, and with `Unavailable` on I/O errors.
pub(super) async fn migrate(connection: &mut SqliteConnection) -> Result<(), StoreError> {
    let mut transaction = connection
        .begin_with("BEGIN IMMEDIATE")
        .await
        .map_err(unavailable)?;

    sqlx::query("CREATE TABLE IF NOT EXISTS courier_schema_version (version INTEGER NOT NULL)")
        .execute(&mut *transaction)
        .await
        .map_err(unavailable)?;
    let current: Option<i64> =
        sqlx::query_scalar("SELECT max(version) FROM courier_schema_version")
            .fetch_one(&mut *transaction)
            .await
            .map_err(unavailable)?;
    let current = current.unwrap_or(0);

    if current > VERSION {
        return Err(StoreError::new(
            StoreErrorKind::Invalid,
            format!(
                "database schema version {current} is newer than this crate's version {VERSION}; upgrade tower-courier"
            ),
        ));
    }
    if current < 1 {
        for statement in VERSION_1 {
            sqlx::query(*statement)
                .execute(&mut *transaction)
                .await
                .map_err(unavailable)?;
        }
    }

    sqlx::query("DELETE FROM courier_schema_version")
        .execute(&mut *transaction)
        .await
        .map_err(unavailable)?;
    sqlx::query("INSERT INTO courier_schema_version (version) VALUES (?)")
        .bind(VERSION)
        .execute(&mut *transaction)
        .await
        .map_err(unavailable)?;
    transaction.commit().await.map_err(unavailable)
}
