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
//!
//! The run prints a markdown table of the enqueue figures, then one
//! `name: value unit` line per figure:
//!
//! - `enqueue_postgres_tx_per_message_N` and
//!   `enqueue_postgres_group_commit_N` in msg/s, and
//!   `ratio_postgres_group_commit_N` (group commit over one transaction per
//!   enqueue), for N = 1 and 64 producers;
//! - `churn_messages`, `churn_time`, and `churn_live_tuples_*` and
//!   `churn_dead_tuples_*` of the messages table `before_vacuum` and
//!   `after_vacuum`;
//! - with `COURIER_BENCH_CHURN_SECS` set, a table of the sustained churn
//!   and the lines `churn_sustained_messages_Ss`,
//!   `churn_sustained_dead_tuples_Ss` and `churn_sustained_autovacuum_runs_Ss`
//!   for each sample taken S seconds in.
//!
//! Without `TOWER_COURIER_POSTGRES_URL` it prints only
//! `postgres: not run (TOWER_COURIER_POSTGRES_URL is not set)` and exits
//! successfully.
//!
//! `QUICK=1` runs in well under a minute: 250 and 2,560 enqueues instead of
//! 1,000 and 8,000, a churn of 2,000 messages, and no sustained churn. It
//! ignores `COURIER_BENCH_CHURN_MESSAGES` and `COURIER_BENCH_CHURN_SECS`.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use http::Method;
use sqlx::postgres::{PgPool, PgPoolOptions};
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
        println!("postgres: not run (TOWER_COURIER_POSTGRES_URL is not set)");
        return;
    };
    let settings = Settings::from_env();

    println!(
        "| producers | messages | one transaction each (msg/s) | group commit (msg/s) | ratio |"
    );
    println!("|---:|---:|---:|---:|---:|");
    let mut lines = Vec::new();
    for (producers, messages) in settings.enqueue_runs {
        let single = throughput(&url, false, producers, messages).await;
        let grouped = throughput(&url, true, producers, messages).await;
        let ratio = grouped / single;
        println!("| {producers} | {messages} | {single:.0} | {grouped:.0} | {ratio:.1} |");
        lines.push(format!(
            "enqueue_postgres_tx_per_message_{producers}: {single:.0} msg/s"
        ));
        lines.push(format!(
            "enqueue_postgres_group_commit_{producers}: {grouped:.0} msg/s"
        ));
        lines.push(format!(
            "ratio_postgres_group_commit_{producers}: {ratio:.2} x"
        ));
    }
    println!();
    for line in lines {
        println!("{line}");
    }

    churn(&url, settings.churn_messages).await;
    match settings.sustained {
        Sustained::Run(length) => sustained_churn(&url, length).await,
        Sustained::SkippedByQuick => {
            println!("churn_sustained: not run (QUICK=1 skips it)");
        }
        Sustained::NotRequested => {}
    }
}

/// The sizes of one run.
struct Settings {
    /// Producers and messages of each enqueue comparison.
    enqueue_runs: [(usize, usize); 2],
    churn_messages: usize,
    sustained: Sustained,
}

/// Whether the sustained churn runs, and for how long.
enum Sustained {
    Run(Duration),
    NotRequested,
    /// `COURIER_BENCH_CHURN_SECS` is set, but `QUICK=1` wins.
    SkippedByQuick,
}

impl Settings {
    /// Reads `QUICK`, `COURIER_BENCH_CHURN_MESSAGES` and
    /// `COURIER_BENCH_CHURN_SECS`.
    fn from_env() -> Self {
        let quick = std::env::var("QUICK").is_ok_and(|value| value == "1");
        let sustained_secs = std::env::var("COURIER_BENCH_CHURN_SECS")
            .ok()
            .and_then(|seconds| seconds.parse().ok());
        if quick {
            return Self {
                enqueue_runs: [(1, 250), (64, 2_560)],
                churn_messages: 2_000,
                sustained: match sustained_secs {
                    Some(_) => Sustained::SkippedByQuick,
                    None => Sustained::NotRequested,
                },
            };
        }

        // COURIER_BENCH_CHURN_MESSAGES sets the churn size (default 20,000;
        // the figures in docs/BENCHMARKS.md also record a run of 1,000,000).
        let churn_messages = std::env::var("COURIER_BENCH_CHURN_MESSAGES")
            .ok()
            .and_then(|messages| messages.parse().ok())
            .unwrap_or(20_000);
        Self {
            enqueue_runs: [(1, 1_000), (64, 8_000)],
            churn_messages,
            sustained: match sustained_secs {
                Some(seconds) => Sustained::Run(Duration::from_secs(seconds)),
                None => Sustained::NotRequested,
            },
        }
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

    drop_schema(store.pool(), store.schema()).await;
    (per_producer * producers) as f64 / elapsed.as_secs_f64()
}

/// Sends `messages` (rounded down to whole batches of 500) through enqueue,
/// claim, complete and purge, then prints the time it took and the messages
/// table's live and dead tuples before and after a vacuum.
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
    let churned = messages / 500 * 500;
    println!("churn_messages: {churned} messages");
    println!("churn_time: {:.1} s", elapsed.as_secs_f64());

    // A server process publishes its table statistics with a delay, and
    // all of them when its connection closes. A short run read 0 dead
    // tuples here before this close, so the figures below are read
    // through a fresh pool after closing the store's connections.
    let schema = store.schema().to_owned();
    let pool = store.pool().clone();
    drop(store);
    pool.close().await;
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .connect(url)
        .await
        .unwrap();

    let (live, dead) = tuples(&pool, &schema).await;
    println!("churn_live_tuples_before_vacuum: {live} tuples");
    println!("churn_dead_tuples_before_vacuum: {dead} tuples");
    let vacuum = format!("VACUUM {schema}.messages");
    sqlx::query(AssertSqlSafe(vacuum))
        .execute(&pool)
        .await
        .unwrap();
    let (live, dead) = tuples(&pool, &schema).await;
    println!("churn_live_tuples_after_vacuum: {live} tuples");
    println!("churn_dead_tuples_after_vacuum: {dead} tuples");
    drop_schema(&pool, &schema).await;
}

/// Churns messages for `length`, sampling the dead tuples every 15 s, to
/// show whether autovacuum keeps up with the table's settings. Runs only
/// when `COURIER_BENCH_CHURN_SECS` is set, because autovacuum wakes once a
/// minute by default and a useful run takes minutes.
async fn sustained_churn(url: &str, length: Duration) {
    let store = open(url, PostgresOptions::new()).await;
    let started = Instant::now();
    let mut next_sample = Duration::ZERO;
    let mut churned = 0;
    let mut lines = Vec::new();
    println!();
    println!("| seconds | messages churned | dead tuples | autovacuum runs |");
    println!("|---:|---:|---:|---:|");
    while started.elapsed() < length {
        if started.elapsed() >= next_sample {
            let (dead, vacuums) = dead_and_vacuums(&store).await;
            let seconds = next_sample.as_secs();
            println!("| {seconds} | {churned} | {dead} | {vacuums} |");
            lines.push(format!(
                "churn_sustained_messages_{seconds}s: {churned} messages"
            ));
            lines.push(format!(
                "churn_sustained_dead_tuples_{seconds}s: {dead} tuples"
            ));
            lines.push(format!(
                "churn_sustained_autovacuum_runs_{seconds}s: {vacuums} runs"
            ));
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
    drop_schema(store.pool(), store.schema()).await;

    println!();
    for line in lines {
        println!("{line}");
    }
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
/// 700 ms for server processes that just closed to publish theirs.
async fn tuples(pool: &PgPool, schema: &str) -> (i64, i64) {
    tokio::time::sleep(Duration::from_millis(700)).await;
    let row = sqlx::query(
        "SELECT n_live_tup, n_dead_tup FROM pg_stat_user_tables \
         WHERE schemaname = $1 AND relname = 'messages'",
    )
    .bind(schema)
    .fetch_one(pool)
    .await
    .unwrap();
    (row.get(0), row.get(1))
}

async fn open(url: &str, options: PostgresOptions) -> PostgresStore {
    let schema = format!("bench_{}", MessageId::new().to_string().replace('-', ""));
    let options = options.schema(schema).max_connections(POOL_SIZE);
    PostgresStore::connect_with(url, options).await.unwrap()
}

async fn drop_schema(pool: &PgPool, schema: &str) {
    let sql = format!("DROP SCHEMA {schema} CASCADE");
    sqlx::query(AssertSqlSafe(sql)).execute(pool).await.unwrap();
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
