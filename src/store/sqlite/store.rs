use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{ConnectOptions, SqliteConnection, SqlitePool};

use super::options::{SqliteOptions, Synchronous};
use super::writer::{Request, Response, Writer, unexpected};
use super::{enqueue, idempotency, read, schema};
use crate::MessageId;
use crate::clock::SharedClock;
use crate::store::{
    ClaimOutcome, Claimed, FencingToken, Fingerprint, IdempotencyKey, IdempotencyRecord,
    IdempotencyStore, Lease, Message, MessageQueue, MessageState, NewMessage, Notifier, Outcome,
    QueueCounts, ReplayStore, StoreError, StoreErrorKind, StoredResponse, Subscription,
};

/// Rows the writer connection's driver thread may queue before the
/// writer task reads them.
const WRITER_ROW_BUFFER: usize = 1_024;

/// One replay-guard insert in this many also deletes expired pairs.
const REPLAY_PRUNE_EVERY: u64 = 64;

/// A store in one SQLite file, implementing [`MessageQueue`],
/// [`IdempotencyStore`] and [`ReplayStore`]. See the [module
/// docs](super) for how writes are batched and what is durable.
///
/// Cloning is cheap: clones share the writer task and the read pool. The
/// writer task runs on the Tokio runtime that called [`open`](Self::open)
/// and stops when the last clone is dropped.
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    pool: SqlitePool,
    writer: Writer,
    notifier: Notifier,
    clock: SharedClock,
    replay_inserts: AtomicU64,
}

impl SqliteStore {
    /// Opens or creates the database at `path` with the default
    /// [`SqliteOptions`], and creates or migrates its tables.
    ///
    /// # Errors
    ///
    /// Fails as unavailable if the file cannot be opened or created, and
    /// as invalid if a newer version of the crate wrote its schema.
    pub async fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        Self::open_with(path, SqliteOptions::new()).await
    }

    /// Opens or creates the database at `path` with `options`.
    ///
    /// # Errors
    ///
    /// As for [`open`](Self::open).
    pub async fn open_with(
        path: impl AsRef<Path>,
        options: SqliteOptions,
    ) -> Result<Self, StoreError> {
        let path = path.as_ref().to_owned();
        // SQLite opens a private temporary database for an empty name, one
        // per connection, which would look like a store and keep nothing.
        if path.as_os_str().is_empty() {
            return Err(StoreError::new(
                StoreErrorKind::Invalid,
                "sqlite store path is empty: name a database file",
            ));
        }
        let connect = connect_options(&path, &options);
        let cannot_open =
            |error| StoreError::unavailable(format!("cannot open sqlite database {path:?}"), error);

        // The writer reads whole claims and multi-row inserts back at once;
        // a row buffer larger than sqlx's default of 50 keeps the driver's
        // thread from stalling on a full channel halfway through them.
        let writer_options = connect.clone().row_buffer_size(WRITER_ROW_BUFFER);
        let mut connection = writer_options.connect().await.map_err(cannot_open)?;
        schema::migrate(&mut connection).await?;
        let pool = SqlitePoolOptions::new()
            .max_connections(options.read_connections)
            .connect_with(connect)
            .await
            .map_err(cannot_open)?;

        let notifier = Notifier::new();
        let writer = Writer::spawn(
            connection,
            options.clock.clone(),
            notifier.clone(),
            options.max_batch,
        );
        let inner = Inner {
            path,
            pool,
            writer,
            notifier,
            clock: options.clock,
            replay_inserts: AtomicU64::new(0),
        };
        Ok(Self {
            inner: Arc::new(inner),
        })
    }

    /// Returns the pool of connections to the database file.
    ///
    /// The store reads through this pool. Use it to enqueue inside your own
    /// transaction with [`enqueue_in`](Self::enqueue_in), so that a message
    /// is stored if and only if your own writes commit. Begin write
    /// transactions with `pool.begin_with("BEGIN IMMEDIATE")`: a deferred
    /// transaction that later writes can fail with `database is locked`
    /// when the store's writer holds the lock, where an immediate one waits
    /// for the busy timeout.
    pub fn pool(&self) -> &SqlitePool {
        &self.inner.pool
    }

    /// Returns the path of the database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Stores `messages` on `connection`, inside the caller's transaction,
    /// with the same rules as [`MessageQueue::enqueue`].
    ///
    /// The messages become visible, and durable, when the caller commits.
    /// Workers find them on their next poll; call
    /// [`notify`](Self::notify) after the commit to wake them at once.
    ///
    /// # Errors
    ///
    /// Fails as unavailable when a statement fails; the caller should then
    /// roll back its transaction.
    pub async fn enqueue_in(
        &self,
        connection: &mut SqliteConnection,
        messages: &[NewMessage],
    ) -> Result<Vec<bool>, StoreError> {
        let refs: Vec<&NewMessage> = messages.iter().collect();
        let mut inserted = enqueue::insert(connection, &refs, self.inner.clock.now())
            .await
            .map_err(super::rows::unavailable)?;
        Ok(messages.iter().map(|m| inserted.remove(&m.id)).collect())
    }

    /// Wakes this process's workers subscribed to `queue`.
    pub fn notify(&self, queue: &str) {
        self.inner.notifier.notify(queue);
    }

    async fn call(&self, request: Request) -> Result<Response, StoreError> {
        self.inner.writer.call(request).await
    }

    async fn call_done(&self, request: Request) -> Result<(), StoreError> {
        match self.call(request).await? {
            Response::Done | Response::Due(_) => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    async fn call_count(&self, request: Request) -> Result<u64, StoreError> {
        match self.call(request).await? {
            Response::Count(count) => Ok(count),
            other => Err(unexpected(other)),
        }
    }
}

fn connect_options(path: &Path, options: &SqliteOptions) -> SqliteConnectOptions {
    let synchronous = match options.synchronous {
        Synchronous::Full => SqliteSynchronous::Full,
        Synchronous::Normal => SqliteSynchronous::Normal,
    };
    SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(synchronous)
        .busy_timeout(options.busy_timeout)
}

impl fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.inner.path)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl MessageQueue for SqliteStore {
    async fn enqueue(&self, messages: Vec<NewMessage>) -> Result<Vec<bool>, StoreError> {
        match self.call(Request::Enqueue(messages)).await? {
            Response::Stored(stored) => Ok(stored),
            other => Err(unexpected(other)),
        }
    }

    async fn claim(
        &self,
        queue: &str,
        limit: usize,
        lease: Duration,
    ) -> Result<Vec<Claimed>, StoreError> {
        let queue = queue.to_owned();
        match self
            .call(Request::Claim {
                queue,
                limit,
                lease,
            })
            .await?
        {
            Response::Claimed(claimed) => Ok(claimed),
            other => Err(unexpected(other)),
        }
    }

    async fn renew(&self, lease: &Lease, extend_by: Duration) -> Result<Lease, StoreError> {
        let lease = *lease;
        match self.call(Request::Renew { lease, extend_by }).await? {
            Response::Renewed(lease) => Ok(lease),
            other => Err(unexpected(other)),
        }
    }

    async fn complete(&self, lease: &Lease, outcome: Option<Outcome>) -> Result<(), StoreError> {
        let (lease, state) = (*lease, MessageState::Succeeded);
        let error = None;
        self.call_done(Request::Finish {
            lease,
            state,
            error,
            outcome,
        })
        .await
    }

    async fn reschedule(
        &self,
        lease: &Lease,
        available_at: SystemTime,
        error: &str,
    ) -> Result<(), StoreError> {
        let (lease, error) = (*lease, error.to_owned());
        self.call_done(Request::Reschedule {
            lease,
            available_at,
            error,
        })
        .await
    }

    async fn release(&self, lease: &Lease) -> Result<(), StoreError> {
        self.call_done(Request::Release(*lease)).await
    }

    async fn fail(
        &self,
        lease: &Lease,
        error: &str,
        outcome: Option<Outcome>,
    ) -> Result<(), StoreError> {
        let (lease, state) = (*lease, MessageState::Failed);
        let error = Some(error.to_owned());
        self.call_done(Request::Finish {
            lease,
            state,
            error,
            outcome,
        })
        .await
    }

    async fn dead_letter(
        &self,
        lease: &Lease,
        error: &str,
        outcome: Option<Outcome>,
    ) -> Result<(), StoreError> {
        let (lease, state) = (*lease, MessageState::Dead);
        let error = Some(error.to_owned());
        self.call_done(Request::Finish {
            lease,
            state,
            error,
            outcome,
        })
        .await
    }

    async fn get(&self, id: MessageId) -> Result<Option<Message>, StoreError> {
        read::get(&self.inner.pool, id).await
    }

    async fn counts(&self, queue: &str) -> Result<QueueCounts, StoreError> {
        read::counts(&self.inner.pool, queue).await
    }

    async fn list(
        &self,
        queue: &str,
        state: MessageState,
        limit: usize,
        after: Option<MessageId>,
    ) -> Result<Vec<Message>, StoreError> {
        read::list(&self.inner.pool, queue, state, limit, after).await
    }

    async fn retry(&self, id: MessageId) -> Result<bool, StoreError> {
        match self.call(Request::Retry(id)).await? {
            Response::Retried(queue) => Ok(queue.is_some()),
            other => Err(unexpected(other)),
        }
    }

    async fn purge(
        &self,
        queue: &str,
        state: MessageState,
        older_than: SystemTime,
    ) -> Result<u64, StoreError> {
        let queue = queue.to_owned();
        self.call_count(Request::Purge {
            queue,
            state,
            older_than,
        })
        .await
    }

    fn subscribe(&self, queue: &str) -> Subscription {
        self.inner.notifier.subscribe(queue)
    }
}

#[async_trait]
impl IdempotencyStore for SqliteStore {
    async fn claim(
        &self,
        key: &IdempotencyKey,
        fingerprint: Fingerprint,
        lease: Duration,
    ) -> Result<ClaimOutcome, StoreError> {
        let digest = key.digest();
        match self
            .call(Request::IdempotencyClaim {
                digest,
                fingerprint,
                lease,
            })
            .await?
        {
            Response::Idempotency(outcome) => Ok(outcome),
            other => Err(unexpected(other)),
        }
    }

    async fn renew(
        &self,
        key: &IdempotencyKey,
        token: FencingToken,
        extend_by: Duration,
    ) -> Result<(), StoreError> {
        let digest = key.digest();
        self.call_done(Request::IdempotencyRenew {
            digest,
            token,
            extend_by,
        })
        .await
    }

    async fn complete(
        &self,
        key: &IdempotencyKey,
        token: FencingToken,
        response: &StoredResponse,
        retention: Duration,
    ) -> Result<(), StoreError> {
        let (digest, response) = (key.digest(), response.clone());
        let request = Request::IdempotencyComplete {
            digest,
            token,
            response,
            retention,
        };
        self.call_done(request).await
    }

    async fn release(&self, key: &IdempotencyKey, token: FencingToken) -> Result<(), StoreError> {
        let digest = key.digest();
        self.call_done(Request::IdempotencyRelease { digest, token })
            .await
    }

    async fn get(&self, key: &IdempotencyKey) -> Result<Option<IdempotencyRecord>, StoreError> {
        let now = self.inner.clock.now();
        idempotency::get(&self.inner.pool, &key.digest(), now).await
    }

    async fn purge_expired(&self) -> Result<u64, StoreError> {
        self.call_count(Request::IdempotencyPurge).await
    }
}

#[async_trait]
impl ReplayStore for SqliteStore {
    async fn insert(&self, kid: &str, nonce: &str, ttl: Duration) -> Result<bool, StoreError> {
        let count = self.inner.replay_inserts.fetch_add(1, Ordering::Relaxed);
        let request = Request::ReplayInsert {
            kid: kid.to_owned(),
            nonce: nonce.to_owned(),
            ttl,
            prune: count.is_multiple_of(REPLAY_PRUNE_EVERY),
        };
        match self.call(request).await? {
            Response::Inserted(inserted) => Ok(inserted),
            other => Err(unexpected(other)),
        }
    }
}
