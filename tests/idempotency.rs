//! The idempotency layer over real loopback TCP.

mod loopback;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use axum::Router;
use axum::response::IntoResponse;
use axum::routing::post;
use http::{HeaderValue, StatusCode};
use std::convert::Infallible;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::{Instant, sleep, sleep_until};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use tower::{ServiceBuilder, ServiceExt};
use tower_courier::auth::{Key, KeyId, KeyRing, SignLayer, VerifyLayer};
use tower_courier::idempotency::IdempotencyLayer;
use tower_courier::store::memory::MemoryStore;
use tower_courier::store::sqlite::SqliteStore;
use tower_courier::store::{
    ClaimOutcome, FencingToken, Fingerprint, IdempotencyKey, IdempotencyRecord, IdempotencyStore,
    StoreError, StoredResponse,
};

use loopback::{Reply, send, serve};

/// Counts handler runs.
#[derive(Clone, Default)]
struct Runs(Arc<AtomicUsize>);

impl Runs {
    fn add(&self) -> usize {
        self.0.fetch_add(1, Ordering::SeqCst) + 1
    }

    fn get(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

fn memory() -> Arc<dyn IdempotencyStore> {
    Arc::new(MemoryStore::new())
}

fn app(layer: IdempotencyLayer, runs: Runs, delay: Duration) -> Router {
    let handler = move || {
        let runs = runs.clone();
        async move {
            let run = runs.add();
            sleep(delay).await;
            let headers = [("x-run", run.to_string())];
            (StatusCode::CREATED, headers, format!("{{\"order\":{run}}}"))
        }
    };
    Router::new().route("/orders", post(handler)).layer(layer)
}

fn assert_replay_of(replay: &Reply, first: &Reply) {
    assert_eq!(replay.status, first.status);
    assert_eq!(replay.body, first.body);
    assert_eq!(replay.headers["idempotent-replayed"], "true");
    assert_eq!(replay.headers["x-run"], first.headers["x-run"]);
    assert_eq!(
        replay.headers["content-type"],
        first.headers["content-type"]
    );
}

#[tokio::test]
async fn concurrent_retry_conflicts_then_replays() {
    let runs = Runs::default();
    let layer = IdempotencyLayer::required(memory());
    let address = serve(app(layer, runs.clone(), Duration::from_millis(500))).await;
    let start = Instant::now();

    let first = tokio::spawn(send(
        address,
        loopback::post(address, "/orders", Some("k1"), "{}"),
    ));
    sleep_until(start + Duration::from_millis(50)).await;
    let second = send(
        address,
        loopback::post(address, "/orders", Some("k1"), "{}"),
    )
    .await;
    sleep_until(start + Duration::from_millis(800)).await;
    let third = send(
        address,
        loopback::post(address, "/orders", Some("k1"), "{}"),
    )
    .await;
    let first = first.await.unwrap();

    assert_eq!(runs.get(), 1);
    assert_eq!(first.status, StatusCode::CREATED);
    assert!(!first.headers.contains_key("idempotent-replayed"));
    assert_eq!(second.status, StatusCode::CONFLICT);
    assert_eq!(second.headers["retry-after"], "1");
    assert_eq!(second.headers["content-type"], "application/problem+json");
    assert_replay_of(&third, &first);
}

#[tokio::test]
async fn server_error_is_not_stored() {
    let runs = Runs::default();
    let handler_runs = runs.clone();
    let handler = move || {
        let runs = handler_runs.clone();
        async move {
            match runs.add() {
                1 => (StatusCode::SERVICE_UNAVAILABLE, "busy").into_response(),
                run => (StatusCode::CREATED, format!("created by run {run}")).into_response(),
            }
        }
    };
    let router = Router::new()
        .route("/orders", post(handler))
        .layer(IdempotencyLayer::required(memory()));
    let address = serve(router).await;
    let request = || loopback::post(address, "/orders", Some("k2"), "{}");

    let first = send(address, request()).await;
    let second = send(address, request()).await;
    let third = send(address, request()).await;

    assert_eq!(first.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(second.status, StatusCode::CREATED);
    assert_eq!(second.body, "created by run 2");
    assert!(!second.headers.contains_key("idempotent-replayed"));
    assert_eq!(third.status, StatusCode::CREATED);
    assert_eq!(third.body, "created by run 2");
    assert_eq!(third.headers["idempotent-replayed"], "true");
    assert_eq!(runs.get(), 2);
}

#[tokio::test]
async fn client_disconnect_does_not_cancel_handler() {
    let started = Runs::default();
    let finished = Runs::default();
    let (handler_started, handler_finished) = (started.clone(), finished.clone());
    let handler = move || {
        let (started, finished) = (handler_started.clone(), handler_finished.clone());
        async move {
            started.add();
            sleep(Duration::from_millis(300)).await;
            finished.add();
            (StatusCode::CREATED, "done")
        }
    };
    let router = Router::new()
        .route("/orders", post(handler))
        .layer(IdempotencyLayer::required(memory()));
    let address = serve(router).await;

    let mut stream = TcpStream::connect(address).await.unwrap();
    let raw = "POST /orders HTTP/1.1\r\nhost: test\r\nidempotency-key: k3\r\n\
               content-type: application/json\r\ncontent-length: 2\r\n\r\n{}";
    stream.write_all(raw.as_bytes()).await.unwrap();
    sleep(Duration::from_millis(100)).await;
    assert_eq!(started.get(), 1);
    drop(stream);

    sleep(Duration::from_millis(500)).await;
    assert_eq!(
        finished.get(),
        1,
        "the handler was cancelled by the disconnect"
    );

    let retry = send(
        address,
        loopback::post(address, "/orders", Some("k3"), "{}"),
    )
    .await;
    assert_eq!(retry.status, StatusCode::CREATED);
    assert_eq!(retry.body, "done");
    assert_eq!(retry.headers["idempotent-replayed"], "true");
    assert_eq!(started.get(), 1);
}

/// A memory store whose claims take `delay`, like a store across a slow
/// network.
#[derive(Debug)]
struct SlowClaims {
    inner: MemoryStore,
    delay: Duration,
}

#[async_trait]
impl IdempotencyStore for SlowClaims {
    async fn claim(
        &self,
        key: &IdempotencyKey,
        fingerprint: Fingerprint,
        lease: Duration,
    ) -> Result<ClaimOutcome, StoreError> {
        let outcome = self.inner.claim(key, fingerprint, lease).await;
        sleep(self.delay).await;
        outcome
    }

    async fn renew(
        &self,
        key: &IdempotencyKey,
        token: FencingToken,
        extend_by: Duration,
    ) -> Result<(), StoreError> {
        self.inner.renew(key, token, extend_by).await
    }

    async fn complete(
        &self,
        key: &IdempotencyKey,
        token: FencingToken,
        response: &StoredResponse,
        retention: Duration,
    ) -> Result<(), StoreError> {
        self.inner.complete(key, token, response, retention).await
    }

    async fn release(&self, key: &IdempotencyKey, token: FencingToken) -> Result<(), StoreError> {
        self.inner.release(key, token).await
    }

    async fn get(&self, key: &IdempotencyKey) -> Result<Option<IdempotencyRecord>, StoreError> {
        IdempotencyStore::get(&self.inner, key).await
    }

    async fn purge_expired(&self) -> Result<u64, StoreError> {
        IdempotencyStore::purge_expired(&self.inner).await
    }
}

#[tokio::test]
async fn disconnect_during_claim_still_runs_once() {
    let runs = Runs::default();
    let store = SlowClaims {
        inner: MemoryStore::new(),
        delay: Duration::from_millis(300),
    };
    let layer = IdempotencyLayer::required(Arc::new(store));
    let address = serve(app(layer, runs.clone(), Duration::ZERO)).await;

    // The claim is taken at once but returns 300 ms later, so the client
    // leaves while the layer holds a claim that no handler runs under yet.
    let mut stream = TcpStream::connect(address).await.unwrap();
    let raw = "POST /orders HTTP/1.1\r\nhost: test\r\nidempotency-key: k31\r\n\
               content-type: application/json\r\ncontent-length: 2\r\n\r\n{}";
    stream.write_all(raw.as_bytes()).await.unwrap();
    sleep(Duration::from_millis(100)).await;
    assert_eq!(runs.get(), 0, "the claim answered before the disconnect");
    drop(stream);
    sleep(Duration::from_millis(500)).await;
    assert_eq!(
        runs.get(),
        1,
        "the handler did not run after the disconnect"
    );

    let retry = send(
        address,
        loopback::post(address, "/orders", Some("k31"), "{}"),
    )
    .await;
    assert_eq!(retry.status, StatusCode::CREATED);
    assert_eq!(retry.headers["idempotent-replayed"], "true");
    assert_eq!(retry.body, "{\"order\":1}");
    assert_eq!(runs.get(), 1);
}

#[tokio::test]
async fn replay_keeps_headers_but_not_cookies_or_date() {
    let handler = || async {
        let mut response = (StatusCode::OK, "linked").into_response();
        let headers = response.headers_mut();
        headers.append("link", HeaderValue::from_static("</a>; rel=next"));
        headers.append("link", HeaderValue::from_static("</b>; rel=prev"));
        headers.append("x-raw", HeaderValue::from_bytes(b"caf\xe9 \xff").unwrap());
        headers.append("set-cookie", HeaderValue::from_static("session=secret"));
        headers.append(
            "date",
            HeaderValue::from_static("Mon, 01 Jan 2001 00:00:00 GMT"),
        );
        response
    };
    let router = Router::new()
        .route("/orders", post(handler))
        .layer(IdempotencyLayer::required(memory()));
    let address = serve(router).await;
    let request = || loopback::post(address, "/orders", Some("k4"), "{}");

    let first = send(address, request()).await;
    let replay = send(address, request()).await;

    assert_eq!(first.headers["set-cookie"], "session=secret");
    assert_eq!(replay.headers["idempotent-replayed"], "true");
    let links: Vec<_> = replay.headers.get_all("link").iter().collect();
    assert_eq!(links, ["</a>; rel=next", "</b>; rel=prev"]);
    assert_eq!(replay.headers["x-raw"].as_bytes(), b"caf\xe9 \xff");
    assert!(!replay.headers.contains_key("set-cookie"));
    assert_ne!(replay.headers["date"], "Mon, 01 Jan 2001 00:00:00 GMT");
    assert_eq!(replay.body, "linked");
}

#[tokio::test]
async fn different_request_under_same_key_is_422() {
    let runs = Runs::default();
    let layer = IdempotencyLayer::required(memory());
    let address = serve(app(layer, runs.clone(), Duration::ZERO)).await;

    let first = send(
        address,
        loopback::post(address, "/orders", Some("k5"), "{\"a\":1}"),
    )
    .await;
    let other = send(
        address,
        loopback::post(address, "/orders", Some("k5"), "{\"a\":2}"),
    )
    .await;

    assert_eq!(first.status, StatusCode::CREATED);
    assert_eq!(other.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(other.headers["content-type"], "application/problem+json");
    assert_eq!(runs.get(), 1);
}

#[tokio::test]
async fn quoted_and_bare_keys_are_one_key() {
    let runs = Runs::default();
    let layer = IdempotencyLayer::required(memory());
    let address = serve(app(layer, runs.clone(), Duration::ZERO)).await;

    let first = send(
        address,
        loopback::post(address, "/orders", Some("k6"), "{}"),
    )
    .await;
    let quoted = send(
        address,
        loopback::post(address, "/orders", Some("\"k6\""), "{}"),
    )
    .await;

    assert_eq!(first.status, StatusCode::CREATED);
    assert_eq!(quoted.headers["idempotent-replayed"], "true");
    assert_eq!(runs.get(), 1);
}

#[tokio::test]
async fn bad_or_missing_keys_are_400() {
    let runs = Runs::default();
    let layer = IdempotencyLayer::required(memory());
    let address = serve(app(layer, runs.clone(), Duration::ZERO)).await;

    let missing = send(address, loopback::post(address, "/orders", None, "{}")).await;
    let empty = send(
        address,
        loopback::post(address, "/orders", Some("\"\""), "{}"),
    )
    .await;
    let too_long = "k".repeat(256);
    let long = send(
        address,
        loopback::post(address, "/orders", Some(&too_long), "{}"),
    )
    .await;
    let mut repeated = loopback::post(address, "/orders", Some("k7"), "{}");
    repeated
        .headers_mut()
        .append("idempotency-key", HeaderValue::from_static("k7"));
    let repeated = send(address, repeated).await;

    for reply in [&missing, &empty, &long, &repeated] {
        assert_eq!(reply.status, StatusCode::BAD_REQUEST);
        assert_eq!(reply.headers["content-type"], "application/problem+json");
    }
    assert_eq!(runs.get(), 0);
}

#[tokio::test]
async fn optional_layer_passes_requests_without_key() {
    let runs = Runs::default();
    let layer = IdempotencyLayer::optional(memory());
    let address = serve(app(layer, runs.clone(), Duration::ZERO)).await;

    let first = send(address, loopback::post(address, "/orders", None, "{}")).await;
    let second = send(address, loopback::post(address, "/orders", None, "{}")).await;

    assert_eq!(first.status, StatusCode::CREATED);
    assert_eq!(second.status, StatusCode::CREATED);
    assert!(!second.headers.contains_key("idempotent-replayed"));
    assert_eq!(runs.get(), 2);
}

#[tokio::test]
async fn oversized_request_body_is_413() {
    let runs = Runs::default();
    let layer = IdempotencyLayer::required(memory()).request_body_limit(4);
    let address = serve(app(layer, runs.clone(), Duration::ZERO)).await;

    let reply = send(
        address,
        loopback::post(address, "/orders", Some("k8"), "{\"long\":1}"),
    )
    .await;

    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(runs.get(), 0);
}

#[tokio::test]
async fn oversized_response_is_sent_once_then_410() {
    let runs = Runs::default();
    let handler_runs = runs.clone();
    let handler = move || {
        let runs = handler_runs.clone();
        async move {
            runs.add();
            (StatusCode::CREATED, "x".repeat(100))
        }
    };
    let router = Router::new()
        .route("/orders", post(handler))
        .layer(IdempotencyLayer::required(memory()).response_body_limit(16));
    let address = serve(router).await;
    let request = || loopback::post(address, "/orders", Some("k9"), "{}");

    let first = send(address, request()).await;
    let retry = send(address, request()).await;

    assert_eq!(first.status, StatusCode::CREATED);
    assert_eq!(first.body, "x".repeat(100));
    assert_eq!(retry.status, StatusCode::GONE);
    assert_eq!(retry.headers["idempotent-replayed"], "true");
    assert_eq!(retry.headers["content-type"], "application/problem+json");
    assert_eq!(runs.get(), 1);
}

#[tokio::test]
async fn wait_mode_replays_instead_of_409() {
    let runs = Runs::default();
    let layer = IdempotencyLayer::required(memory()).wait_for_running(Duration::from_secs(5));
    let address = serve(app(layer, runs.clone(), Duration::from_millis(300))).await;

    let first = tokio::spawn(send(
        address,
        loopback::post(address, "/orders", Some("k10"), "{}"),
    ));
    sleep(Duration::from_millis(50)).await;
    let second = send(
        address,
        loopback::post(address, "/orders", Some("k10"), "{}"),
    )
    .await;
    let first = first.await.unwrap();

    assert_eq!(runs.get(), 1);
    assert_replay_of(&second, &first);
}

#[tokio::test]
async fn lease_is_renewed_while_handler_runs() {
    let runs = Runs::default();
    let layer = IdempotencyLayer::required(memory()).lease(Duration::from_millis(150));
    let address = serve(app(layer, runs.clone(), Duration::from_millis(700))).await;

    let first = tokio::spawn(send(
        address,
        loopback::post(address, "/orders", Some("k11"), "{}"),
    ));
    // Well past the first lease: only renewals keep the claim alive.
    sleep(Duration::from_millis(450)).await;
    let second = send(
        address,
        loopback::post(address, "/orders", Some("k11"), "{}"),
    )
    .await;
    let first = first.await.unwrap();

    assert_eq!(first.status, StatusCode::CREATED);
    assert_eq!(second.status, StatusCode::CONFLICT);
    assert_eq!(runs.get(), 1);
}

#[tokio::test]
async fn safe_methods_pass_through() {
    let runs = Runs::default();
    let handler_runs = runs.clone();
    let handler = move || {
        let runs = handler_runs.clone();
        async move { runs.add().to_string() }
    };
    let router = Router::new()
        .route("/orders", axum::routing::get(handler))
        .layer(IdempotencyLayer::required(memory()));
    let address = serve(router).await;
    let get = || {
        http::Request::get("/orders")
            .header("host", "test")
            .header("idempotency-key", "k12")
            .body(http_body_util::Full::default())
            .unwrap()
    };

    let first = send(address, get()).await;
    let second = send(address, get()).await;

    assert_eq!(first.body, "1");
    assert_eq!(second.body, "2");
    assert_eq!(runs.get(), 2);
}

/// A store whose backend is down.
#[derive(Debug)]
struct DownStore;

fn down() -> StoreError {
    StoreError::unavailable("store is down", std::io::Error::other("connection refused"))
}

#[async_trait]
impl IdempotencyStore for DownStore {
    async fn claim(
        &self,
        _: &IdempotencyKey,
        _: Fingerprint,
        _: Duration,
    ) -> Result<ClaimOutcome, StoreError> {
        Err(down())
    }

    async fn renew(
        &self,
        _: &IdempotencyKey,
        _: FencingToken,
        _: Duration,
    ) -> Result<(), StoreError> {
        Err(down())
    }

    async fn complete(
        &self,
        _: &IdempotencyKey,
        _: FencingToken,
        _: &StoredResponse,
        _: Duration,
    ) -> Result<(), StoreError> {
        Err(down())
    }

    async fn release(&self, _: &IdempotencyKey, _: FencingToken) -> Result<(), StoreError> {
        Err(down())
    }

    async fn get(&self, _: &IdempotencyKey) -> Result<Option<IdempotencyRecord>, StoreError> {
        Err(down())
    }

    async fn purge_expired(&self) -> Result<u64, StoreError> {
        Err(down())
    }
}

#[tokio::test]
async fn store_failure_is_503_without_running() {
    let runs = Runs::default();
    let layer = IdempotencyLayer::required(Arc::new(DownStore));
    let address = serve(app(layer, runs.clone(), Duration::ZERO)).await;

    let reply = send(
        address,
        loopback::post(address, "/orders", Some("k13"), "{}"),
    )
    .await;

    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(reply.headers["content-type"], "application/problem+json");
    assert_eq!(runs.get(), 0);
}

#[tokio::test]
async fn keys_are_scoped_by_path() {
    let runs = Runs::default();
    let handler_runs = runs.clone();
    let handler = move || {
        let runs = handler_runs.clone();
        async move { (StatusCode::CREATED, runs.add().to_string()) }
    };
    let router = Router::new()
        .route("/orders", post(handler.clone()))
        .route("/refunds", post(handler))
        .layer(IdempotencyLayer::required(memory()));
    let address = serve(router).await;

    let order = send(
        address,
        loopback::post(address, "/orders", Some("k14"), "{}"),
    )
    .await;
    let refund = send(
        address,
        loopback::post(address, "/refunds", Some("k14"), "{}"),
    )
    .await;

    assert_eq!(order.body, "1");
    assert_eq!(refund.body, "2");
    assert!(!refund.headers.contains_key("idempotent-replayed"));
}

/// Sends 50 concurrent identical requests through two layer instances
/// that share `store`, and checks that the handler ran once.
async fn assert_two_layers_run_once(store: Arc<dyn IdempotencyStore>) {
    let runs = Runs::default();
    let delay = Duration::from_millis(200);
    let first_layer = IdempotencyLayer::required(store.clone());
    let second_layer = IdempotencyLayer::required(store.clone());
    let addresses = [
        serve(app(first_layer, runs.clone(), delay)).await,
        serve(app(second_layer, runs.clone(), delay)).await,
    ];

    let requests = (0..50).map(|index| {
        let address = addresses[index % 2];
        tokio::spawn(send(
            address,
            loopback::post(address, "/orders", Some("shared"), "{}"),
        ))
    });
    let mut replies = Vec::new();
    for request in requests.collect::<Vec<_>>() {
        replies.push(request.await.unwrap());
    }

    assert_eq!(runs.get(), 1);
    let fresh: Vec<_> = replies
        .iter()
        .filter(|reply| reply.status == StatusCode::CREATED)
        .filter(|reply| !reply.headers.contains_key("idempotent-replayed"))
        .collect();
    assert_eq!(fresh.len(), 1);
    for reply in &replies {
        let allowed = reply.status == StatusCode::CONFLICT || reply.status == StatusCode::CREATED;
        assert!(allowed, "unexpected status {}", reply.status);
        if reply.headers.contains_key("idempotent-replayed") {
            assert_eq!(reply.body, fresh[0].body);
        }
    }
}

#[tokio::test]
async fn two_layers_sharing_sqlite_run_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path().join("courier.db"))
        .await
        .unwrap();

    assert_two_layers_run_once(Arc::new(store)).await;
}

/// Returns the database URL that CI sets, or the local server's.
#[cfg(feature = "postgres")]
fn postgres_url() -> String {
    std::env::var("TOWER_COURIER_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// Returns a name unique to this test run, for a schema or a key prefix.
#[cfg(any(feature = "postgres", feature = "redis"))]
fn unique_name() -> String {
    let id = tower_courier::MessageId::new()
        .to_string()
        .replace('-', "_");
    format!("inbound_{id}")
}

#[cfg(feature = "postgres")]
#[tokio::test]
async fn two_layers_sharing_postgres_run_once() {
    use tower_courier::store::postgres::{PostgresOptions, PostgresStore};

    let schema = unique_name();
    let options = PostgresOptions::new().schema(schema.clone());
    let store = PostgresStore::connect_with(&postgres_url(), options)
        .await
        .unwrap();

    assert_two_layers_run_once(Arc::new(store)).await;

    let pool = sqlx::PgPool::connect(&postgres_url()).await.unwrap();
    let drop_schema = format!("DROP SCHEMA {schema} CASCADE");
    sqlx::raw_sql(sqlx::AssertSqlSafe(drop_schema))
        .execute(&pool)
        .await
        .unwrap();
}

#[cfg(feature = "redis")]
#[tokio::test]
async fn two_layers_sharing_redis_run_once() {
    use tower_courier::store::redis::{RedisOptions, RedisStore};

    let url = std::env::var("TOWER_COURIER_REDIS_URL")
        .unwrap_or_else(|_| "redis://127.0.0.1:6379/0".to_owned());
    let options = RedisOptions::new().prefix(format!("{}:", unique_name()));
    let store = RedisStore::connect_with(&url, options).await.unwrap();

    assert_two_layers_run_once(Arc::new(store)).await;
}

#[tokio::test]
async fn sqlite_replays_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("courier.db");
    let runs = Runs::default();

    let store: Arc<dyn IdempotencyStore> = Arc::new(SqliteStore::open(&path).await.unwrap());
    let address = serve(app(
        IdempotencyLayer::required(store),
        runs.clone(),
        Duration::ZERO,
    ))
    .await;
    let first = send(
        address,
        loopback::post(address, "/orders", Some("restart"), "{}"),
    )
    .await;

    let reopened: Arc<dyn IdempotencyStore> = Arc::new(SqliteStore::open(&path).await.unwrap());
    let address = serve(app(
        IdempotencyLayer::required(reopened),
        runs.clone(),
        Duration::ZERO,
    ))
    .await;
    let replay = send(
        address,
        loopback::post(address, "/orders", Some("restart"), "{}"),
    )
    .await;

    assert_eq!(runs.get(), 1);
    assert_replay_of(&replay, &first);
}

fn key(kid: &str, byte: u8) -> Key {
    Key::from_bytes(kid, &[byte; 32]).unwrap()
}

#[tokio::test]
async fn keys_are_scoped_by_principal() {
    let runs = Runs::default();
    let receiver_keys = KeyRing::builder()
        .signing_key(key("alpha", 1))
        .key(key("beta", 2))
        .build()
        .unwrap();
    let handler_runs = runs.clone();
    let handler = tower::service_fn(move |request: http::Request<Full<Bytes>>| {
        let runs = handler_runs.clone();
        async move {
            runs.add();
            let kid = request
                .extensions()
                .get::<KeyId>()
                .unwrap()
                .as_str()
                .to_owned();
            let mut response = http::Response::new(Full::new(Bytes::from(kid)));
            *response.status_mut() = StatusCode::CREATED;
            Ok::<_, Infallible>(response)
        }
    });
    let receiver = ServiceBuilder::new()
        .layer(VerifyLayer::new(receiver_keys))
        .layer(IdempotencyLayer::required(memory()))
        .service(handler);
    let alpha = ServiceBuilder::new()
        .layer(SignLayer::new(KeyRing::single(key("alpha", 1))))
        .service(receiver.clone());
    let beta = ServiceBuilder::new()
        .layer(SignLayer::new(KeyRing::single(key("beta", 2))))
        .service(receiver);
    let request = || {
        http::Request::post("/orders")
            .header("idempotency-key", "shared-key")
            .body(Full::new(Bytes::from_static(b"{}")))
            .unwrap()
    };

    let from_alpha = alpha.clone().oneshot(request()).await.unwrap();
    let from_beta = beta.oneshot(request()).await.unwrap();
    let alpha_retry = alpha.oneshot(request()).await.unwrap();

    assert_eq!(runs.get(), 2);
    assert_eq!(
        from_alpha.into_body().collect().await.unwrap().to_bytes(),
        "alpha"
    );
    assert!(!from_beta.headers().contains_key("idempotent-replayed"));
    assert_eq!(
        from_beta.into_body().collect().await.unwrap().to_bytes(),
        "beta"
    );
    assert_eq!(alpha_retry.headers()["idempotent-replayed"], "true");
    assert_eq!(
        alpha_retry.into_body().collect().await.unwrap().to_bytes(),
        "alpha"
    );
}
