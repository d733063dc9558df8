//! The PostgreSQL store, for several instances sharing one database.
//!
//! [`PostgresStore`] implements [`MessageQueue`], [`IdempotencyStore`] and
//! [`ReplayStore`] on three tables in one schema (`courier` by default),
//! which the store creates and migrates itself when it connects.
//!
//! ```no_run
//! use std::time::{Duration, SystemTime};
//!
//! use http::Method;
//! use tower_courier::store::postgres::{PostgresOptions, PostgresStore};
//! use tower_courier::store::{NewMessage, Store};
//!
//! # async fn example() -> Result<(), tower_courier::BoxError> {
//! let options = PostgresOptions::new().schema("courier").max_connections(20);
//! let postgres = PostgresStore::connect_with("postgres://app@db.internal/app", options).await?;
//! // The pool is there for the caller's own rows, in their own transactions.
//! let _pool = postgres.pool().clone();
//!
//! let store = Store::new(postgres);
//! let message = NewMessage::new(
//!     "outbox",
//!     "http://orders.internal:8080",
//!     Method::POST,
//!     "/orders",
//!     SystemTime::now(),
//! );
//! assert_eq!(store.queue().enqueue(vec![message]).await?, [true]);
//!
//! let claimed = store.queue().claim("outbox", 10, Duration::from_secs(30)).await?;
//! store.queue().complete(&claimed[0].lease, None).await?;
//! # Ok(())
//! # }
//! ```
//!
//! # Clocks
//!
//! Leases, idempotency claims, replay nonces and `updated_at` are measured
//! by the database server's clock (`now()`), so instances whose clocks
//! disagree still agree on when a lease expires. Two values come from the
//! caller's clock instead: the `available_at` of [`NewMessage`] and
//! [`MessageQueue::reschedule`], and the `older_than` of
//! [`MessageQueue::purge`]. A caller whose clock runs ahead of the server's
//! makes a delayed message due later than intended. A caller whose clock
//! runs behind makes it due earlier. Keep instance clocks synchronised
//! (NTP).
//!
//! # Claims and fencing
//!
//! A claim is one statement: it locks due `pending` rows and `in_flight`
//! rows whose lease expired with `FOR UPDATE SKIP LOCKED`, oldest
//! `available_at` first, and updates them, so concurrent claimers never
//! wait on each other and never return the same row. Every claim increases
//! the row's fencing token, and every later write names the token in its
//! `WHERE` clause.
//!
//! # Wake-ups
//!
//! Enqueue, [`PostgresStore::enqueue_in`], reschedule, release and retry
//! call `pg_notify` in the same transaction as the write, so the
//! notification is sent on commit. Each store runs one listener task
//! (`LISTEN` on a dedicated connection) that wakes the local subscribers
//! of the named queue. When the listener's
//! connection is lost it reconnects, logs a warning and wakes every
//! subscribed queue, because notifications sent while it was away are
//! lost; the dispatcher's fallback poll covers that gap.
//!
//! # Throughput
//!
//! Enqueues and final states are group-committed by default. One writer
//! task per store collects the enqueues that arrive while its previous
//! commit runs and writes them in one multi-row `INSERT`. One finisher task
//! does the same with one multi-row `UPDATE` for
//! [`MessageQueue::complete`], [`MessageQueue::fail`] and
//! [`MessageQueue::dead_letter`]. Each caller gets its result after the
//! commit. See [`PostgresOptions::group_commit`].
//!
//! # Table growth
//!
//! Finished messages stay until [`MessageQueue::purge`] deletes them, and
//! expired idempotency records until [`IdempotencyStore::purge_expired`].
//! The store deletes expired replay nonces itself, at most once a minute,
//! during inserts. Every claim and every state change writes a new row
//! version, and most change the indexed `state` column, so they cannot be
//! heap-only updates: a busy queue leaves about three dead row versions per
//! message. The messages table is therefore created with autovacuum
//! thresholds far below PostgreSQL's defaults: vacuum after 1,000 dead rows
//! plus 1% of the table (the default is 50 plus 20%), analyze after 2%
//! changed. Its `fillfactor = 90` leaves room on each page for the updates
//! that can stay on their page. Operators can change these settings with
//! `ALTER TABLE`; the store never resets them. None of this helps on a
//! server with `autovacuum = off`, where the table grows until someone runs
//! `VACUUM`, so the store logs a warning at connect when it finds
//! autovacuum off.
//!
//! # Not promised
//!
//! - The store needs PostgreSQL 13 or later.
//! - A write that times out on the client may still commit on the server.
//!   To find out, enqueue the same message id again, which is safe because
//!   existing ids are skipped.
//! - A `LISTEN` connection in a connection pooler such as PgBouncer in
//!   transaction mode does not receive notifications; connect the store
//!   to the database directly.

mod finish;
mod listener;
mod queue;
mod records;
mod row;
mod schema;
mod sql;
mod writer;

use std::collections::HashSet;
use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

#[cfg(doc)]
use crate::store::{IdempotencyStore, MessageQueue, ReplayStore};
use crate::store::{NewMessage, Notifier, StoreError, StoreErrorKind};

use self::finish::FinishRequest;
use self::sql::Sql;
use self::writer::{EncodedMessage, EnqueueRequest};

/// Options for [`PostgresStore::connect_with`].
#[derive(Debug, Clone)]
pub struct PostgresOptions {
    schema: String,
    max_connections: u32,
    batch_size: usize,
    group_commit: bool,
}

impl PostgresOptions {
    /// The default schema name.
    pub const DEFAULT_SCHEMA: &'static str = "courier";

    /// Creates the default options.
    pub fn new() -> Self {
        Self {
            schema: Self::DEFAULT_SCHEMA.to_owned(),
            max_connections: 10,
            batch_size: 512,
            group_commit: true,
        }
    }

    /// Sets the schema that contains the store's tables. Default: `courier`.
    ///
    /// The name must be 1 to 48 characters of lowercase ASCII letters,
    /// digits and `_`, not starting with a digit. Stores with different
    /// schemas in one database are independent, which is how tests isolate
    /// themselves.
    pub fn schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = schema.into();
        self
    }

    /// Sets the maximum number of connections the pool opens. Default: 10.
    ///
    /// The listener uses one more connection of its own.
    pub fn max_connections(mut self, max_connections: u32) -> Self {
        self.max_connections = max_connections;
        self
    }

    /// Sets the maximum number of messages in one group commit, of
    /// enqueues or of final states. Default: 512.
    ///
    /// An enqueue of more messages than this is written alone, in one
    /// transaction of its own.
    pub fn batch_size(mut self, batch_size: usize) -> Self {
        self.batch_size = batch_size;
        self
    }

    /// Sets whether concurrent enqueues share one transaction, and
    /// concurrent final states another. Default: `true`.
    ///
    /// With `false`, every enqueue and every completion runs its own
    /// transaction on a pool connection: lower latency for a lone caller,
    /// far fewer messages a second for many.
    pub fn group_commit(mut self, group_commit: bool) -> Self {
        self.group_commit = group_commit;
        self
    }

    fn validate(&self) -> Result<(), StoreError> {
        let valid_schema = (1..=48).contains(&self.schema.len())
            && !self.schema.starts_with(|c: char| c.is_ascii_digit())
            && self
                .schema
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if !valid_schema {
            return Err(invalid(format!(
                "invalid postgres schema name {:?}: expected 1 to 48 characters \
                 of a-z, 0-9 and _, not starting with a digit",
                self.schema
            )));
        }
        if self.max_connections == 0 || self.batch_size == 0 {
            return Err(invalid(
                "invalid postgres store options: max_connections and batch_size must be at least 1",
            ));
        }
        Ok(())
    }
}

impl Default for PostgresOptions {
    fn default() -> Self {
        Self::new()
    }
}

/// A store on a PostgreSQL database, shared by any number of processes.
///
/// See the [module documentation](self) for clocks, wake-ups and table
/// growth. Clones share the pool and the background tasks, which stop when
/// the last clone is dropped.
#[derive(Clone)]
pub struct PostgresStore {
    shared: Arc<Shared>,
    writer: Option<mpsc::Sender<EnqueueRequest>>,
    finisher: Option<mpsc::Sender<FinishRequest>>,
    _tasks: Arc<TaskGuard>,
}

/// The state shared by the store's handles and its background tasks.
struct Shared {
    pool: PgPool,
    sql: Sql,
    schema: String,
    notifier: Notifier,
    subscribed: Mutex<HashSet<String>>,
    batch_size: usize,
    replay_sweep: Mutex<Option<std::time::Instant>>,
}

impl Shared {
    fn subscribed_queues(&self) -> Vec<String> {
        let queues = self
            .subscribed
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        queues.iter().cloned().collect()
    }
}

/// Aborts the listener task when the last store handle is dropped.
struct TaskGuard(Vec<JoinHandle<()>>);

impl Drop for TaskGuard {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

impl PostgresStore {
    /// Connects to the database at `url` with the default options, and
    /// creates or migrates the `courier` schema.
    ///
    /// # Errors
    ///
    /// Fails with [`StoreErrorKind::Invalid`] for a malformed URL and with
    /// [`StoreErrorKind::Unavailable`] when the database cannot be reached
    /// or the schema cannot be created.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        Self::connect_with(url, PostgresOptions::new()).await
    }

    /// Connects to the database at `url` with `options`, and creates or
    /// migrates the schema they name.
    ///
    /// The listener and the group-commit writers run as tasks on the Tokio
    /// runtime of the caller.
    ///
    /// # Panics
    ///
    /// Panics when called outside a Tokio runtime.
    ///
    /// # Errors
    ///
    /// As [`PostgresStore::connect`], and [`StoreErrorKind::Invalid`] for
    /// invalid options or a schema migrated by a newer version of this
    /// crate.
    pub async fn connect_with(url: &str, options: PostgresOptions) -> Result<Self, StoreError> {
        options.validate()?;
        let connect_options = PgConnectOptions::from_str(url)
            .map_err(|error| invalid("invalid postgres url").with_source(error))?;

        let pool = PgPoolOptions::new()
            .max_connections(options.max_connections)
            .connect_with(connect_options.clone().application_name("tower-courier"))
            .await
            .map_err(|error| StoreError::unavailable("failed to connect to postgres", error))?;
        schema::migrate(&pool, &options.schema).await?;
        schema::warn_without_autovacuum(&pool).await;

        let shared = Arc::new(Shared {
            pool,
            sql: Sql::new(&options.schema),
            schema: options.schema.clone(),
            notifier: Notifier::new(),
            subscribed: Mutex::new(HashSet::new()),
            batch_size: options.batch_size,
            replay_sweep: Mutex::new(None),
        });

        let listener_options =
            connect_options.application_name(&listener::application_name(&options.schema));
        let mut tasks = vec![tokio::spawn(listener::run(
            shared.clone(),
            listener_options,
        ))];
        let writer = options.group_commit.then(|| {
            let (sender, receiver) = mpsc::channel(1024);
            tasks.push(tokio::spawn(writer::run(shared.clone(), receiver)));
            sender
        });
        let finisher = options.group_commit.then(|| {
            let (sender, receiver) = mpsc::channel(1024);
            tasks.push(tokio::spawn(finish::run(shared.clone(), receiver)));
            sender
        });

        Ok(Self {
            shared,
            writer,
            finisher,
            _tasks: Arc::new(TaskGuard(tasks)),
        })
    }

    /// Returns the connection pool, for callers that write their own rows
    /// in the same transaction as the store's.
    pub fn pool(&self) -> &PgPool {
        &self.shared.pool
    }

    /// Returns the schema that contains the store's tables.
    pub fn schema(&self) -> &str {
        &self.shared.schema
    }

    /// Stores `messages` on `connection`, inside the caller's transaction,
    /// with the same rules as [`MessageQueue::enqueue`]: returns, for each
    /// message, `true` if it was stored and `false` if its id exists.
    ///
    /// The messages become visible to claims, and durable, when the caller
    /// commits; a rollback leaves nothing. The statement calls `pg_notify`,
    /// which PostgreSQL delivers only at commit, so dispatchers in every
    /// process wake after the commit and never before. Nothing else is
    /// needed after the commit, unlike the SQLite store's `enqueue_in`.
    ///
    /// The group-commit writer is not used: the rows go into the caller's
    /// transaction as one statement.
    ///
    /// # Errors
    ///
    /// Fails as invalid for text PostgreSQL cannot store (NUL characters)
    /// and as unavailable when the statement fails. After an error the
    /// transaction is aborted and the caller must roll it back.
    pub async fn enqueue_in(
        &self,
        connection: &mut PgConnection,
        messages: &[NewMessage],
    ) -> Result<Vec<bool>, StoreError> {
        if messages.is_empty() {
            return Ok(Vec::new());
        }
        let encoded = messages
            .iter()
            .cloned()
            .map(EncodedMessage::new)
            .collect::<Result<Vec<_>, _>>()?;
        writer::insert_on(&self.shared.sql, connection, &encoded).await
    }
}

impl fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresStore")
            .field("schema", &self.shared.schema)
            .field("group_commit", &self.writer.is_some())
            .finish_non_exhaustive()
    }
}

fn invalid(message: impl Into<String>) -> StoreError {
    StoreError::new(StoreErrorKind::Invalid, message)
}

/// Maps a driver error: lost connections and timeouts are worth retrying,
/// a rejected value is not.
fn query_failed(what: &str, error: sqlx::Error) -> StoreError {
    let kind = match &error {
        sqlx::Error::Database(database) if is_data_error(database.code().as_deref()) => {
            StoreErrorKind::Invalid
        }
        sqlx::Error::ColumnDecode { .. } | sqlx::Error::Decode(_) => StoreErrorKind::Corrupt,
        _ => StoreErrorKind::Unavailable,
    };
    StoreError::new(kind, format!("failed to {what} in postgres")).with_source(error)
}

/// Returns `true` for SQLSTATE class 22 (data exception), which a retry
/// cannot fix.
fn is_data_error(code: Option<&str>) -> bool {
    code.is_some_and(|code| code.starts_with("22"))
}
