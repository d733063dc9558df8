//! Criterion micro-benchmarks of every store and of the backoff.
//!
//! - `idempotency/<store>/<clients>`: claim a fresh `Idempotency-Key` and
//!   complete it with a small stored response, the store work of one
//!   request through the idempotency layer, from 1 and 32 concurrent
//!   clients.
//! - `enqueue/<store>/<producers>`: enqueue one 512-byte message per call
//!   and wait for the reply, from 1 and 64 concurrent producers.
//! - `claim_complete/<store>/workers_4`: four workers claim 64 messages at
//!   a time and complete each one; the queue is filled before the timer
//!   starts.
//! - `backoff/...`: one `Backoff` computation.
//!
//! The stores are memory and SQLite (`synchronous=FULL`, the shipped
//! default), plus PostgreSQL and Redis when built with their features and
//! `TOWER_COURIER_POSTGRES_URL` or `TOWER_COURIER_REDIS_URL` is set:
//!
//! ```text
//! cargo bench --bench micro
//! TOWER_COURIER_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/test \
//! TOWER_COURIER_REDIS_URL=redis://127.0.0.1:6379 \
//!     cargo bench --features postgres,redis --bench micro
//! ```
//!
//! After criterion's report the run prints one `name: value unit` line per
//! benchmark: total operations over total time of every timed call of that
//! benchmark, warm-up included, so a script can read them. `QUICK=1` runs
//! short warm-ups and measurements.

mod backends;
#[path = "../common/mod.rs"]
mod common;
mod workloads;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use criterion::{BenchmarkGroup, Criterion, SamplingMode, Throughput, measurement::WallTime};
use tokio::runtime::Runtime;
use tower_courier::retry::Backoff;

use self::backends::{Backend, Opened};
use self::common::Recorder;

/// A store is replaced by a fresh one once this many operations went into
/// it, so that the memory store of a long run does not grow by gigabytes.
const ROTATE_AFTER: u64 = 1_000_000;

/// Iterations run untimed on every fresh store; see [`Slot::run`].
const SETTLE_ITERATIONS: u64 = 20;

fn main() {
    let mut criterion = common::configure_samples(Criterion::default(), Duration::from_secs(3))
        .configure_from_args();
    let runtime = Runtime::new().expect("tokio runtime");
    // Stores dropped outside `block_on` still find the runtime they need.
    let _context = runtime.enter();
    let (backends, skipped) = backends::available();
    let recorder = Recorder::default();

    let bench = Bench {
        runtime: &runtime,
        recorder: &recorder,
    };
    bench.idempotency(&mut criterion, &backends);
    bench.enqueue(&mut criterion, &backends);
    bench.claim_complete(&mut criterion, &backends);
    bench.backoff(&mut criterion);

    criterion.final_summary();
    println!();
    recorder.print();
    for line in skipped {
        println!("{line}");
    }

    for backend in &backends {
        runtime.block_on(backend.clean_up());
    }
}

/// One backoff computation for an attempt number.
type Compute = fn(&Backoff, u32) -> Duration;

struct Bench<'a> {
    runtime: &'a Runtime,
    recorder: &'a Recorder,
}

impl Bench<'_> {
    /// Benchmarks idempotency claim and complete. One iteration is one claim
    /// and complete by each client.
    fn idempotency(&self, criterion: &mut Criterion, backends: &[Backend]) {
        let mut group = store_group(criterion, "idempotency");
        let next_key = &Arc::new(AtomicU64::new(0));
        for backend in backends {
            for clients in [1, 32] {
                group.throughput(Throughput::Elements(clients));
                let slot = &Slot::new(backend, clients);
                let name = &format!("idempotency_{}_{clients}", backend.name);
                let run = |store: Arc<Opened>, each| async move {
                    workloads::idempotency(&store.records, clients, each, next_key).await
                };
                group.bench_function(format!("{}/{clients}", backend.name), |b| {
                    b.to_async(self.runtime).iter_custom(|iters| async move {
                        let elapsed = slot.run(iters, run).await;
                        self.recorder.add(name, "ops/s", iters * clients, elapsed);
                        elapsed
                    });
                });
            }
        }
        group.finish();
    }

    /// Benchmarks enqueue. One iteration is one enqueue by each producer.
    fn enqueue(&self, criterion: &mut Criterion, backends: &[Backend]) {
        let mut group = store_group(criterion, "enqueue");
        for backend in backends {
            for producers in [1, 64] {
                group.throughput(Throughput::Elements(producers));
                let slot = &Slot::new(backend, producers);
                let name = &format!("enqueue_{}_{producers}", backend.name);
                let run = |store: Arc<Opened>, each| async move {
                    workloads::enqueue(&store.queue, producers, each).await
                };
                group.bench_function(format!("{}/{producers}", backend.name), |b| {
                    b.to_async(self.runtime).iter_custom(|iters| async move {
                        let elapsed = slot.run(iters, run).await;
                        self.recorder.add(name, "msg/s", iters * producers, elapsed);
                        elapsed
                    });
                });
            }
        }
        group.finish();
    }

    /// Benchmarks claim and complete. One iteration is one full claim and
    /// its completes by each of the four workers.
    fn claim_complete(&self, criterion: &mut Criterion, backends: &[Backend]) {
        const WORKERS: usize = 4;
        let per_iteration = (WORKERS * workloads::CLAIM_SIZE) as u64;

        let mut group = store_group(criterion, "claim_complete");
        group.throughput(Throughput::Elements(per_iteration));
        for backend in backends {
            let slot = &Slot::new(backend, per_iteration);
            let name = &format!("claim_complete_{}", backend.name);
            let run = |store: Arc<Opened>, iterations| async move {
                // Filling the queue is not timed.
                workloads::fill(&store.queue, iterations * per_iteration).await;
                workloads::claim_complete(&store.queue, WORKERS).await
            };
            group.bench_function(format!("{}/workers_{WORKERS}", backend.name), |b| {
                b.to_async(self.runtime).iter_custom(|iters| async move {
                    let elapsed = slot.run(iters, run).await;
                    self.recorder
                        .add(name, "msg/s", iters * per_iteration, elapsed);
                    elapsed
                });
            });
        }
        group.finish();
    }

    fn backoff(&self, criterion: &mut Criterion) {
        let mut group = criterion.benchmark_group("backoff");
        let backoff = Backoff::default();
        let cases: [(&str, Compute); 3] = [
            ("ceiling", |backoff, attempt| backoff.ceiling(attempt)),
            ("delay", |backoff, attempt| backoff.delay(attempt)),
            ("delay_after_retry_after", |backoff, attempt| {
                backoff.delay_after(attempt, Some(Duration::from_secs(5)))
            }),
        ];
        for (case, compute) in cases {
            let name = format!("backoff_{case}");
            group.bench_function(case, |b| {
                b.iter_custom(|iters| {
                    let start = Instant::now();
                    for iteration in 0..iters {
                        // Attempts 1 to 16 cover growth and the cap.
                        let attempt = (iteration % 16) as u32 + 1;
                        std::hint::black_box(compute(&backoff, std::hint::black_box(attempt)));
                    }
                    let elapsed = start.elapsed();
                    self.recorder.add(&name, "ns", iters, elapsed);
                    elapsed
                });
            });
        }
        group.finish();
    }
}

/// Returns a group for store benchmarks: throughput in operations, and
/// equal-sized samples, because a store operation takes microseconds to
/// milliseconds.
fn store_group<'c>(criterion: &'c mut Criterion, name: &str) -> BenchmarkGroup<'c, WallTime> {
    let mut group = criterion.benchmark_group(name);
    group.throughput(Throughput::Elements(1));
    group.sampling_mode(SamplingMode::Flat);
    group
}

/// The store one benchmark writes to, replaced by a fresh one after
/// [`ROTATE_AFTER`] operations.
struct Slot<'a> {
    backend: &'a Backend,
    per_iteration: u64,
    current: tokio::sync::Mutex<Option<(Arc<Opened>, u64)>>,
}

impl<'a> Slot<'a> {
    fn new(backend: &'a Backend, per_iteration: u64) -> Self {
        Self {
            backend,
            per_iteration,
            current: tokio::sync::Mutex::new(None),
        }
    }

    /// Runs `iterations` iterations of `workload`, which returns the time
    /// it measured, on this benchmark's store.
    ///
    /// Opening a store is not timed. Neither is the short run that follows
    /// it: freeing the old store of a million records leaves the allocator
    /// a backlog of freed blocks, which added about 300 ms to the next
    /// allocation and would have been charged to a few operations.
    async fn run<W, F>(&self, iterations: u64, workload: W) -> Duration
    where
        W: Fn(Arc<Opened>, u64) -> F,
        F: Future<Output = Duration>,
    {
        let mut current = self.current.lock().await;
        let operations = iterations * self.per_iteration;
        let fresh = match &*current {
            Some((_, used)) => used + operations > ROTATE_AFTER,
            None => true,
        };
        if fresh {
            *current = None;
            let store = Arc::new(self.backend.open().await);
            workload(store.clone(), SETTLE_ITERATIONS).await;
            *current = Some((store, 0));
        }

        let (store, used) = current.as_mut().expect("a store was just opened");
        *used += operations;
        workload(store.clone(), iterations).await
    }
}
