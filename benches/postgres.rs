//! PostgreSQL enqueue throughput, group commit against one transaction per
//! enqueue, and the dead tuples a churning queue leaves.
//!
//! Runs against `TOWER_COURIER_POSTGRES_URL` (for example
//! `postgres://postgres@127.0.0.1:5432/test`), in fresh schemas it drops
//! afterwards:
//!
//! ```text
//! TOWER_COURIER_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/test \
//!     cargo bench --features postgres --bench postgres
//! ```
//!
//! Every configuration runs in the same process, so the printed ratios
//! compare like with like. Absolute figures depend on the machine's disk
//! and on whatever else it runs.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use http::Method;
use sqlx::{AssertSqlSafe, Row};
use tower_courier::MessageId;
use tower_courier::store::postgres::{PostgresOptions, PostgresStore};
use tower_courier::store::{MessageQueue, MessageState, NewMessage};

/// Connections per store; the same in every configuration, so the
/// one-transaction-per-enqueue baseline is not starved of connections.
const POOL_SIZE: u32 = 32;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let Ok(url) = std::env::var("TOWER_COURIER_POSTGRES_URL") else {
        eprintln!("set TOWER_COURIER_POSTGRES_URL to run this benchmark");
        return;
    };

    println!(
        "| producers | messages | one transaction each (msg/s) | group commit (msg/s) | ratio |"
    );
    println!("|---:|---:|---:|---:|---:|");
    for (producers, messages) in [(1, 1_000), (64, 8_000)] {
        let single = throughput(&url, false, producers, messages).await;
        let grouped = throughput(&url, true, producers, messages).await;
        println!(
            "| {producers} | {messages} | {single:.0} | {grouped:.0} | {:.1} |",
            grouped / single
        );
    }

    // COURIER_BENCH_CHURN_MESSAGES sets the churn size (default 20,000;
    // the figures in docs/BENCHMARKS.md also record a run of 1,000,000).
    let churned = std::env::var("COURIER_BENCH_CHURN_MESSAGES")
        .ok()
        .and_then(|messages| messages.parse().ok())
        .unwrap_or(20_000);
    churn(&url, churned).await;

    let sustained = std::env::var("COURIER_BENCH_CHURN_SECS")
        .ok()
        .and_then(|seconds| seconds.parse().ok());
    if let Some(seconds) = sustained {
        sustained_churn(&url, Duration::from_secs(seconds)).await;
    }
}

/// Returns messages a second for `messages` enqueues of one message each,
/// spread over `producers` concurrent tasks.
async fn throughput(url: &str, group_commit: bool, producers: usize, messages: usize) -> f64 {
    let store = Arc::new(open(url, PostgresOptions::new().group_commit(group_commit)).await);
    let per_producer = messages / producers;

    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..producers {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..per_producer {
                store.enqueue(vec![message()]).await.unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let elapsed = started.elapsed();

    drop_schema(&store).await;
    (per_producer * producers) as f64 / elapsed.as_secs_f64()
}

/// Sends `messages` through enqueue, claim, complete and purge, then prints
/// the messages table's live and dead tuples before and after a vacuum.
async fn churn(url: &str, messages: usize) {
    let store = open(url, PostgresOptions::new()).await;
    let started = Instant::now();
    for _ in 0..messages / 500 {
        let batch: Vec<_> = (0..500).map(|_| message()).collect();
        store.enqueue(batch).await.unwrap();
        let claimed = store
            .claim("bench", 500, Duration::from_secs(60))
            .await
            .unwrap();
        // Completes of one claim run concurrently, as a dispatcher's do,
        // so the store can batch them.
        let completes = claimed
            .iter()
            .map(|claim| store.complete(&claim.lease, None));
        for result in futures_util::future::join_all(completes).await {
            result.unwrap();
        }
        let now = SystemTime::now() + Duration::from_secs(1);
        store
            .purge("bench", MessageState::Succeeded, now)
            .await
            .unwrap();
    }
    let elapsed = started.elapsed();

    let (live, dead) = tuples(&store).await;
    println!();
    println!(
        "churn: {messages} messages enqueued, claimed, completed and purged in {:.1} s",
        elapsed.as_secs_f64()
    );
    println!("churn: messages table before vacuum: {live} live, {dead} dead tuples");
    let vacuum = format!("VACUUM {}.messages", store.schema());
    sqlx::query(AssertSqlSafe(vacuum))
        .execute(store.pool())
        .await
        .unwrap();
    let (live, dead) = tuples(&store).await;
    println!("churn: messages table after vacuum: {live} live, {dead} dead tuples");
    drop_schema(&store).await;
}

/// Churns messages for `length`, printing the dead tuples every 15 s, to
/// show whether autovacuum keeps up with the table's settings. Runs only
/// when `COURIER_BENCH_CHURN_SECS` is set, because autovacuum wakes once a
/// minute by default and a useful run takes minutes.
async fn sustained_churn(url: &str, length: Duration) {
    let store = open(url, PostgresOptions::new()).await;
    let started = Instant::now();
    let mut next_sample = Duration::ZERO;
    let mut churned = 0;
    println!();
    println!("| seconds | messages churned | dead tuples | autovacuum runs |");
    println!("|---:|---:|---:|---:|");
    while started.elapsed() < length {
        if started.elapsed() >= next_sample {
            let (dead, vacuums) = dead_and_vacuums(&store).await;
            println!(
                "| {} | {churned} | {dead} | {vacuums} |",
                next_sample.as_secs()
            );
            next_sample += Duration::from_secs(15);
        }
        let batch: Vec<_> = (0..100).map(|_| message()).collect();
        store.enqueue(batch).await.unwrap();
        let claimed = store
            .claim("bench", 100, Duration::from_secs(60))
            .await
            .unwrap();
        // Completes of one claim run concurrently, as a dispatcher's do,
        // so the store can batch them.
        let completes = claimed
            .iter()
            .map(|claim| store.complete(&claim.lease, None));
        for result in futures_util::future::join_all(completes).await {
            result.unwrap();
        }
        let now = SystemTime::now() + Duration::from_secs(1);
        store
            .purge("bench", MessageState::Succeeded, now)
            .await
            .unwrap();
        churned += claimed.len();
    }
    drop_schema(&store).await;
}

async fn dead_and_vacuums(store: &PostgresStore) -> (i64, i64) {
    let row = sqlx::query(
        "SELECT n_dead_tup, autovacuum_count FROM pg_stat_user_tables \
         WHERE schemaname = $1 AND relname = 'messages'",
    )
    .bind(store.schema())
    .fetch_one(store.pool())
    .await
    .unwrap();
    (row.get(0), row.get(1))
}

/// Returns the live and dead tuple estimates of the messages table, after
/// waiting for the statistics collector to publish them.
async fn tuples(store: &PostgresStore) -> (i64, i64) {
    tokio::time::sleep(Duration::from_millis(700)).await;
    let row = sqlx::query(
        "SELECT n_live_tup, n_dead_tup FROM pg_stat_user_tables \
         WHERE schemaname = $1 AND relname = 'messages'",
    )
    .bind(store.schema())
    .fetch_one(store.pool())
    .await
    .unwrap();
    (row.get(0), row.get(1))
}

async fn open(url: &str, options: PostgresOptions) -> PostgresStore {
    let schema = format!("bench_{}", MessageId::new().to_string().replace('-', ""));
    let options = options.schema(schema).max_connections(POOL_SIZE);
    PostgresStore::connect_with(url, options).await.unwrap()
}

async fn drop_schema(store: &PostgresStore) {
    let sql = format!("DROP SCHEMA {} CASCADE", store.schema());
    sqlx::query(AssertSqlSafe(sql))
        .execute(store.pool())
        .await
        .unwrap();
}

fn message() -> NewMessage {
    let mut message = NewMessage::new(
        "bench",
        "http://127.0.0.1:9",
        Method::POST,
        "/orders",
        SystemTime::now(),
    );
    message.body = vec![b'x'; 256].into();
    message
}
