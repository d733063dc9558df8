//! The Redis store, for several instances sharing one Redis server.
//!
//! [`RedisStore`] implements [`MessageQueue`], [`IdempotencyStore`] and
//! [`ReplayStore`] with Lua scripts, each of which runs atomically on the
//! server. All keys start with a configurable prefix (`courier:` by
//! default), so several stores can share one database.
//!
//! ```no_run
//! use std::time::Duration;
//!
//! use tower_courier::store::Store;
//! use tower_courier::store::redis::{RedisOptions, RedisStore};
//!
//! # async fn example() -> Result<(), tower_courier::BoxError> {
//! let options = RedisOptions::new().prefix("billing:");
//! let store = Store::new(RedisStore::connect_with("redis://127.0.0.1:6379", options).await?);
//!
//! let replay = store.replay();
//! let fresh = replay.insert("key-1", "bm9uY2Utbm9uY2U", Duration::from_secs(600)).await?;
//! assert!(fresh, "a nonce is new the first time");
//! # Ok(())
//! # }
//! ```
//!
//! # Clocks
//!
//! Leases, claims' expiry, `updated_at` and nonce lifetimes are measured
//! by the Redis server's clock (`TIME`, or key expiry), so instances whose
//! clocks disagree still agree on when a lease expires. The `available_at`
//! of [`NewMessage`] and [`MessageQueue::reschedule`] and the `older_than`
//! of [`MessageQueue::purge`] come from the caller's clock; keep instance
//! clocks synchronised (NTP). Times are kept in whole milliseconds.
//!
//! # Wake-ups
//!
//! The scripts of enqueue, reschedule, release and retry `PUBLISH` the
//! queue name on the channel `<prefix>wake`. Each store runs a subscriber
//! task that wakes its local subscribers of that queue. When the
//! subscription's connection is lost, the task reconnects with backoff,
//! logs a warning and wakes every subscribed queue, because messages
//! published meanwhile are lost. The dispatcher's fallback poll covers the
//! gap.
//!
//! # Durability
//!
//! Redis acknowledges a write before it reaches the disk unless configured
//! otherwise. For a queue that must not lose messages, run Redis with
//! `appendonly yes` and `appendfsync always`. With `appendfsync everysec`,
//! a crash of the machine can lose the last second of writes. Also set
//! `maxmemory-policy noeviction`, because any other policy lets Redis
//! delete messages and idempotency records under memory pressure. At
//! connect the store reads these settings with `CONFIG GET` and logs a
//! warning for each one that can lose data.
//!
//! # Not promised
//!
//! - Redis Cluster is not supported: scripts touch keys they compute.
//! - A script that fails half-way, which Redis allows only on an
//!   out-of-memory error, leaves its earlier writes in place: with
//!   `noeviction`, Redis rejects such scripts before they start writing
//!   once memory is full.
//! - Replicas are updated asynchronously, so a failover can lose recent
//!   writes, as with any Redis data.
//!
//! # Growth
//!
//! Finished messages stay until [`MessageQueue::purge`] deletes them.
//! Idempotency records and replay nonces carry a Redis expiry, so Redis
//! deletes them even if nobody calls [`IdempotencyStore::purge_expired`];
//! an expired idempotency record's key lingers 10 minutes past its expiry
//! unless purged.

mod decode;
mod queue;
mod records;
mod scripts;
mod subscriber;

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::task::JoinHandle;

#[cfg(doc)]
use crate::store::{IdempotencyStore, MessageQueue, NewMessage, ReplayStore};
use crate::store::{Notifier, StoreError, StoreErrorKind};

use self::scripts::Scripts;

/// Options for [`RedisStore::connect_with`].
#[derive(Debug, Clone)]
pub struct RedisOptions {
    prefix: String,
    response_timeout: Duration,
}

impl RedisOptions {
    /// The default key prefix.
    pub const DEFAULT_PREFIX: &'static str = "courier:";

    /// Creates the default options.
    pub fn new() -> Self {
        Self {
            prefix: Self::DEFAULT_PREFIX.to_owned(),
            response_timeout: Duration::from_secs(10),
        }
    }

    /// Sets the prefix of every key and of the wake-up channel. Default:
    /// `courier:`.
    ///
    /// Stores with different prefixes in one database are independent,
    /// which is how tests isolate themselves. The prefix must not be empty.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Sets how long a command or script may take before the call fails
    /// with [`StoreErrorKind::Unavailable`]. Default: 10 seconds.
    ///
    /// A script that timed out on the client may still complete on the
    /// server. To find out, enqueue the same message ids again, which is
    /// safe because existing ids are skipped.
    pub fn response_timeout(mut self, timeout: Duration) -> Self {
        self.response_timeout = timeout;
        self
    }
}

impl Default for RedisOptions {
    fn default() -> Self {
        Self::new()
    }
}

/// A store on a Redis server, shared by any number of processes.
///
/// See the [module documentation](self) for clocks, wake-ups and the
/// server settings durability needs. Clones share the connection and the
/// subscriber task, which stops when the last clone is dropped.
#[derive(Clone)]
pub struct RedisStore {
    shared: Arc<Shared>,
    _subscriber: Arc<TaskGuard>,
}

/// The state shared by the store's handles and its subscriber task.
struct Shared {
    connection: ConnectionManager,
    scripts: Scripts,
    prefix: String,
    channel: String,
    notifier: Notifier,
    subscribed: Mutex<HashSet<String>>,
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

/// Aborts the subscriber task when the last store handle is dropped.
struct TaskGuard(JoinHandle<()>);

impl Drop for TaskGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl RedisStore {
    /// Connects to the Redis server at `url` with the default options.
    ///
    /// # Errors
    ///
    /// Fails with [`StoreErrorKind::Invalid`] for a malformed URL and with
    /// [`StoreErrorKind::Unavailable`] when the server cannot be reached.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        Self::connect_with(url, RedisOptions::new()).await
    }

    /// Connects to the Redis server at `url` with `options`.
    ///
    /// The subscriber runs as a task on the Tokio runtime of the caller.
    ///
    /// # Panics
    ///
    /// Panics when called outside a Tokio runtime.
    ///
    /// # Errors
    ///
    /// As [`RedisStore::connect`], and [`StoreErrorKind::Invalid`] for an
    /// empty prefix.
    pub async fn connect_with(url: &str, options: RedisOptions) -> Result<Self, StoreError> {
        if options.prefix.is_empty() {
            return Err(StoreError::new(
                StoreErrorKind::Invalid,
                "invalid redis key prefix: it must not be empty",
            ));
        }
        let client = redis::Client::open(url).map_err(|error| {
            StoreError::new(StoreErrorKind::Invalid, "invalid redis url").with_source(error)
        })?;
        let config =
            ConnectionManagerConfig::new().set_response_timeout(Some(options.response_timeout));
        let mut connection = client
            .get_connection_manager_with_config(config)
            .await
            .map_err(|error| StoreError::unavailable("failed to connect to redis", error))?;
        warn_about_durability(&mut connection).await;

        let shared = Arc::new(Shared {
            connection,
            scripts: Scripts::new(),
            channel: format!("{}wake", options.prefix),
            prefix: options.prefix,
            notifier: Notifier::new(),
            subscribed: Mutex::new(HashSet::new()),
        });
        let subscriber = tokio::spawn(subscriber::run(shared.clone(), client));
        Ok(Self {
            shared,
            _subscriber: Arc::new(TaskGuard(subscriber)),
        })
    }

    /// Returns the key prefix.
    pub fn prefix(&self) -> &str {
        &self.shared.prefix
    }

    fn connection(&self) -> ConnectionManager {
        self.shared.connection.clone()
    }
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.shared.prefix)
            .finish_non_exhaustive()
    }
}

/// Logs a warning for each server setting that can lose acknowledged
/// writes. Servers that disable `CONFIG` (many managed services) get one
/// debug line instead, since the store cannot tell.
async fn warn_about_durability(connection: &mut ConnectionManager) {
    let mut settings = HashMap::new();
    for name in ["appendonly", "appendfsync", "maxmemory-policy"] {
        let read: redis::RedisResult<HashMap<String, String>> = redis::cmd("CONFIG")
            .arg("GET")
            .arg(name)
            .query_async(connection)
            .await;
        match read {
            Ok(values) => settings.extend(values),
            Err(error) => {
                tracing::debug!(%error, "cannot read the redis configuration; durability unchecked");
                return;
            }
        }
    }
    for warning in durability_warnings(&settings) {
        tracing::warn!("{warning}");
    }
}

/// Returns one line for each setting in `settings` that can lose data.
fn durability_warnings(settings: &HashMap<String, String>) -> Vec<String> {
    let get = |name: &str| settings.get(name).map(String::as_str).unwrap_or("");
    let mut warnings = Vec::new();
    if get("appendonly") != "yes" {
        warnings.push(format!(
            "redis persistence is off (appendonly {:?}): writes since the last snapshot, \
             if any, are lost when redis restarts; set appendonly yes",
            get("appendonly")
        ));
    } else if get("appendfsync") == "no" {
        warnings.push(
            "redis appendfsync is no: the operating system decides when writes reach the \
             disk; set appendfsync always or everysec"
                .to_owned(),
        );
    }
    if get("maxmemory-policy") != "noeviction" {
        warnings.push(format!(
            "redis maxmemory-policy is {:?}: redis may evict messages and idempotency \
             records when memory is full; set maxmemory-policy noeviction",
            get("maxmemory-policy")
        ));
    }
    warnings
}

fn command_failed(what: &str, error: redis::RedisError) -> StoreError {
    StoreError::unavailable(format!("failed to {what} in redis"), error)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(name, value)| (name.to_string(), value.to_string()))
            .collect()
    }

    #[test]
    fn durable_settings_warn_nothing() {
        let durable = settings(&[
            ("appendonly", "yes"),
            ("appendfsync", "everysec"),
            ("maxmemory-policy", "noeviction"),
        ]);
        assert!(durability_warnings(&durable).is_empty());
    }

    #[test]
    fn persistence_off_warns() {
        let off = settings(&[
            ("appendonly", "no"),
            ("appendfsync", "everysec"),
            ("maxmemory-policy", "noeviction"),
        ]);
        let warnings = durability_warnings(&off);
        assert_eq!(warnings.len(), 1);
        assert!(warnings[0].contains("appendonly"));
    }

    #[test]
    fn eviction_and_lazy_fsync_warn() {
        let lossy = settings(&[
            ("appendonly", "yes"),
            ("appendfsync", "no"),
            ("maxmemory-policy", "allkeys-lru"),
        ]);
        let warnings = durability_warnings(&lossy);
        assert_eq!(warnings.len(), 2);
        assert!(warnings[0].contains("appendfsync"));
        assert!(warnings[1].contains("allkeys-lru"));
    }
}
