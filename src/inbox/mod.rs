//! The idempotent consumer (inbox): applying a command's effect once,
//! although workers deliver it at least once.
//!
//! A worker that dies while running a command leaves the command to run
//! again once its lease ends, so a handler can see the same command twice.
//! A handler whose effect must not apply twice (inserting an order,
//! moving money, sending a mail through an outbox) calls [`record`] with
//! the command id inside the database transaction that makes its writes.
//! The id goes into the crate's `courier_inbox` table in that same
//! transaction, so either both the effect and the id are committed, or
//! neither is. `record` returns `false` when the id was already recorded:
//! the handler then skips its writes and responds as it did the first time.
//!
//! A handler does not need the inbox when its effect is idempotent by
//! itself, such as setting a field to a value, deleting by id, or an
//! upsert keyed by the command's own data.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use sqlx::sqlite::SqlitePoolOptions;
//! use tower_courier::inbox;
//!
//! let pool = SqlitePoolOptions::new().max_connections(1).connect("sqlite::memory:").await?;
//! inbox::ensure_schema(&mut *pool.acquire().await?).await?;
//!
//! for _delivery in 0..2 {
//!     let mut tx = pool.begin().await?;
//!     if inbox::record(&mut *tx, "orders", "01936f4e-8a1b-7c2d-9e3f-0123456789ab").await? {
//!         sqlx::query("CREATE TABLE IF NOT EXISTS effects (n INTEGER)").execute(&mut *tx).await?;
//!         sqlx::query("INSERT INTO effects VALUES (1)").execute(&mut *tx).await?;
//!     }
//!     tx.commit().await?;
//! }
//!
//! let (count,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM effects").fetch_one(&pool).await?;
//! assert_eq!(count, 1);
//! # Ok(())
//! # }
//! ```
//!
//! The functions take any connection of a supported database: a
//! `&mut *transaction` of SQLite (feature `sqlite`) or PostgreSQL (feature
//! `postgres`). On SQLite, begin the transaction with `BEGIN IMMEDIATE`
//! (or keep one writer) when several processes write, so that the write
//! lock is taken at the start rather than failing with "database is
//! locked" at the first write.

use std::error::Error;
use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use futures_util::future::BoxFuture;

#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "sqlite")]
mod sqlite;

/// The table that keeps recorded message keys.
pub const TABLE: &str = "courier_inbox";

/// A database connection the inbox can record in: `SqliteConnection` or
/// `PgConnection`, usually reached as `&mut *transaction`.
///
/// The trait is sealed: the crate implements it for the databases it
/// supports.
pub trait InboxConnection: sealed::Sealed + Send {
    /// Creates the inbox table if it does not exist.
    fn ensure_schema(&mut self) -> BoxFuture<'_, Result<(), InboxError>>;

    /// Inserts (`consumer`, `message_key`) unless present, recorded at
    /// `at` (Unix seconds), and returns `true` if it was inserted.
    fn insert_key<'a>(
        &'a mut self,
        consumer: &'a str,
        message_key: &'a str,
        at: i64,
    ) -> BoxFuture<'a, Result<bool, InboxError>>;

    /// Deletes keys recorded before `before` (Unix seconds) and returns how
    /// many were deleted.
    fn delete_before(&mut self, before: i64) -> BoxFuture<'_, Result<u64, InboxError>>;
}

pub(crate) mod sealed {
    pub trait Sealed {}
}

/// Creates the `courier_inbox` table if it does not exist.
///
/// # Errors
///
/// Fails when the database rejects the statement.
pub async fn ensure_schema<C: InboxConnection + ?Sized>(conn: &mut C) -> Result<(), InboxError> {
    conn.ensure_schema().await
}

/// Records that `consumer` handled the message `message_key` (such as a
/// command id), and returns `true` if this is the first time, so the
/// caller applies its effect, or `false` if it was already recorded.
///
/// Call it inside the transaction that makes the handler's writes: the
/// record is committed or rolled back with them.
///
/// # Errors
///
/// Fails when the database rejects the insert; the caller then rolls its
/// transaction back and responds with a 5xx so that the command is retried.
pub async fn record<C: InboxConnection + ?Sized>(
    conn: &mut C,
    consumer: &str,
    message_key: &str,
) -> Result<bool, InboxError> {
    conn.insert_key(consumer, message_key, unix_seconds(SystemTime::now()))
        .await
}

/// Deletes keys recorded before `before`, and returns how many were
/// deleted.
///
/// Keep keys longer than a command can be delivered again: at least the
/// queue's maximum age plus the lease. A command delivered after its key
/// was purged applies its effect again.
///
/// # Errors
///
/// Fails when the database rejects the delete.
pub async fn purge_before<C: InboxConnection + ?Sized>(
    conn: &mut C,
    before: SystemTime,
) -> Result<u64, InboxError> {
    conn.delete_before(unix_seconds(before)).await
}

fn unix_seconds(time: SystemTime) -> i64 {
    let seconds = time
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs());
    i64::try_from(seconds).unwrap_or(i64::MAX)
}

/// The error returned by the inbox functions.
#[derive(Debug)]
pub struct InboxError {
    operation: &'static str,
    source: Box<dyn Error + Send + Sync>,
}

impl InboxError {
    #[allow(dead_code)]
    pub(crate) fn new(operation: &'static str, source: impl Error + Send + Sync + 'static) -> Self {
        Self {
            operation,
            source: Box::new(source),
        }
    }
}

impl fmt::Display for InboxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "failed to {} in the inbox table", self.operation)
    }
}

impl Error for InboxError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        Some(self.source.as_ref())
    }
}
