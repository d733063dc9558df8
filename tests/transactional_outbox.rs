//! The transactional outbox: a message stored with `enqueue_in` inside the
//! caller's transaction is delivered if and only if the transaction
//! commits, and never before the commit.
//!
//! The SQLite trials always run. The PostgreSQL trials run, each in a
//! fresh schema, when the `postgres` feature is enabled and
//! `TOWER_COURIER_POSTGRES_URL` names a database. Otherwise they are
//! reported as ignored with the reason.

mod common;
mod support;

use std::slice;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use libtest_mimic::{Arguments, Trial};
use tower_courier::outbox::{Dispatcher, OutboxLayer};
use tower_courier::store::sqlite::SqliteStore;
use tower_courier::store::{MessageQueue, QueueCounts};

use common::{Received, Receiver, always, client};

/// How long a delivery may take before a trial fails.
const DELIVERY_WAIT: Duration = Duration::from_secs(10);

/// How long a transaction stays open while dispatchers poll, to give them
/// the chance to see a message that is not committed.
const HOLD_OPEN: Duration = Duration::from_millis(400);

fn main() {
    let arguments = Arguments::from_args();
    let mut trials = vec![
        sqlite_trial(
            "sqlite_rollback_leaves_nothing",
            sqlite::rollback_leaves_nothing,
        ),
        sqlite_trial(
            "sqlite_commit_delivers_with_key",
            sqlite::commit_delivers_with_key,
        ),
        sqlite_trial(
            "sqlite_invisible_before_commit",
            sqlite::invisible_before_commit,
        ),
    ];
    #[cfg(feature = "postgres")]
    trials.extend(postgres::trials());
    #[cfg(not(feature = "postgres"))]
    trials.push(pg_feature_missing());

    let conclusion = libtest_mimic::run(&arguments, trials);
    #[cfg(feature = "postgres")]
    postgres::clean_up();
    conclusion.exit();
}

fn sqlite_trial<Fut>(name: &str, test: fn() -> Fut) -> Trial
where
    Fut: Future<Output = ()> + 'static,
{
    Trial::test(name, move || {
        runtime().block_on(test());
        Ok(())
    })
}

#[cfg(not(feature = "postgres"))]
fn pg_feature_missing() -> Trial {
    let reason = "built without the postgres feature: run cargo test --features postgres \
                  --test transactional_outbox";
    Trial::ignorable_test("pg_transactional_outbox", move || {
        Ok(libtest_mimic::Completion::ignored_with(reason))
    })
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime must start")
}

/// Returns an event for `receiver`, with `key` as its `Idempotency-Key`
/// if given.
fn event(receiver: &Receiver, body: &'static str, key: Option<&str>) -> http::Request<Full<Bytes>> {
    let mut builder = http::Request::post(receiver.url("/order-created"))
        .header("content-type", "application/json");
    if let Some(key) = key {
        builder = builder.header("idempotency-key", key);
    }
    builder
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap()
}

fn dispatcher(store: Arc<dyn MessageQueue>, poll_interval: Duration) -> Dispatcher {
    Dispatcher::new(store, client())
        .poll_interval(poll_interval)
        .attempt_timeout(Duration::from_secs(2))
}

/// Waits until `receiver` has seen `count` requests, and returns them.
async fn wait_for_deliveries(receiver: &Receiver, count: usize) -> Vec<Received> {
    let deadline = Instant::now() + DELIVERY_WAIT;
    while receiver.count() < count {
        assert!(
            Instant::now() < deadline,
            "receiver saw {} of {count} requests after {DELIVERY_WAIT:?}",
            receiver.count()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    receiver.received()
}

fn total(counts: &QueueCounts) -> u64 {
    counts.pending + counts.in_flight + counts.succeeded + counts.failed + counts.dead
}

mod sqlite {
    use super::*;

    struct Fixture {
        _dir: tempfile::TempDir,
        store: SqliteStore,
        outbox: OutboxLayer,
        receiver: Receiver,
    }

    async fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path().join("app.db")).await.unwrap();
        sqlx::query("CREATE TABLE orders (id INTEGER PRIMARY KEY, item TEXT NOT NULL)")
            .execute(store.pool())
            .await
            .unwrap();
        let outbox = OutboxLayer::background(Arc::new(store.clone()));
        let receiver = Receiver::start(always(200)).await;
        Fixture {
            _dir: dir,
            store,
            outbox,
            receiver,
        }
    }

    async fn orders(store: &SqliteStore) -> i64 {
        sqlx::query_scalar("SELECT COUNT(*) FROM orders")
            .fetch_one(store.pool())
            .await
            .unwrap()
    }

    pub(super) async fn rollback_leaves_nothing() {
        let f = fixture().await;
        let queue: Arc<dyn MessageQueue> = Arc::new(f.store.clone());
        let running = dispatcher(queue, Duration::from_millis(50)).spawn();

        let rolled_back = f
            .outbox
            .prepare(event(&f.receiver, "{\"order\":1}", None))
            .await
            .unwrap();
        let mut tx = f.store.pool().begin_with("BEGIN IMMEDIATE").await.unwrap();
        sqlx::query("INSERT INTO orders (id, item) VALUES (1, 'book')")
            .execute(&mut *tx)
            .await
            .unwrap();
        let stored = f
            .store
            .enqueue_in(&mut tx, slice::from_ref(&rolled_back))
            .await
            .unwrap();
        assert_eq!(stored, [true]);
        tx.rollback().await.unwrap();
        f.store.notify("outbox");

        assert_eq!(orders(&f.store).await, 0);
        assert!(f.store.get(rolled_back.id).await.unwrap().is_none());
        assert_eq!(total(&f.store.counts("outbox").await.unwrap()), 0);

        // A later committed message is delivered alone: the dispatcher,
        // which ran all along, never saw the rolled-back one.
        let committed = f
            .outbox
            .prepare(event(&f.receiver, "{\"order\":2}", None))
            .await
            .unwrap();
        let mut tx = f.store.pool().begin_with("BEGIN IMMEDIATE").await.unwrap();
        f.store
            .enqueue_in(&mut tx, slice::from_ref(&committed))
            .await
            .unwrap();
        tx.commit().await.unwrap();
        f.store.notify("outbox");

        let received = wait_for_deliveries(&f.receiver, 1).await;
        running.shutdown().await;
        assert_eq!(received.len(), 1);
        assert_eq!(
            received[0].header("idempotency-key"),
            Some(committed.id.to_string())
        );
        assert_eq!(f.receiver.count(), 1);
    }

    pub(super) async fn commit_delivers_with_key() {
        let f = fixture().await;
        let own_key = "order-7-created";
        let generated = f
            .outbox
            .prepare(event(&f.receiver, "{\"order\":7}", None))
            .await
            .unwrap();
        let keyed = f
            .outbox
            .prepare(event(&f.receiver, "{\"order\":8}", Some(own_key)))
            .await
            .unwrap();

        let mut tx = f.store.pool().begin_with("BEGIN IMMEDIATE").await.unwrap();
        sqlx::query("INSERT INTO orders (id, item) VALUES (7, 'pen')")
            .execute(&mut *tx)
            .await
            .unwrap();
        let stored = f
            .store
            .enqueue_in(&mut tx, &[generated.clone(), keyed.clone()])
            .await
            .unwrap();
        assert_eq!(stored, [true, true]);
        tx.commit().await.unwrap();
        f.store.notify("outbox");
        assert_eq!(orders(&f.store).await, 1);

        let queue: Arc<dyn MessageQueue> = Arc::new(f.store.clone());
        let running = dispatcher(queue, Duration::from_millis(50)).spawn();
        let mut received = wait_for_deliveries(&f.receiver, 2).await;
        running.shutdown().await;

        received.sort_by_key(|request| request.body.clone());
        assert_eq!(
            received[0].header("idempotency-key"),
            Some(generated.id.to_string())
        );
        assert_eq!(received[0].body, Bytes::from_static(b"{\"order\":7}"));
        assert_eq!(received[0].uri.path(), "/order-created");
        assert_eq!(
            received[1].header("idempotency-key").as_deref(),
            Some(own_key)
        );
        assert_eq!(f.store.counts("outbox").await.unwrap().succeeded, 2);
    }

    pub(super) async fn invisible_before_commit() {
        let f = fixture().await;
        let queue: Arc<dyn MessageQueue> = Arc::new(f.store.clone());
        let running = dispatcher(queue, Duration::from_millis(50)).spawn();
        let message = f
            .outbox
            .prepare(event(&f.receiver, "{\"order\":3}", None))
            .await
            .unwrap();

        let mut tx = f.store.pool().begin_with("BEGIN IMMEDIATE").await.unwrap();
        f.store
            .enqueue_in(&mut tx, slice::from_ref(&message))
            .await
            .unwrap();
        f.store.notify("outbox");

        // Other connections read the last committed state.
        assert!(f.store.get(message.id).await.unwrap().is_none());
        assert_eq!(total(&f.store.counts("outbox").await.unwrap()), 0);
        // The dispatcher polls meanwhile. Its claims wait for the write
        // lock this transaction holds, so they cannot run before the commit.
        tokio::time::sleep(HOLD_OPEN).await;
        assert_eq!(f.receiver.count(), 0, "delivered before the commit");

        tx.commit().await.unwrap();
        f.store.notify("outbox");
        let received = wait_for_deliveries(&f.receiver, 1).await;
        running.shutdown().await;
        assert_eq!(
            received[0].header("idempotency-key"),
            Some(message.id.to_string())
        );
    }
}

#[cfg(feature = "postgres")]
mod postgres {
    use sqlx::AssertSqlSafe;
    use tower_courier::store::postgres::{PostgresOptions, PostgresStore};

    use super::*;
    use crate::support::{run_id, server_url, trial, unique_name};

    const VARIABLE: &str = "TOWER_COURIER_POSTGRES_URL";

    /// The poll interval of dispatchers that must be woken by a
    /// notification: far longer than any wait in these trials, so a
    /// delivery within them cannot come from polling.
    const LONG_POLL: Duration = Duration::from_secs(30);

    pub(super) fn trials() -> Vec<Trial> {
        let url = server_url(VARIABLE);
        let url = url.as_deref();
        vec![
            trial(
                "pg_rollback_leaves_nothing",
                url,
                VARIABLE,
                rollback_leaves_nothing,
            ),
            trial(
                "pg_commit_delivers_with_key",
                url,
                VARIABLE,
                commit_delivers_with_key,
            ),
            trial(
                "pg_invisible_before_commit",
                url,
                VARIABLE,
                invisible_before_commit,
            ),
        ]
    }

    /// A store in a fresh schema with an `orders` table, a second store on
    /// the same schema for the dispatcher (as another instance would
    /// have), and a receiver.
    struct Fixture {
        store: PostgresStore,
        dispatcher_store: PostgresStore,
        outbox: OutboxLayer,
        receiver: Receiver,
        orders: String,
    }

    async fn fixture(url: &str) -> Fixture {
        let schema = unique_name(&format!("tx_{}_", run_id()));
        let options = PostgresOptions::new().schema(&schema);
        let store = PostgresStore::connect_with(url, options.clone())
            .await
            .unwrap();
        let dispatcher_store = PostgresStore::connect_with(url, options).await.unwrap();
        let orders = format!("{schema}.orders");
        let create = format!("CREATE TABLE {orders} (id int8 PRIMARY KEY, item text NOT NULL)");
        sqlx::query(AssertSqlSafe(create))
            .execute(store.pool())
            .await
            .unwrap();

        let outbox = OutboxLayer::background(Arc::new(store.clone()));
        let receiver = Receiver::start(always(200)).await;
        Fixture {
            store,
            dispatcher_store,
            outbox,
            receiver,
            orders,
        }
    }

    impl Fixture {
        async fn insert_order(&self, tx: &mut sqlx::PgConnection, id: i64) {
            let insert = format!("INSERT INTO {} (id, item) VALUES ($1, 'book')", self.orders);
            sqlx::query(AssertSqlSafe(insert))
                .bind(id)
                .execute(tx)
                .await
                .unwrap();
        }

        async fn orders(&self) -> i64 {
            let count = format!("SELECT COUNT(*) FROM {}", self.orders);
            sqlx::query_scalar(AssertSqlSafe(count))
                .fetch_one(self.store.pool())
                .await
                .unwrap()
        }

        /// Starts a dispatcher on the second store, polling only every
        /// [`LONG_POLL`], once that store's listener is listening.
        async fn dispatch(&self) -> tower_courier::worker::WorkerHandle {
            let queue: Arc<dyn MessageQueue> = Arc::new(self.dispatcher_store.clone());
            let running = dispatcher(queue, LONG_POLL).spawn();
            wait_for_listener(&self.dispatcher_store).await;
            running
        }

        async fn drop_schema(self) {
            let drop = format!("DROP SCHEMA {} CASCADE", self.store.schema());
            sqlx::query(AssertSqlSafe(drop))
                .execute(self.store.pool())
                .await
                .unwrap();
        }
    }

    async fn wait_for_listener(store: &PostgresStore) {
        let name = format!("courier-listen {}", store.schema());
        for _ in 0..100 {
            let listening: bool = sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM pg_stat_activity \
                 WHERE application_name = $1 AND query LIKE 'LISTEN%')",
            )
            .bind(&name)
            .fetch_one(store.pool())
            .await
            .unwrap();
            if listening {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("no listener backend named {name:?} appeared within 10 s");
    }

    async fn rollback_leaves_nothing(url: String) {
        let f = fixture(&url).await;
        let running = f.dispatch().await;

        let rolled_back = f
            .outbox
            .prepare(event(&f.receiver, "{\"order\":1}", None))
            .await
            .unwrap();
        let mut tx = f.store.pool().begin().await.unwrap();
        f.insert_order(&mut tx, 1).await;
        let stored = f
            .store
            .enqueue_in(&mut tx, slice::from_ref(&rolled_back))
            .await
            .unwrap();
        assert_eq!(stored, [true]);
        tx.rollback().await.unwrap();

        assert_eq!(f.orders().await, 0);
        assert!(f.store.get(rolled_back.id).await.unwrap().is_none());
        assert_eq!(total(&f.store.counts("outbox").await.unwrap()), 0);

        let committed = f
            .outbox
            .prepare(event(&f.receiver, "{\"order\":2}", None))
            .await
            .unwrap();
        let mut tx = f.store.pool().begin().await.unwrap();
        f.store
            .enqueue_in(&mut tx, slice::from_ref(&committed))
            .await
            .unwrap();
        tx.commit().await.unwrap();

        let received = wait_for_deliveries(&f.receiver, 1).await;
        running.shutdown().await;
        assert_eq!(received.len(), 1);
        assert_eq!(
            received[0].header("idempotency-key"),
            Some(committed.id.to_string())
        );
        f.drop_schema().await;
    }

    async fn commit_delivers_with_key(url: String) {
        let f = fixture(&url).await;
        let own_key = "order-7-created";
        let generated = f
            .outbox
            .prepare(event(&f.receiver, "{\"order\":7}", None))
            .await
            .unwrap();
        let keyed = f
            .outbox
            .prepare(event(&f.receiver, "{\"order\":8}", Some(own_key)))
            .await
            .unwrap();
        let running = f.dispatch().await;

        let mut tx = f.store.pool().begin().await.unwrap();
        f.insert_order(&mut tx, 7).await;
        let stored = f
            .store
            .enqueue_in(&mut tx, &[generated.clone(), keyed.clone(), keyed.clone()])
            .await
            .unwrap();
        assert_eq!(stored, [true, true, false], "a repeated id is skipped");
        tx.commit().await.unwrap();
        assert_eq!(f.orders().await, 1);

        let mut received = wait_for_deliveries(&f.receiver, 2).await;
        running.shutdown().await;
        received.sort_by_key(|request| request.body.clone());
        assert_eq!(received.len(), 2);
        assert_eq!(
            received[0].header("idempotency-key"),
            Some(generated.id.to_string())
        );
        assert_eq!(received[0].body, Bytes::from_static(b"{\"order\":7}"));
        assert_eq!(
            received[1].header("idempotency-key").as_deref(),
            Some(own_key)
        );
        assert_eq!(f.store.counts("outbox").await.unwrap().succeeded, 2);
        f.drop_schema().await;
    }

    async fn invisible_before_commit(url: String) {
        let f = fixture(&url).await;
        let running = f.dispatch().await;
        let message = f
            .outbox
            .prepare(event(&f.receiver, "{\"order\":3}", None))
            .await
            .unwrap();

        let mut tx = f.store.pool().begin().await.unwrap();
        f.store
            .enqueue_in(&mut tx, slice::from_ref(&message))
            .await
            .unwrap();

        let claimed = f
            .dispatcher_store
            .claim("outbox", 10, Duration::from_secs(30))
            .await
            .unwrap();
        assert!(claimed.is_empty(), "claimed before the commit: {claimed:?}");
        assert!(f.store.get(message.id).await.unwrap().is_none());
        assert_eq!(total(&f.store.counts("outbox").await.unwrap()), 0);
        tokio::time::sleep(HOLD_OPEN).await;
        assert_eq!(f.receiver.count(), 0, "delivered before the commit");

        // The dispatcher polls only every 30 s, so a delivery within the
        // wait below needs the notification that the commit sends.
        tx.commit().await.unwrap();
        let received = wait_for_deliveries(&f.receiver, 1).await;
        running.shutdown().await;
        assert_eq!(
            received[0].header("idempotency-key"),
            Some(message.id.to_string())
        );
        f.drop_schema().await;
    }

    /// Drops every schema this run created, including those of failed
    /// trials.
    pub(super) fn clean_up() {
        let Some(url) = server_url(VARIABLE) else {
            return;
        };
        runtime().block_on(async {
            let Ok(pool) = sqlx::PgPool::connect(&url).await else {
                return;
            };
            let pattern = format!("tx\\_{}\\_%", run_id());
            let schemas: Vec<String> =
                sqlx::query_scalar("SELECT nspname::text FROM pg_namespace WHERE nspname LIKE $1")
                    .bind(pattern)
                    .fetch_all(&pool)
                    .await
                    .unwrap_or_default();
            for schema in schemas {
                let drop = format!("DROP SCHEMA {schema} CASCADE");
                let _ = sqlx::query(AssertSqlSafe(drop)).execute(&pool).await;
            }
        });
    }
}
