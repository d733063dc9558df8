//! Throughput of the SQLite store with `synchronous=FULL`.
//!
//! - `sqlite_enqueue/group_commit/N`: N producers each enqueue one
//!   512-byte message at a time through the group-committing writer.
//! - `sqlite_enqueue/tx_per_message/N`: the same with `max_batch(1)`, so
//!   every message is its own transaction and disk sync: the baseline.
//! - `sqlite_enqueue/group_commit_sync_normal/64`: group commit with
//!   `synchronous=NORMAL`, which skips the per-commit sync, to show how
//!   much of the cost is the disk sync.
//! - `sqlite_claim_complete/workers_4`: four workers claim 64 messages at
//!   a time and complete each one.
//!
//! Run with `cargo bench --bench store`; criterion reports elements/s,
//! over 10 samples of about 5 s each after 1 s of warm-up. `QUICK=1` runs
//! 200 ms of warm-up and 500 ms of measurement per benchmark instead, in
//! well under a minute.
//!
//! After criterion's report the run prints one `name: value unit` line per
//! benchmark, the messages over the time of every timed call, warm-up
//! included: `enqueue_sqlite_<case>_<producers>` for each enqueue case
//! (`enqueue_sqlite_group_commit_64: 31000 msg/s`) and
//! `claim_complete_sqlite_workers_4`. Then it prints the ratios of two of
//! those lines:
//!
//! - `ratio_sqlite_group_commit_1` and `ratio_sqlite_group_commit_64`:
//!   group commit over one transaction per message, with 1 and 64
//!   producers;
//! - `ratio_sqlite_sync_normal_64`: group commit with `synchronous=NORMAL`
//!   over the same with `synchronous=FULL`.
//!
//! The benchmarks run one after another, so load from other processes can
//! move a ratio.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use criterion::{Criterion, Throughput};
use http::{HeaderValue, Method};
use tokio::runtime::Runtime;
use tower_courier::store::sqlite::{SqliteOptions, SqliteStore, Synchronous};
use tower_courier::store::{MessageQueue, NewMessage};

use self::common::Recorder;

const BODY_BYTES: usize = 512;
const QUEUE: &str = "bench";

fn message() -> NewMessage {
    let mut message = NewMessage::new(
        QUEUE,
        "http://127.0.0.1:9",
        Method::POST,
        "/orders",
        SystemTime::now(),
    );
    message.body = Bytes::from(vec![b'x'; BODY_BYTES]);
    message
        .headers
        .insert("content-type", HeaderValue::from_static("application/json"));
    message
}

/// Opens a store in a fresh file; the directory lives as long as the store.
async fn open(options: SqliteOptions) -> (SqliteStore, tempfile::TempDir) {
    let directory = tempfile::tempdir().expect("temporary directory");
    let store = SqliteStore::open_with(directory.path().join("bench.db"), options)
        .await
        .expect("open the bench database");
    (store, directory)
}

/// Enqueues `total` messages from `producers` tasks, one message per call,
/// and returns the elapsed time.
async fn enqueue_from(store: &SqliteStore, producers: u64, total: u64) -> Duration {
    let start = Instant::now();
    let tasks: Vec<_> = (0..producers)
        .map(|producer| {
            let store = store.clone();
            let count = total / producers + u64::from(producer < total % producers);
            tokio::spawn(async move {
                for _ in 0..count {
                    store.enqueue(vec![message()]).await.expect("enqueue");
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("producer panicked");
    }
    start.elapsed()
}

fn enqueue(c: &mut Criterion, recorder: &Recorder) {
    let runtime = Runtime::new().expect("tokio runtime");
    let mut group = c.benchmark_group("sqlite_enqueue");
    group.throughput(Throughput::Elements(1));

    let cases = [
        (
            "group_commit",
            Synchronous::Full,
            512,
            &[1_u64, 64, 256][..],
        ),
        ("tx_per_message", Synchronous::Full, 1, &[1, 64][..]),
        (
            "group_commit_sync_normal",
            Synchronous::Normal,
            512,
            &[64][..],
        ),
    ];
    for (name, synchronous, max_batch, producer_counts) in cases {
        for &producers in producer_counts {
            let options = SqliteOptions::new()
                .synchronous(synchronous)
                .max_batch(max_batch);
            let (store, _directory) = runtime.block_on(open(options));
            let line = &format!("enqueue_sqlite_{name}_{producers}");
            group.bench_function(format!("{name}/{producers}"), |b| {
                b.to_async(&runtime).iter_custom(|iters| {
                    let store = store.clone();
                    async move {
                        let elapsed = enqueue_from(&store, producers, iters).await;
                        recorder.add(line, "msg/s", iters, elapsed);
                        elapsed
                    }
                });
            });
        }
    }
    group.finish();
}

/// Claims and completes `total` messages with `workers` tasks.
async fn claim_and_complete(store: &SqliteStore, workers: usize) -> Duration {
    let start = Instant::now();
    let tasks: Vec<_> = (0..workers)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move {
                loop {
                    let claimed = MessageQueue::claim(&store, QUEUE, 64, Duration::from_secs(60))
                        .await
                        .expect("claim");
                    if claimed.is_empty() {
                        return;
                    }
                    let completes = claimed
                        .iter()
                        .map(|claim| MessageQueue::complete(&store, &claim.lease, None));
                    for result in futures_util::future::join_all(completes).await {
                        result.expect("complete");
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("worker panicked");
    }
    start.elapsed()
}

fn claim_complete(c: &mut Criterion, recorder: &Recorder) {
    let runtime = Runtime::new().expect("tokio runtime");
    let mut group = c.benchmark_group("sqlite_claim_complete");
    group.throughput(Throughput::Elements(1));

    let (store, _directory) = runtime.block_on(open(SqliteOptions::new()));
    let store = Arc::new(store);
    group.bench_function("workers_4", |b| {
        b.to_async(&runtime).iter_custom(|iters| {
            let store = store.clone();
            async move {
                // Filling the queue is not measured.
                enqueue_batches(&store, iters).await;
                let elapsed = claim_and_complete(&store, 4).await;
                recorder.add("claim_complete_sqlite_workers_4", "msg/s", iters, elapsed);
                elapsed
            }
        });
    });
    group.finish();
}

async fn enqueue_batches(store: &SqliteStore, total: u64) {
    let mut left = total;
    while left > 0 {
        let size = left.min(512);
        let batch = (0..size).map(|_| message()).collect();
        store.enqueue(batch).await.expect("enqueue");
        left -= size;
    }
}

fn main() {
    let mut criterion = common::configure_samples(Criterion::default(), Duration::from_secs(5))
        .configure_from_args();
    let recorder = Recorder::default();
    enqueue(&mut criterion, &recorder);
    claim_complete(&mut criterion, &recorder);
    criterion.final_summary();

    println!();
    recorder.print();
    print_ratios(&recorder);
}

/// Prints each ratio of two recorded lines as a `name: value x` line,
/// skipping any whose benchmarks a command-line filter left out.
fn print_ratios(recorder: &Recorder) {
    let ratios = [
        (
            "ratio_sqlite_group_commit_1",
            "enqueue_sqlite_group_commit_1",
            "enqueue_sqlite_tx_per_message_1",
        ),
        (
            "ratio_sqlite_group_commit_64",
            "enqueue_sqlite_group_commit_64",
            "enqueue_sqlite_tx_per_message_64",
        ),
        (
            "ratio_sqlite_sync_normal_64",
            "enqueue_sqlite_group_commit_sync_normal_64",
            "enqueue_sqlite_group_commit_64",
        ),
    ];
    for (name, numerator, denominator) in ratios {
        if let (Some(numerator), Some(denominator)) =
            (recorder.value(numerator), recorder.value(denominator))
        {
            println!("{name}: {:.2} x", numerator / denominator);
        }
    }
}
