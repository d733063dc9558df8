//! The embedded, durable store: one SQLite file (feature `sqlite`, on by
//! default).
//!
//! [`SqliteStore`] keeps messages, idempotency records and replay-guard
//! nonces in one database file in WAL mode, with `synchronous=FULL` by
//! default: when a write returns, it is on disk. It creates and migrates
//! its tables on open (see the version table `courier_schema_version`).
//!
//! # How writes are applied
//!
//! SQLite allows one writer at a time, so the store has one writer task
//! that owns one connection. Every write (enqueue, claim, complete,
//! idempotency claim, nonce insert) is queued to it; the task applies all
//! queued writes in one `BEGIN IMMEDIATE` transaction and replies to
//! each caller only after `COMMIT`. Under load, one disk sync covers many
//! callers (group commit), and callers never see `database is locked`
//! from each other. Reads (`get`, `counts`, `list`) use a separate pool of
//! connections, which WAL lets run beside the writer.
//!
//! # Why sqlx
//!
//! The driver is [sqlx](https://docs.rs/sqlx) with runtime-checked
//! queries, so the crate builds without a database. sqlx gives SQLite and
//! PostgreSQL the same connection and transaction types
//! (`sqlx::Transaction`, `sqlx::Executor`), so the helpers that enqueue a
//! message inside the caller's own database transaction (the
//! transactional outbox and inbox) have one API for both databases.
//!
//! # Not promised
//!
//! - Several processes may open one file: SQLite serializes their writes,
//!   and each waits up to the busy timeout for the others. Wake-ups reach
//!   only the process that made the write; other processes find messages
//!   by polling.
//! - Durability holds as far as the disk honours its sync requests.
//! - A write whose caller stops waiting (its future dropped) after the
//!   write was queued may still be applied.
//! - Fencing tokens of messages count per message. A message purged and
//!   enqueued again under the same id starts its tokens again.
//!
//! ```
//! use std::time::{Duration, SystemTime};
//!
//! use http::Method;
//! use tower_courier::store::sqlite::SqliteStore;
//! use tower_courier::store::{MessageQueue, NewMessage};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let directory = tempfile::tempdir()?;
//! let store = SqliteStore::open(directory.path().join("courier.db")).await?;
//! let message = NewMessage::new("outbox", "http://127.0.0.1:8080", Method::POST, "/orders", SystemTime::now());
//! assert_eq!(store.enqueue(vec![message]).await?, [true]);
//!
//! let claimed = MessageQueue::claim(&store, "outbox", 10, Duration::from_secs(30)).await?;
//! assert_eq!(claimed.len(), 1);
//! # Ok(())
//! # }
//! ```

mod enqueue;
mod idempotency;
mod options;
mod queue;
mod read;
mod replay;
mod rows;
mod schema;
mod store;
mod writer;

pub use options::{SqliteOptions, Synchronous};
pub use store::SqliteStore;

#[cfg(test)]
mod tests;
