//! Outbound delivery throughput and latency, and the inline retry layer's
//! overhead, against a minimal loopback receiver.
//!
//! Runs on the memory and SQLite stores, and on PostgreSQL when built with
//! the `postgres` feature and `TOWER_COURIER_POSTGRES_URL` is set (each run
//! in a fresh schema that is dropped afterwards):
//!
//! ```text
//! TOWER_COURIER_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/test \
//!     cargo bench --features postgres --bench delivery
//! ```
//!
//! Prints `name: value unit` lines. `QUICK=1` runs smaller counts.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tower::{Service, ServiceExt};
use tower_courier::outbox::Dispatcher;
use tower_courier::retry::{Backoff, RetryLayer};
use tower_courier::store::memory::MemoryStore;
use tower_courier::store::sqlite::SqliteStore;
use tower_courier::store::{MessageQueue, NewMessage};

/// Every latency is measured from this instant, shared by sender and
/// receiver in one process.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn micros_since_epoch() -> u64 {
    epoch().elapsed().as_micros() as u64
}

/// What the receiver counts: requests, and enqueue-to-arrival latencies
/// of requests that carry `x-enqueued-at`.
#[derive(Default)]
struct Tally {
    received: AtomicU64,
    latencies_us: Mutex<Vec<u64>>,
}

async fn start_receiver(listener: TcpListener, tally: Arc<Tally>) {
    loop {
        let Ok((socket, _)) = listener.accept().await else {
            return;
        };
        let _ = socket.set_nodelay(true);
        let tally = tally.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                let tally = tally.clone();
                async move {
                    if let Some(sent) = request.headers().get("x-enqueued-at") {
                        let sent: u64 = sent.to_str().unwrap().parse().unwrap();
                        let latency = micros_since_epoch().saturating_sub(sent);
                        tally.latencies_us.lock().unwrap().push(latency);
                    }
                    tally.received.fetch_add(1, Ordering::Relaxed);
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())))
                }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(socket), service)
                .await;
        });
    }
}

type HttpClient = Client<HttpConnector, Full<Bytes>>;

fn client() -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(512)
        .build(connector)
}

fn message(addr: SocketAddr, stamp: bool) -> NewMessage {
    let mut message = NewMessage::new(
        "outbox",
        format!("http://{addr}"),
        Method::POST,
        "/events",
        SystemTime::now(),
    );
    let key = message.id.to_string();
    message
        .headers
        .insert("idempotency-key", key.parse().unwrap());
    if stamp {
        let now = micros_since_epoch().to_string();
        message
            .headers
            .insert("x-enqueued-at", now.parse().unwrap());
    }
    message.body = Bytes::from_static(br#"{"event":"order.created","order":42}"#);
    message
}

/// Returns the dispatcher concurrency: `CONCURRENCY`, or 256.
fn concurrency() -> usize {
    std::env::var("CONCURRENCY")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(256)
}

fn dispatcher(store: Arc<dyn MessageQueue>) -> Dispatcher {
    let concurrency = concurrency();
    Dispatcher::new(store, client())
        .batch_size(256)
        .concurrency(concurrency)
        .per_destination(concurrency)
        .poll_interval(Duration::from_millis(100))
        .backoff(
            Backoff::default()
                .initial_delay(Duration::from_millis(200))
                .min_delay(Duration::from_millis(50))
                .max_delay(Duration::from_secs(1)),
        )
}

async fn enqueue_all(store: &Arc<dyn MessageQueue>, addr: SocketAddr, count: usize) {
    let mut left = count;
    while left > 0 {
        let batch = left.min(500);
        let messages = (0..batch).map(|_| message(addr, false)).collect();
        store.enqueue(messages).await.unwrap();
        left -= batch;
    }
}

async fn wait_received(tally: &Tally, count: u64) {
    while tally.received.load(Ordering::Relaxed) < count {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Enqueues `count` messages, then claims and completes them with no HTTP
/// in between, 256 at a time: the store's ceiling for a drain.
async fn store_ceiling(name: &str, store: Arc<dyn MessageQueue>, count: usize) {
    let addr: SocketAddr = "127.0.0.1:9".parse().unwrap();
    enqueue_all(&store, addr, count).await;

    let started = Instant::now();
    let mut done = 0;
    while done < count {
        let claimed = store
            .claim("outbox", 256, Duration::from_secs(30))
            .await
            .unwrap();
        let mut tasks = tokio::task::JoinSet::new();
        for message in claimed {
            let store = store.clone();
            tasks.spawn(async move { store.complete(&message.lease, None).await.unwrap() });
        }
        while tasks.join_next().await.is_some() {
            done += 1;
        }
    }
    println!(
        "{name}: {:.0} msg/s",
        count as f64 / started.elapsed().as_secs_f64()
    );
}

/// Enqueues `count` messages, then times the dispatcher draining them.
async fn drain_rate(name: &str, store: Arc<dyn MessageQueue>, count: usize) {
    drain_rate_shared(name, vec![store], count).await;
}

/// Enqueues `count` messages through the first of `stores`, then times one
/// dispatcher per store draining them together.
async fn drain_rate_shared(name: &str, stores: Vec<Arc<dyn MessageQueue>>, count: usize) {
    let tally = Arc::new(Tally::default());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(start_receiver(listener, tally.clone()));
    enqueue_all(&stores[0], addr, count).await;

    let started = Instant::now();
    let handles: Vec<_> = stores
        .into_iter()
        .map(|store| dispatcher(store).spawn())
        .collect();
    wait_received(&tally, count as u64).await;
    let elapsed = started.elapsed();
    let delivered = || {
        handles
            .iter()
            .map(|handle| handle.metrics().delivered)
            .sum::<u64>()
    };
    while delivered() < count as u64 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let recorded = started.elapsed();
    let received = tally.received.load(Ordering::Relaxed);
    for handle in handles {
        handle.shutdown().await;
    }

    println!("{name}: {:.0} msg/s", count as f64 / elapsed.as_secs_f64());
    println!(
        "{name}_recorded: {:.0} msg/s",
        count as f64 / recorded.as_secs_f64()
    );
    // Each message is sent once unless a lease expired mid-run.
    println!("{name}_sent_twice: {} messages", received - count as u64);
}

/// Enqueues one message every `gap` with the dispatcher running, and
/// reports enqueue-to-arrival latency percentiles.
async fn latency(name: &str, store: Arc<dyn MessageQueue>, count: usize, gap: Duration) {
    let tally = Arc::new(Tally::default());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(start_receiver(listener, tally.clone()));
    let handle = dispatcher(store.clone()).spawn();

    let mut ticker = tokio::time::interval(gap);
    for _ in 0..count {
        ticker.tick().await;
        store.enqueue(vec![message(addr, true)]).await.unwrap();
    }
    wait_received(&tally, count as u64).await;
    handle.shutdown().await;

    let mut latencies = tally.latencies_us.lock().unwrap().clone();
    latencies.sort_unstable();
    let at =
        |share: f64| latencies[((latencies.len() - 1) as f64 * share) as usize] as f64 / 1000.0;
    println!("{name}_p50: {:.2} ms", at(0.50));
    println!("{name}_p99: {:.2} ms", at(0.99));
}

/// Enqueues `count` messages while the receiver is down, brings it up
/// after `down`, and times the drain from then.
async fn recovery(name: &str, store: Arc<dyn MessageQueue>, count: usize, down: Duration) {
    let addr = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    enqueue_all(&store, addr, count).await;
    let handle = dispatcher(store).spawn();
    tokio::time::sleep(down).await;

    let tally = Arc::new(Tally::default());
    let listener = TcpListener::bind(addr).await.unwrap();
    let up = Instant::now();
    tokio::spawn(start_receiver(listener, tally.clone()));
    while handle.metrics().delivered < count as u64 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let elapsed = up.elapsed();
    let metrics = handle.metrics();
    handle.shutdown().await;

    println!("{name}: {:.0} msg/s", count as f64 / elapsed.as_secs_f64());
    println!("{name}_retried: {} attempts", metrics.retried);
}

/// Sends `count` GET requests, 32 at a time, and returns requests per
/// second.
async fn request_rate<S>(service: S, addr: SocketAddr, count: usize) -> f64
where
    S: Service<Request<Full<Bytes>>, Response = Response<Incoming>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: std::fmt::Debug,
{
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for lane in 0..32 {
        let service = service.clone();
        let uri = format!("http://{addr}/ping");
        tasks.spawn(async move {
            for _ in (lane..count).step_by(32) {
                let request = Request::get(&uri).body(Full::new(Bytes::new())).unwrap();
                let response = service.clone().oneshot(request).await.unwrap();
                assert!(response.status().is_success());
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    count as f64 / started.elapsed().as_secs_f64()
}

/// Compares the inline retry layer with the bare client on the success
/// path, in alternating rounds.
async fn retry_overhead(count: usize, rounds: usize) {
    let tally = Arc::new(Tally::default());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(start_receiver(listener, tally));

    let bare = client();
    let layered = tower::Layer::layer(&RetryLayer::new(), client());
    request_rate(bare.clone(), addr, count / 4).await;
    request_rate(layered.clone(), addr, count / 4).await;

    let (mut bare_total, mut layered_total) = (0.0, 0.0);
    for _ in 0..rounds {
        bare_total += request_rate(bare.clone(), addr, count).await;
        layered_total += request_rate(layered.clone(), addr, count).await;
    }
    println!("bare_client: {:.0} req/s", bare_total / rounds as f64);
    println!("retry_layer: {:.0} req/s", layered_total / rounds as f64);
    println!("ratio_retry_layer: {:.3} x", layered_total / bare_total);
}

async fn sqlite_store(dir: &tempfile::TempDir, name: &str) -> Arc<dyn MessageQueue> {
    Arc::new(SqliteStore::open(dir.path().join(name)).await.unwrap())
}

/// Returns `true` if the section `name` should run: every section, or
/// those whose name contains the first command-line argument that is not
/// a flag (`cargo bench --bench delivery -- sqlite`).
fn selected(name: &str) -> bool {
    let filter = std::env::args().skip(1).find(|arg| !arg.starts_with("--"));
    filter.is_none_or(|filter| name.contains(&filter))
}

/// Opens PostgreSQL stores in fresh schemas, and drops them at the end.
#[cfg(feature = "postgres")]
struct Postgres {
    url: String,
    schemas: Vec<String>,
}

#[cfg(feature = "postgres")]
impl Postgres {
    /// Opens a store in a new schema.
    async fn store(&mut self) -> Arc<dyn MessageQueue> {
        let unique = tower_courier::MessageId::new().to_string().replace('-', "");
        let schema = format!("bench_delivery_{unique}");
        self.schemas.push(schema.clone());
        self.store_in(&schema).await
    }

    /// Opens another store, with its own pool, in an existing schema.
    async fn store_in(&self, schema: &str) -> Arc<dyn MessageQueue> {
        use tower_courier::store::postgres::{PostgresOptions, PostgresStore};

        let options = PostgresOptions::new().schema(schema);
        let store = PostgresStore::connect_with(&self.url, options).await;
        Arc::new(store.expect("connect to TOWER_COURIER_POSTGRES_URL"))
    }

    async fn drop_schemas(self) {
        let pool = sqlx::PgPool::connect(&self.url).await.unwrap();
        for schema in self.schemas {
            let sql = format!("DROP SCHEMA IF EXISTS {schema} CASCADE");
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .execute(&pool)
                .await
                .unwrap();
        }
    }
}

/// Runs every section on PostgreSQL, or prints why it does not.
async fn postgres_sections(count: usize, latency_count: usize, gap: Duration) {
    let url = std::env::var("TOWER_COURIER_POSTGRES_URL").ok();
    #[cfg(feature = "postgres")]
    if let Some(url) = url {
        let mut postgres = Postgres {
            url,
            schemas: Vec::new(),
        };
        if selected("delivery_postgres") {
            drain_rate("delivery_postgres", postgres.store().await, count).await;
            let store = postgres.store().await;
            latency("delivery_postgres", store, latency_count, gap).await;
        }
        if selected("delivery_postgres_2") {
            // Two stores with their own pools, as two processes would have.
            let first = postgres.store().await;
            let second = postgres.store_in(postgres.schemas.last().unwrap()).await;
            drain_rate_shared("delivery_postgres_2", vec![first, second], count).await;
        }
        if selected("recovery_postgres") {
            let store = postgres.store().await;
            recovery("recovery_postgres", store, count / 2, RECEIVER_DOWN).await;
        }
        postgres.drop_schemas().await;
        return;
    }

    let reason = match (cfg!(feature = "postgres"), url.is_some()) {
        (true, _) => "TOWER_COURIER_POSTGRES_URL is not set",
        (false, true) => "the postgres feature is not enabled",
        (false, false) => {
            "the postgres feature is not enabled and TOWER_COURIER_POSTGRES_URL is not set"
        }
    };
    let _ = (count, latency_count, gap);
    println!("delivery_postgres: not run ({reason})");
}

/// How long the receiver stays down in the recovery sections.
const RECEIVER_DOWN: Duration = Duration::from_secs(2);

#[tokio::main]
async fn main() {
    epoch();
    let quick = std::env::var_os("QUICK").is_some();
    let (count, latency_count, requests, rounds) = if quick {
        (5_000, 300, 5_000, 2)
    } else {
        (20_000, 2_000, 20_000, 4)
    };
    let dir = tempfile::tempdir().unwrap();
    let gap = Duration::from_millis(2);

    if selected("store_sqlite_claim_complete") {
        let store = sqlite_store(&dir, "ceiling.db").await;
        store_ceiling("store_sqlite_claim_complete", store, count).await;
    }
    if selected("delivery_memory") {
        drain_rate("delivery_memory", Arc::new(MemoryStore::new()), count).await;
        latency(
            "delivery_memory",
            Arc::new(MemoryStore::new()),
            latency_count,
            gap,
        )
        .await;
    }
    if selected("delivery_sqlite") {
        drain_rate(
            "delivery_sqlite",
            sqlite_store(&dir, "drain.db").await,
            count,
        )
        .await;
        let store = sqlite_store(&dir, "latency.db").await;
        latency("delivery_sqlite", store, latency_count, gap).await;
    }
    if selected("recovery_memory") {
        let store = Arc::new(MemoryStore::new());
        recovery("recovery_memory", store, count / 2, RECEIVER_DOWN).await;
    }
    if selected("recovery_sqlite") {
        let store = sqlite_store(&dir, "recovery.db").await;
        recovery("recovery_sqlite", store, count / 2, RECEIVER_DOWN).await;
    }
    postgres_sections(count, latency_count, gap).await;
    if selected("ratio_retry_layer") {
        retry_overhead(requests, rounds).await;
    }
}
