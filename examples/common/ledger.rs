//! The receiver's own table: the commands its handler applied.
//!
//! With a `sqlite:PATH` store the table lives in the same database file as
//! the crate's tables, and each command is written in one transaction with
//! its inbox record. A crash at any point leaves either both or neither,
//! so a command is applied at most once. With a `postgres://` store (feature `postgres`) the table
//! lives in the same PostgreSQL database, written the same way. With the
//! `memory` and `redis://` stores the records are kept in memory and
//! vanish with the process.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use serde::Serialize;
use sqlx::SqlitePool;
use tower_courier::BoxError;
use tower_courier::inbox;

/// The inbox consumer name of the receiver's command handler.
const CONSUMER: &str = "receiver-commands";

// No unique index on (principal, idempotency_key), on purpose: a command
// applied twice shows as `handled > distinct` in the stats.
const SCHEMA: [&str; 3] = [
    "CREATE TABLE IF NOT EXISTS receiver_commands (
        principal TEXT NOT NULL,
        idempotency_key TEXT NOT NULL,
        name TEXT NOT NULL,
        body BLOB NOT NULL,
        handled_at INTEGER NOT NULL
    )",
    "CREATE TABLE IF NOT EXISTS receiver_runs (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        runs INTEGER NOT NULL
    )",
    "INSERT INTO receiver_runs (id, runs) VALUES (1, 0) ON CONFLICT DO NOTHING",
];

/// One command as the handler received it.
#[derive(Debug, Clone)]
pub struct Command {
    /// The key id that signed the request.
    pub principal: String,
    /// The request's `Idempotency-Key`.
    pub idempotency_key: String,
    /// The `{name}` of `/commands/{name}`.
    pub name: String,
    /// The request body.
    pub body: Vec<u8>,
    /// The key the inbox deduplicates by.
    pub inbox_key: String,
}

/// The receiver's counters, as `GET /stats` returns them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Stats {
    /// Handler invocations that reached the database.
    pub runs: u64,
    /// Commands whose effect the handler applied.
    pub handled: u64,
    /// Distinct (principal, Idempotency-Key) pairs among the handled.
    pub distinct: u64,
}

/// The store of the commands that the receiver applied.
#[derive(Debug, Clone)]
pub enum Ledger {
    /// A table in the store's SQLite file.
    Sqlite(SqlitePool),
    /// A table in the store's PostgreSQL database.
    #[cfg(feature = "postgres")]
    Postgres(sqlx::PgPool),
    /// Records in memory, for the `memory` store.
    Memory(Arc<Mutex<MemoryLedger>>),
}

/// The in-memory records of [`Ledger::Memory`].
#[derive(Debug, Default)]
pub struct MemoryLedger {
    runs: u64,
    inbox: HashSet<String>,
    applied: Vec<(String, String)>,
}

impl Ledger {
    /// Creates the tables in `pool`'s database (if missing) and returns a
    /// ledger that writes there.
    ///
    /// # Errors
    ///
    /// Fails when the database rejects the schema.
    pub async fn sqlite(pool: SqlitePool) -> Result<Self, BoxError> {
        let mut connection = pool.acquire().await?;
        inbox::ensure_schema(&mut *connection).await?;
        for statement in SCHEMA {
            sqlx::query(statement).execute(&mut *connection).await?;
        }
        Ok(Self::Sqlite(pool.clone()))
    }

    /// Creates the tables in `pool`'s database (if missing) and returns a
    /// ledger that writes there.
    ///
    /// # Errors
    ///
    /// Fails when the database rejects the schema.
    #[cfg(feature = "postgres")]
    pub async fn postgres(pool: sqlx::PgPool) -> Result<Self, BoxError> {
        postgres::create_schema(&pool).await?;
        Ok(Self::Postgres(pool))
    }

    /// Creates an empty in-memory ledger.
    pub fn memory() -> Self {
        Self::Memory(Arc::default())
    }

    /// Counts one handler run and applies `command` unless the inbox has
    /// its key already. Returns whether the effect was applied now.
    ///
    /// # Errors
    ///
    /// Fails when the database fails; nothing is written then.
    pub async fn apply(&self, command: &Command) -> Result<bool, BoxError> {
        match self {
            Self::Sqlite(pool) => apply_sqlite(pool, command).await,
            #[cfg(feature = "postgres")]
            Self::Postgres(pool) => postgres::apply(pool, command).await,
            Self::Memory(ledger) => {
                let mut ledger = ledger
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                ledger.runs += 1;
                let first = ledger.inbox.insert(command.inbox_key.clone());
                if first {
                    let pair = (command.principal.clone(), command.idempotency_key.clone());
                    ledger.applied.push(pair);
                }
                Ok(first)
            }
        }
    }

    /// Returns the current counters.
    ///
    /// # Errors
    ///
    /// Fails when the database fails.
    pub async fn stats(&self) -> Result<Stats, BoxError> {
        match self {
            Self::Sqlite(pool) => stats_sqlite(pool).await,
            #[cfg(feature = "postgres")]
            Self::Postgres(pool) => postgres::stats(pool).await,
            Self::Memory(ledger) => {
                let ledger = ledger
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                let distinct: HashSet<_> = ledger.applied.iter().collect();
                Ok(Stats {
                    runs: ledger.runs,
                    handled: ledger.applied.len() as u64,
                    distinct: distinct.len() as u64,
                })
            }
        }
    }
}

/// Counts the run, records the inbox key and, the first time, the
/// command, all in one transaction.
async fn apply_sqlite(pool: &SqlitePool, command: &Command) -> Result<bool, BoxError> {
    // IMMEDIATE takes the write lock at BEGIN, so the transaction waits for
    // the store's writer instead of failing at its first write.
    let mut transaction = pool.begin_with("BEGIN IMMEDIATE").await?;
    sqlx::query("UPDATE receiver_runs SET runs = runs + 1 WHERE id = 1")
        .execute(&mut *transaction)
        .await?;

    let first = inbox::record(&mut *transaction, CONSUMER, &command.inbox_key).await?;
    if first {
        sqlx::query(
            "INSERT INTO receiver_commands (principal, idempotency_key, name, body, handled_at)
             VALUES (?1, ?2, ?3, ?4, unixepoch())",
        )
        .bind(&command.principal)
        .bind(&command.idempotency_key)
        .bind(&command.name)
        .bind(&command.body)
        .execute(&mut *transaction)
        .await?;
    }

    transaction.commit().await?;
    Ok(first)
}

async fn stats_sqlite(pool: &SqlitePool) -> Result<Stats, BoxError> {
    let (runs,): (i64,) = sqlx::query_as("SELECT runs FROM receiver_runs WHERE id = 1")
        .fetch_one(pool)
        .await?;
    let (handled,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM receiver_commands")
        .fetch_one(pool)
        .await?;
    let (distinct,): (i64,) = sqlx::query_as(
        "SELECT COUNT(*) FROM (SELECT DISTINCT principal, idempotency_key FROM receiver_commands)",
    )
    .fetch_one(pool)
    .await?;
    Ok(Stats {
        runs: runs.try_into()?,
        handled: handled.try_into()?,
        distinct: distinct.try_into()?,
    })
}

/// The PostgreSQL table, for receivers that share one database.
#[cfg(feature = "postgres")]
mod postgres {
    use sqlx::PgPool;
    use tower_courier::BoxError;
    use tower_courier::inbox;

    use super::{CONSUMER, Command, Stats};

    /// Any constant works: it only has to be the same in every receiver.
    const SCHEMA_LOCK: i64 = 0x7265_6365_6976_6572;

    const SCHEMA: [&str; 3] = [
        "CREATE TABLE IF NOT EXISTS receiver_commands (
            principal TEXT NOT NULL,
            idempotency_key TEXT NOT NULL,
            name TEXT NOT NULL,
            body BYTEA NOT NULL,
            handled_at TIMESTAMPTZ NOT NULL DEFAULT now()
        )",
        "CREATE TABLE IF NOT EXISTS receiver_runs (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            runs BIGINT NOT NULL
        )",
        "INSERT INTO receiver_runs (id, runs) VALUES (1, 0) ON CONFLICT DO NOTHING",
    ];

    /// Creates the tables under an advisory lock, because concurrent
    /// `CREATE TABLE IF NOT EXISTS` statements can fail on PostgreSQL.
    pub(super) async fn create_schema(pool: &PgPool) -> Result<(), BoxError> {
        let mut transaction = pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(SCHEMA_LOCK)
            .execute(&mut *transaction)
            .await?;
        inbox::ensure_schema(&mut *transaction).await?;
        for statement in SCHEMA {
            sqlx::query(statement).execute(&mut *transaction).await?;
        }
        transaction.commit().await?;
        Ok(())
    }

    pub(super) async fn apply(pool: &PgPool, command: &Command) -> Result<bool, BoxError> {
        let mut transaction = pool.begin().await?;
        sqlx::query("UPDATE receiver_runs SET runs = runs + 1 WHERE id = 1")
            .execute(&mut *transaction)
            .await?;

        let first = inbox::record(&mut *transaction, CONSUMER, &command.inbox_key).await?;
        if first {
            sqlx::query(
                "INSERT INTO receiver_commands (principal, idempotency_key, name, body)
                 VALUES ($1, $2, $3, $4)",
            )
            .bind(&command.principal)
            .bind(&command.idempotency_key)
            .bind(&command.name)
            .bind(&command.body)
            .execute(&mut *transaction)
            .await?;
        }

        transaction.commit().await?;
        Ok(first)
    }

    pub(super) async fn stats(pool: &PgPool) -> Result<Stats, BoxError> {
        let (runs, handled, distinct): (i64, i64, i64) = sqlx::query_as(
            "SELECT (SELECT runs FROM receiver_runs WHERE id = 1),
                    (SELECT COUNT(*) FROM receiver_commands),
                    (SELECT COUNT(*) FROM (SELECT DISTINCT principal, idempotency_key
                                           FROM receiver_commands) AS pairs)",
        )
        .fetch_one(pool)
        .await?;
        Ok(Stats {
            runs: runs.try_into()?,
            handled: handled.try_into()?,
            distinct: distinct.try_into()?,
        })
    }
}
