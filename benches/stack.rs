//! Throughput of a signed POST through the inbound layers, against the
//! same handler without them, in one run.
//!
//! Five servers on loopback run the same axum handler: bare, behind the
//! signature check, behind the signature check and the idempotency layer
//! (a fresh key per request) on the memory store and on the SQLite store
//! (`synchronous=FULL`, so every claim and completion is on disk before
//! the response), and behind the idempotency layer alone on the memory
//! store. One client signs every request and sends a fresh
//! `Idempotency-Key` to all of them, so the client costs the same for
//! each. The variants run in rotating rounds, which spreads the noise of a
//! shared machine over all of them. Each variant prints its median
//! throughput, its latency percentiles over every request of every round,
//! and the median of its per-round ratios to the bare server.
//!
//! A last section calls the handler in process, without sockets, bare and
//! through the idempotency layer, and prints the layer's added time per
//! request: the layer's own cost, free of network and scheduling noise.
//!
//! Run with `cargo bench --bench stack`; `QUICK=1` runs short rounds (well
//! under a minute). Prints `name: value unit` lines.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::post;
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::net::TcpListener;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_courier::auth::sign::Sign;
use tower_courier::auth::{Key, KeyRing, SignLayer, VerifyLayer};
use tower_courier::idempotency::{IdempotencyLayer, spawn_purge_task};
use tower_courier::store::IdempotencyStore;
use tower_courier::store::memory::MemoryStore;
use tower_courier::store::sqlite::SqliteStore;

/// Requests in flight at once, each on its own keep-alive connection.
const CONCURRENCY: usize = 32;

/// How long the benchmark's idempotency records are kept.
const RETENTION: Duration = Duration::from_secs(5);

struct Settings {
    rounds: usize,
    round_length: Duration,
    in_process_requests: u32,
}

impl Settings {
    fn from_env() -> Self {
        let quick = std::env::var("QUICK").is_ok_and(|value| value == "1");
        if quick {
            Self {
                rounds: 21,
                round_length: Duration::from_millis(200),
                in_process_requests: 100_000,
            }
        } else {
            Self {
                rounds: 61,
                round_length: Duration::from_millis(200),
                in_process_requests: 400_000,
            }
        }
    }
}

fn keys() -> KeyRing {
    KeyRing::single(Key::from_bytes("bench", &[42; 32]).expect("a 32-byte key is valid"))
}

fn handler_router() -> Router {
    Router::new().route(
        "/orders",
        post(|body: Bytes| async move { (StatusCode::CREATED, body) }),
    )
}

async fn serve(router: Router) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let address = listener.local_addr().expect("bound address");
    tokio::spawn(async move { axum::serve(listener, router).await.expect("server runs") });
    address
}

/// Returns a memory store kept at a steady size.
///
/// Every request stores a record under a fresh key. A short retention with
/// a purge every second keeps the store at a steady size, as a
/// deployment's purge does. Without it the run would mostly measure the
/// allocator growing a map of millions of records.
fn steady_store() -> Arc<dyn IdempotencyStore> {
    let store: Arc<dyn IdempotencyStore> =
        Arc::new(MemoryStore::new().max_idempotency_records(10_000_000));
    spawn_purge_task(store.clone(), Duration::from_secs(1));
    store
}

/// Returns a SQLite store in `directory`, purged every second like
/// [`steady_store`].
async fn sqlite_store(directory: &tempfile::TempDir) -> Arc<dyn IdempotencyStore> {
    let store = SqliteStore::open(directory.path().join("stack.db"))
        .await
        .expect("open the SQLite store");
    let store: Arc<dyn IdempotencyStore> = Arc::new(store);
    spawn_purge_task(store.clone(), Duration::from_secs(1));
    store
}

/// Serves the handler behind the signature check and the idempotency
/// layer on `store`.
///
/// The layers are stacked as the README shows, in one `ServiceBuilder`
/// given to `Router::layer`. Two `Router::layer` calls would wrap the
/// route twice, and axum boxes and clones each wrapped route per request.
async fn serve_full(store: Arc<dyn IdempotencyStore>) -> SocketAddr {
    let layers = ServiceBuilder::new()
        .layer(VerifyLayer::new(keys()))
        .layer(IdempotencyLayer::required(store).retention(RETENTION));
    serve(handler_router().layer(layers)).await
}

async fn servers(directory: &tempfile::TempDir) -> Vec<(&'static str, SocketAddr)> {
    let bare = serve(handler_router()).await;
    let auth = serve(handler_router().layer(VerifyLayer::new(keys()))).await;
    let full_memory = serve_full(steady_store()).await;
    let full_sqlite = serve_full(sqlite_store(directory).await).await;

    let idempotency_only =
        handler_router().layer(IdempotencyLayer::required(steady_store()).retention(RETENTION));
    let idempotency_only = serve(idempotency_only).await;

    vec![
        ("bare", bare),
        ("auth", auth),
        ("auth_idempotency_memory", full_memory),
        ("auth_idempotency_sqlite", full_sqlite),
        ("idempotency", idempotency_only),
    ]
}

/// A signing HTTP client whose pool keeps its connections between rounds.
type Sender = Sign<Client<HttpConnector, Full<Bytes>>>;

fn sender() -> Sender {
    let client = Client::builder(TokioExecutor::new()).build_http();
    ServiceBuilder::new()
        .layer(SignLayer::new(keys()))
        .service(client)
}

/// What one round against one server measured.
struct Round {
    /// `201` responses per second.
    throughput: f64,
    /// The time from sending each request to its whole response, in
    /// microseconds.
    latencies_us: Vec<u32>,
}

/// Sends signed POSTs to `address` from `CONCURRENCY` tasks for `length`,
/// each task waiting for a response before it sends again.
async fn measure(
    sender: &Sender,
    address: SocketAddr,
    length: Duration,
    keys_sent: Arc<AtomicU64>,
) -> Round {
    let deadline = Instant::now() + length;
    let start = Instant::now();

    let tasks: Vec<_> = (0..CONCURRENCY)
        .map(|_| {
            let (mut sender, keys_sent) = (sender.clone(), keys_sent.clone());
            tokio::spawn(async move {
                let mut latencies_us = Vec::new();
                while Instant::now() < deadline {
                    let key = keys_sent.fetch_add(1, Ordering::Relaxed);
                    let request = Request::post(format!("http://{address}/orders"))
                        .header("content-type", "application/json")
                        .header("idempotency-key", format!("bench-{key}"))
                        .body(Full::new(Bytes::from_static(
                            b"{\"item\":\"book\",\"qty\":1}",
                        )))
                        .expect("valid request");
                    let sent = Instant::now();
                    let ready = ServiceExt::<Request<Full<Bytes>>>::ready(&mut sender).await;
                    let response = ready.expect("client ready").call(request).await;
                    let response = response.expect("loopback request succeeds");
                    let status = response.status();
                    response.into_body().collect().await.expect("body arrives");
                    let latency = sent.elapsed().as_micros();
                    assert_eq!(status, StatusCode::CREATED, "unexpected status");
                    latencies_us.push(u32::try_from(latency).unwrap_or(u32::MAX));
                }
                latencies_us
            })
        })
        .collect();

    let mut latencies_us = Vec::new();
    for task in tasks {
        latencies_us.extend(task.await.expect("client task runs"));
    }
    Round {
        throughput: latencies_us.len() as f64 / start.elapsed().as_secs_f64(),
        latencies_us,
    }
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(run(Settings::from_env()));
}

async fn run(settings: Settings) {
    let directory = tempfile::tempdir().expect("temporary directory");
    let servers = servers(&directory).await;
    let senders: Vec<Sender> = servers.iter().map(|_| sender()).collect();
    let keys_sent = Arc::new(AtomicU64::new(0));

    // One short warm-up round per server: connections, allocator, caches.
    for ((_, address), sender) in servers.iter().zip(&senders) {
        measure(
            sender,
            *address,
            Duration::from_millis(300),
            keys_sent.clone(),
        )
        .await;
    }

    // Each round measures every server once, in an order that rotates, so
    // that a change in the machine's background load hits all of them.
    let mut rounds = Vec::with_capacity(settings.rounds);
    let mut latencies_us = vec![Vec::new(); servers.len()];
    for round in 0..settings.rounds {
        let mut throughputs = vec![0.0; servers.len()];
        for offset in 0..servers.len() {
            let index = (round + offset) % servers.len();
            let (address, sender) = (servers[index].1, &senders[index]);
            let length = settings.round_length;
            let measured = measure(sender, address, length, keys_sent.clone()).await;
            throughputs[index] = measured.throughput;
            latencies_us[index].extend(measured.latencies_us);
        }
        rounds.push(throughputs);
    }

    report(&servers, &rounds, &settings);
    report_latencies(&servers, latencies_us);
    in_process_overhead(settings.in_process_requests).await;
}

/// Calls a handler `requests` times bare and `requests` times through the
/// idempotency layer, alternating call by call, and prints the median time
/// of each and their difference. Medians of single calls ignore the calls
/// that another process preempted.
async fn in_process_overhead(requests: u32) {
    let handler = tower::service_fn(|request: Request<Full<Bytes>>| async move {
        let body = request.into_body().collect().await?.to_bytes();
        let mut response = http::Response::new(Full::new(body));
        *response.status_mut() = StatusCode::CREATED;
        Ok::<_, std::convert::Infallible>(response)
    });
    let mut layered = ServiceBuilder::new()
        .layer(IdempotencyLayer::required(steady_store()).retention(RETENTION))
        .service(handler);
    let mut bare = handler;

    let mut bare_times = Vec::with_capacity(requests as usize);
    let mut layered_times = Vec::with_capacity(requests as usize);
    for index in 0..requests {
        bare_times.push(time_call(&mut bare, index).await);
        layered_times.push(time_call(&mut layered, index).await);
    }

    let bare_median = median(bare_times);
    let layered_median = median(layered_times);
    println!("in_process_bare: {bare_median:.0} ns");
    println!("in_process_idempotency: {layered_median:.0} ns");
    println!(
        "in_process_idempotency_added: {:.0} ns",
        layered_median - bare_median
    );
}

/// Sends one POST with a fresh key through `service` in process and
/// returns the nanoseconds it took, building the request excluded.
async fn time_call<S, B>(service: &mut S, index: u32) -> f64
where
    S: Service<Request<Full<Bytes>>, Response = http::Response<B>>,
    S::Error: std::fmt::Debug,
    B: http_body::Body,
    B::Error: std::fmt::Debug,
{
    let request = Request::post("/orders")
        .header("content-type", "application/json")
        .header("idempotency-key", format!("in-process-{index}"))
        .body(Full::new(Bytes::from_static(
            b"{\"item\":\"book\",\"qty\":1}",
        )))
        .expect("valid request");

    let start = Instant::now();
    let ready = ServiceExt::<Request<Full<Bytes>>>::ready(service).await;
    let response = ready
        .expect("service ready")
        .call(request)
        .await
        .expect("response");
    let status = response.status();
    response.into_body().collect().await.expect("body");
    let elapsed = start.elapsed();

    assert_eq!(status, StatusCode::CREATED, "unexpected status");
    elapsed.as_nanos() as f64
}

/// Prints the median throughput of each server and the median of the
/// per-round ratios to the bare server, which cancels most of the load
/// that other processes put on the machine.
fn report(servers: &[(&'static str, SocketAddr)], rounds: &[Vec<f64>], settings: &Settings) {
    for (index, (name, _)) in servers.iter().enumerate() {
        let throughput = median(rounds.iter().map(|round| round[index]).collect());
        println!("{name}: {throughput:.0} req/s");
    }
    for (index, (name, _)) in servers.iter().enumerate().skip(1) {
        let ratio = median(rounds.iter().map(|round| round[index] / round[0]).collect());
        println!("ratio_{name}: {ratio:.3} x");
    }
    println!("concurrency: {CONCURRENCY} requests");
    println!(
        "rounds: {} x {:.1} s per server",
        settings.rounds,
        settings.round_length.as_secs_f64()
    );
    println!("retention: {} s", RETENTION.as_secs());
}

/// Prints the 50th and 99th percentile latency of each server, over every
/// request of every round.
fn report_latencies(servers: &[(&'static str, SocketAddr)], latencies_us: Vec<Vec<u32>>) {
    for ((name, _), mut latencies) in servers.iter().zip(latencies_us) {
        latencies.sort_unstable();
        let at = |share: f64| {
            let index = ((latencies.len() - 1) as f64 * share).round() as usize;
            f64::from(latencies[index]) / 1000.0
        };
        println!("{name}_p50: {:.3} ms", at(0.50));
        println!("{name}_p99: {:.3} ms", at(0.99));
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let middle = values.len() / 2;
    if values.len().is_multiple_of(2) {
        (values[middle - 1] + values[middle]) / 2.0
    } else {
        values[middle]
    }
}
