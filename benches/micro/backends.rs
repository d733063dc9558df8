//! The stores under test: memory and SQLite always, PostgreSQL and Redis
//! when their feature is enabled and their URL variable is set.

use std::sync::{Arc, Mutex};

use tower_courier::store::memory::MemoryStore;
use tower_courier::store::sqlite::SqliteStore;
use tower_courier::store::{IdempotencyStore, MessageQueue};

/// One fresh store, seen through both traits the benchmarks use.
pub(crate) struct Opened {
    pub(crate) queue: Arc<dyn MessageQueue>,
    pub(crate) records: Arc<dyn IdempotencyStore>,
}

impl Opened {
    fn new<S: MessageQueue + IdempotencyStore>(store: S) -> Self {
        let store = Arc::new(store);
        Self {
            queue: store.clone(),
            records: store,
        }
    }
}

enum Kind {
    Memory,
    Sqlite(tempfile::TempDir),
    #[cfg(feature = "postgres")]
    Postgres(String),
    #[cfg(feature = "redis")]
    Redis(String),
}

/// A store backend that opens fresh, isolated stores and removes what
/// they left when the run ends.
pub(crate) struct Backend {
    pub(crate) name: &'static str,
    kind: Kind,
    opened: Mutex<Vec<String>>,
}

impl Backend {
    fn new(name: &'static str, kind: Kind) -> Self {
        Self {
            name,
            kind,
            opened: Mutex::new(Vec::new()),
        }
    }

    /// Opens an empty store: a new SQLite file, PostgreSQL schema or Redis
    /// key prefix, so no benchmark sees another's rows.
    pub(crate) async fn open(&self) -> Opened {
        let unique = tower_courier::MessageId::new().to_string().replace('-', "");
        self.opened.lock().unwrap().push(unique.clone());
        match &self.kind {
            // The memory store's default bounds would reject writes after
            // 100,000 messages or records; `Rotating` opens a new store
            // before memory use grows large.
            Kind::Memory => Opened::new(
                MemoryStore::new()
                    .max_messages(usize::MAX)
                    .max_idempotency_records(usize::MAX),
            ),
            Kind::Sqlite(directory) => {
                let path = directory.path().join(format!("{unique}.db"));
                let store = SqliteStore::open(path).await.expect("open a SQLite store");
                Opened::new(store)
            }
            #[cfg(feature = "postgres")]
            Kind::Postgres(url) => Opened::new(postgres::open(url, &unique).await),
            #[cfg(feature = "redis")]
            Kind::Redis(url) => Opened::new(redis_server::open(url, &unique).await),
        }
    }

    /// Drops the PostgreSQL schemas and deletes the Redis keys this backend
    /// created; SQLite files go with their temporary directory.
    pub(crate) async fn clean_up(&self) {
        let names = std::mem::take(&mut *self.opened.lock().unwrap());
        match &self.kind {
            Kind::Memory | Kind::Sqlite(_) => {}
            #[cfg(feature = "postgres")]
            Kind::Postgres(url) => postgres::drop_schemas(url, &names).await,
            #[cfg(feature = "redis")]
            Kind::Redis(url) => redis_server::delete_keys(url, &names).await,
        }
        let _ = names;
    }
}

/// Returns the backends to measure, and a line for each one that is not
/// measured in this run, saying why.
pub(crate) fn available() -> (Vec<Backend>, Vec<String>) {
    let directory = tempfile::tempdir().expect("temporary directory");
    // Only the PostgreSQL and Redis backends are pushed later.
    #[cfg_attr(not(any(feature = "postgres", feature = "redis")), allow(unused_mut))]
    let mut backends = vec![
        Backend::new("memory", Kind::Memory),
        Backend::new("sqlite", Kind::Sqlite(directory)),
    ];
    let mut skipped = Vec::new();

    let postgres_url = std::env::var("TOWER_COURIER_POSTGRES_URL").ok();
    #[cfg(feature = "postgres")]
    match postgres_url {
        Some(url) => backends.push(Backend::new("postgres", Kind::Postgres(url))),
        None => skipped.push(not_run("postgres", "TOWER_COURIER_POSTGRES_URL is not set")),
    }
    #[cfg(not(feature = "postgres"))]
    skipped.push(not_run(
        "postgres",
        if postgres_url.is_some() {
            "the postgres feature is not enabled"
        } else {
            "the postgres feature is not enabled and TOWER_COURIER_POSTGRES_URL is not set"
        },
    ));

    let redis_url = std::env::var("TOWER_COURIER_REDIS_URL").ok();
    #[cfg(feature = "redis")]
    match redis_url {
        Some(url) => backends.push(Backend::new("redis", Kind::Redis(url))),
        None => skipped.push(not_run("redis", "TOWER_COURIER_REDIS_URL is not set")),
    }
    #[cfg(not(feature = "redis"))]
    skipped.push(not_run(
        "redis",
        if redis_url.is_some() {
            "the redis feature is not enabled"
        } else {
            "the redis feature is not enabled and TOWER_COURIER_REDIS_URL is not set"
        },
    ));

    (backends, skipped)
}

fn not_run(store: &str, reason: &str) -> String {
    format!("store_{store}: not run ({reason})")
}

#[cfg(feature = "postgres")]
mod postgres {
    use sqlx::AssertSqlSafe;
    use tower_courier::store::postgres::{PostgresOptions, PostgresStore};

    fn schema(unique: &str) -> String {
        format!("bench_micro_{unique}")
    }

    pub(super) async fn open(url: &str, unique: &str) -> PostgresStore {
        let options = PostgresOptions::new().schema(schema(unique));
        PostgresStore::connect_with(url, options)
            .await
            .expect("connect to TOWER_COURIER_POSTGRES_URL")
    }

    pub(super) async fn drop_schemas(url: &str, names: &[String]) {
        let pool = sqlx::PgPool::connect(url)
            .await
            .expect("connect to TOWER_COURIER_POSTGRES_URL");
        for name in names {
            let sql = format!("DROP SCHEMA IF EXISTS {} CASCADE", schema(name));
            sqlx::query(AssertSqlSafe(sql))
                .execute(&pool)
                .await
                .expect("drop a benchmark schema");
        }
    }
}

#[cfg(feature = "redis")]
mod redis_server {
    use tower_courier::store::redis::{RedisOptions, RedisStore};

    fn prefix(unique: &str) -> String {
        format!("bench-micro:{unique}:")
    }

    pub(super) async fn open(url: &str, unique: &str) -> RedisStore {
        let options = RedisOptions::new().prefix(prefix(unique));
        RedisStore::connect_with(url, options)
            .await
            .expect("connect to TOWER_COURIER_REDIS_URL")
    }

    /// Deletes every key under the prefixes of `names`, a page of `SCAN`
    /// at a time so that no single command blocks the server for long.
    pub(super) async fn delete_keys(url: &str, names: &[String]) {
        let client = redis::Client::open(url).expect("valid TOWER_COURIER_REDIS_URL");
        let mut connection = client
            .get_multiplexed_async_connection()
            .await
            .expect("connect to TOWER_COURIER_REDIS_URL");
        for name in names {
            let mut cursor = 0_u64;
            loop {
                let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(format!("{}*", prefix(name)))
                    .arg("COUNT")
                    .arg(1_000)
                    .query_async(&mut connection)
                    .await
                    .expect("list benchmark keys");
                if !keys.is_empty() {
                    let _: i64 = redis::cmd("UNLINK")
                        .arg(keys)
                        .query_async(&mut connection)
                        .await
                        .expect("delete benchmark keys");
                }
                if next == 0 {
                    break;
                }
                cursor = next;
            }
        }
    }
}
