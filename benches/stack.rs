//! Throughput of a signed POST through the inbound layers, against the
//! same handler without them, in one run.
//!
//! Three servers on loopback run the same axum handler: bare, behind the
//! signature check, and behind the signature check and the idempotency
//! layer (memory store, a fresh key per request). One client signs every
//! request and sends a fresh `Idempotency-Key` to all three, so the client
//! costs the same for each. The variants run in alternating rounds, which
//! spreads the noise of a shared machine over all three.
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
use tower_courier::auth::{Key, KeyRing, SignLayer, VerifyLayer};
use tower_courier::idempotency::IdempotencyLayer;
use tower_courier::store::memory::MemoryStore;

/// Requests in flight at once, each on its own keep-alive connection.
const CONCURRENCY: usize = 32;

struct Settings {
    rounds: usize,
    round_length: Duration,
}

impl Settings {
    fn from_env() -> Self {
        let quick = std::env::var("QUICK").is_ok_and(|value| value == "1");
        if quick {
            Self {
                rounds: 3,
                round_length: Duration::from_millis(1500),
            }
        } else {
            Self {
                rounds: 6,
                round_length: Duration::from_secs(3),
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

async fn servers() -> Vec<(&'static str, SocketAddr)> {
    let bare = serve(handler_router()).await;
    let auth = serve(handler_router().layer(VerifyLayer::new(keys()))).await;

    // The bound must exceed the requests of the whole run, because every
    // request stores a record under a fresh key.
    let store = MemoryStore::new().max_idempotency_records(50_000_000);
    let full = handler_router()
        .layer(IdempotencyLayer::required(Arc::new(store)))
        .layer(VerifyLayer::new(keys()));
    let full = serve(full).await;

    vec![("bare", bare), ("auth", auth), ("auth_idempotency", full)]
}

/// Sends signed POSTs to `address` from `CONCURRENCY` tasks for `length`,
/// and returns the number of `201` responses per second.
async fn measure(address: SocketAddr, length: Duration, keys_sent: Arc<AtomicU64>) -> f64 {
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let sender = ServiceBuilder::new()
        .layer(SignLayer::new(keys()))
        .service(client);
    let deadline = Instant::now() + length;
    let start = Instant::now();

    let tasks: Vec<_> = (0..CONCURRENCY)
        .map(|_| {
            let (mut sender, keys_sent) = (sender.clone(), keys_sent.clone());
            tokio::spawn(async move {
                let mut created = 0_u64;
                while Instant::now() < deadline {
                    let key = keys_sent.fetch_add(1, Ordering::Relaxed);
                    let request = Request::post(format!("http://{address}/orders"))
                        .header("content-type", "application/json")
                        .header("idempotency-key", format!("bench-{key}"))
                        .body(Full::new(Bytes::from_static(
                            b"{\"item\":\"book\",\"qty\":1}",
                        )))
                        .expect("valid request");
                    let ready = ServiceExt::<Request<Full<Bytes>>>::ready(&mut sender).await;
                    let response = ready.expect("client ready").call(request).await;
                    let response = response.expect("loopback request succeeds");
                    let status = response.status();
                    response.into_body().collect().await.expect("body arrives");
                    assert_eq!(status, StatusCode::CREATED, "unexpected status");
                    created += 1;
                }
                created
            })
        })
        .collect();

    let mut created = 0;
    for task in tasks {
        created += task.await.expect("client task runs");
    }
    created as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(run(Settings::from_env()));
}

async fn run(settings: Settings) {
    let servers = servers().await;
    let keys_sent = Arc::new(AtomicU64::new(0));

    // One short warm-up round per server: connections, allocator, caches.
    for (_, address) in &servers {
        measure(*address, Duration::from_millis(300), keys_sent.clone()).await;
    }

    let mut totals = vec![0.0; servers.len()];
    for _ in 0..settings.rounds {
        for (index, (_, address)) in servers.iter().enumerate() {
            totals[index] += measure(*address, settings.round_length, keys_sent.clone()).await;
        }
    }

    let means: Vec<f64> = totals
        .iter()
        .map(|total| total / settings.rounds as f64)
        .collect();
    for ((name, _), mean) in servers.iter().zip(&means) {
        println!("{name}: {mean:.0} req/s");
    }
    println!("ratio_auth: {:.3} x", means[1] / means[0]);
    println!("ratio_auth_idempotency: {:.3} x", means[2] / means[0]);
    println!("concurrency: {CONCURRENCY} requests");
    println!(
        "rounds: {} x {:.1} s",
        settings.rounds,
        settings.round_length.as_secs_f64()
    );
}
