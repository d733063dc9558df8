//! The `202 Accepted` layer, its status resource and its workers.

mod loopback;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use axum::routing::post;
use axum::{Extension, Router};
use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use http_body_util::Full;
use serde_json::Value;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};
use tower::{ServiceBuilder, ServiceExt};
use tower_courier::MessageId;
use tower_courier::accept::{AcceptLayer, CommandId, PRINCIPAL_METADATA};
use tower_courier::auth::{Key, KeyId, KeyRing, SignLayer, VerifyLayer};
use tower_courier::idempotency::IdempotencyLayer;
use tower_courier::inbox;
use tower_courier::retry::Backoff;
use tower_courier::store::memory::MemoryStore;
use tower_courier::store::sqlite::SqliteStore;
use tower_courier::store::{
    Claimed, Lease, Message, MessageQueue, MessageState, NewMessage, Outcome, QueueCounts,
    StoreError, Subscription,
};

use loopback::{Reply, send, serve};

async fn created(body: String) -> (StatusCode, String) {
    (StatusCode::CREATED, format!("created {body}"))
}

/// Serves the command route behind the accept layer, and the status
/// resource beside it.
fn app(layer: &AcceptLayer) -> Router {
    Router::new()
        .route("/orders", post(created))
        .layer(layer.clone())
        .route_service("/commands/status/{id}", layer.status_service())
}

async fn status(address: SocketAddr, location: &str) -> (StatusCode, Value) {
    let request = Request::get(location)
        .header("host", "test")
        .body(Full::default())
        .unwrap();
    let reply = send(address, request).await;
    let body = serde_json::from_slice(&reply.body).unwrap_or(Value::Null);
    (reply.status, body)
}

fn accepted_id(reply: &Reply) -> String {
    let body: Value = serde_json::from_slice(&reply.body).unwrap();
    body["id"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn command_is_stored_before_202() {
    let store = Arc::new(MemoryStore::new());
    let layer = AcceptLayer::new(store.clone()).command(Method::POST, "/orders");
    let address = serve(app(&layer)).await;

    let reply = send(
        address,
        loopback::post(address, "/orders?source=web", None, "{\"qty\":2}"),
    )
    .await;

    assert_eq!(reply.status, StatusCode::ACCEPTED);
    assert_eq!(reply.headers["content-type"], "application/json");
    let id = accepted_id(&reply);
    assert_eq!(reply.headers["location"], format!("/commands/status/{id}"));
    let body: Value = serde_json::from_slice(&reply.body).unwrap();
    assert_eq!(body, serde_json::json!({ "id": id, "status": "accepted" }));

    let stored = store.get(id.parse().unwrap()).await.unwrap().unwrap();
    assert_eq!(stored.queue, "commands");
    assert_eq!(stored.destination, "/orders");
    assert_eq!(stored.method, Method::POST);
    assert_eq!(stored.path_and_query, "/orders?source=web");
    assert_eq!(stored.body, "{\"qty\":2}");
    assert_eq!(stored.headers["content-type"], "application/json");
    assert_eq!(stored.state, MessageState::Pending);
}

#[tokio::test]
async fn status_of_new_command_is_accepted() {
    let store = Arc::new(MemoryStore::new());
    let layer = AcceptLayer::new(store.clone()).command(Method::POST, "/orders");
    let address = serve(app(&layer)).await;

    let reply = send(address, loopback::post(address, "/orders", None, "{}")).await;
    let location = reply.headers["location"].to_str().unwrap();
    let (code, body) = status(address, location).await;

    assert_eq!(code, StatusCode::OK);
    assert_eq!(body["id"], accepted_id(&reply));
    assert_eq!(body["status"], "accepted");
    assert_eq!(body["attempts"], 0);
    assert_eq!(body["last_error"], Value::Null);
    assert!(body.get("response").is_none());
}

#[tokio::test]
async fn unknown_or_malformed_id_is_404() {
    let store = Arc::new(MemoryStore::new());
    let layer = AcceptLayer::new(store.clone()).command(Method::POST, "/orders");
    let address = serve(app(&layer)).await;

    let unknown = format!("/commands/status/{}", MessageId::new());
    for location in [
        unknown.as_str(),
        "/commands/status/not-an-id",
        "/commands/status/%2e%2e",
    ] {
        let (code, body) = status(address, location).await;
        assert_eq!(code, StatusCode::NOT_FOUND, "{location}");
        assert_eq!(body["status"], 404, "{location}");
    }
}

#[tokio::test]
async fn command_of_other_queue_is_404() {
    let store = Arc::new(MemoryStore::new());
    let other = NewMessage::new("outbox", "http://x", Method::POST, "/", SystemTime::now());
    let id = other.id;
    store.enqueue(vec![other]).await.unwrap();
    let layer = AcceptLayer::new(store.clone()).command(Method::POST, "/orders");
    let address = serve(app(&layer)).await;

    let (code, _) = status(address, &format!("/commands/status/{id}")).await;

    assert_eq!(code, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn other_routes_pass_through() {
    let store = Arc::new(MemoryStore::new());
    let layer = AcceptLayer::new(store.clone()).command(Method::POST, "/orders/{id}/cancel");
    let router = Router::new()
        .route("/orders", post(created))
        .route("/orders/{id}/cancel", post(created))
        .layer(layer);
    let address = serve(router).await;

    let direct = send(address, loopback::post(address, "/orders", None, "a")).await;
    let command = send(
        address,
        loopback::post(address, "/orders/7/cancel", None, "b"),
    )
    .await;

    assert_eq!(direct.status, StatusCode::CREATED);
    assert_eq!(direct.body, "created a");
    assert_eq!(command.status, StatusCode::ACCEPTED);
    let counts = store.counts("commands").await.unwrap();
    assert_eq!(counts.pending, 1);
}

#[tokio::test]
async fn retried_post_gets_same_id_and_queues_nothing() {
    let store = Arc::new(MemoryStore::new());
    let accept = AcceptLayer::new(store.clone()).command(Method::POST, "/orders");
    let router = Router::new()
        .route("/orders", post(created))
        .layer(accept)
        .layer(IdempotencyLayer::required(store.clone()));
    let address = serve(router).await;

    let first = send(
        address,
        loopback::post(address, "/orders", Some("c1"), "{}"),
    )
    .await;
    let retry = send(
        address,
        loopback::post(address, "/orders", Some("c1"), "{}"),
    )
    .await;

    assert_eq!(first.status, StatusCode::ACCEPTED);
    assert_eq!(retry.status, StatusCode::ACCEPTED);
    assert_eq!(retry.headers["idempotent-replayed"], "true");
    assert_eq!(accepted_id(&retry), accepted_id(&first));
    assert_eq!(retry.headers["location"], first.headers["location"]);
    let counts = store.counts("commands").await.unwrap();
    assert_eq!(counts.pending, 1);
}

/// A queue whose enqueue fails, as when the database is down.
#[derive(Debug)]
struct FailingEnqueue(MemoryStore);

#[async_trait]
impl MessageQueue for FailingEnqueue {
    async fn enqueue(&self, _: Vec<NewMessage>) -> Result<Vec<bool>, StoreError> {
        Err(StoreError::unavailable(
            "store is down",
            std::io::Error::other("refused"),
        ))
    }

    async fn claim(
        &self,
        queue: &str,
        limit: usize,
        lease: Duration,
    ) -> Result<Vec<Claimed>, StoreError> {
        self.0.claim(queue, limit, lease).await
    }

    async fn renew(&self, lease: &Lease, extend_by: Duration) -> Result<Lease, StoreError> {
        self.0.renew(lease, extend_by).await
    }

    async fn complete(&self, lease: &Lease, outcome: Option<Outcome>) -> Result<(), StoreError> {
        self.0.complete(lease, outcome).await
    }

    async fn reschedule(
        &self,
        lease: &Lease,
        at: SystemTime,
        error: &str,
    ) -> Result<(), StoreError> {
        self.0.reschedule(lease, at, error).await
    }

    async fn release(&self, lease: &Lease) -> Result<(), StoreError> {
        self.0.release(lease).await
    }

    async fn fail(
        &self,
        lease: &Lease,
        error: &str,
        outcome: Option<Outcome>,
    ) -> Result<(), StoreError> {
        self.0.fail(lease, error, outcome).await
    }

    async fn dead_letter(
        &self,
        lease: &Lease,
        error: &str,
        outcome: Option<Outcome>,
    ) -> Result<(), StoreError> {
        self.0.dead_letter(lease, error, outcome).await
    }

    async fn get(&self, id: MessageId) -> Result<Option<Message>, StoreError> {
        self.0.get(id).await
    }

    async fn counts(&self, queue: &str) -> Result<QueueCounts, StoreError> {
        self.0.counts(queue).await
    }

    async fn list(
        &self,
        queue: &str,
        state: MessageState,
        limit: usize,
        after: Option<MessageId>,
    ) -> Result<Vec<Message>, StoreError> {
        self.0.list(queue, state, limit, after).await
    }

    async fn retry(&self, id: MessageId) -> Result<bool, StoreError> {
        self.0.retry(id).await
    }

    async fn purge(
        &self,
        queue: &str,
        state: MessageState,
        older_than: SystemTime,
    ) -> Result<u64, StoreError> {
        self.0.purge(queue, state, older_than).await
    }

    fn subscribe(&self, queue: &str) -> Subscription {
        self.0.subscribe(queue)
    }
}

#[tokio::test]
async fn store_failure_is_503_and_queues_nothing() {
    let store = Arc::new(FailingEnqueue(MemoryStore::new()));
    let layer = AcceptLayer::new(store.clone()).command(Method::POST, "/orders");
    let address = serve(app(&layer)).await;

    let reply = send(address, loopback::post(address, "/orders", None, "{}")).await;

    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(reply.headers["content-type"], "application/problem+json");
    assert!(!reply.headers.contains_key("location"));
    assert_eq!(
        store.counts("commands").await.unwrap(),
        QueueCounts::default()
    );
}

#[tokio::test]
async fn status_rejects_other_methods() {
    let store = Arc::new(MemoryStore::new());
    let layer = AcceptLayer::new(store.clone()).command(Method::POST, "/orders");
    let address = serve(app(&layer)).await;
    let location = format!("/commands/status/{}", MessageId::new());

    let reply = send(address, loopback::post(address, &location, None, "{}")).await;

    // `route_service` bypasses axum's method router, so this status comes
    // from the status service itself.
    assert_eq!(reply.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(reply.headers["allow"], "GET, HEAD");
}

#[tokio::test]
async fn signed_command_keeps_its_principal() {
    let store = Arc::new(MemoryStore::new());
    let keys = KeyRing::single(Key::from_bytes("billing", &[7; 32]).unwrap());
    let layer = AcceptLayer::new(store.clone()).command(Method::POST, "/orders");
    let receiver = ServiceBuilder::new()
        .layer(VerifyLayer::new(keys.clone()))
        .service(Router::new().route("/orders", post(created)).layer(layer));
    let sender = ServiceBuilder::new()
        .layer(SignLayer::new(keys))
        .service(receiver);

    let request = Request::post("/orders")
        .body(Full::new(Bytes::from_static(b"{}")))
        .unwrap();
    let response = sender.oneshot(request).await.unwrap();

    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let id: Value = serde_json::from_slice(&body).unwrap();
    let stored = store
        .get(id["id"].as_str().unwrap().parse().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.metadata[PRINCIPAL_METADATA], "billing");
}

// Workers.

/// Polls the status resource until the command reaches a final status.
async fn final_status(address: SocketAddr, location: &str) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (code, body) = status(address, location).await;
        assert_eq!(code, StatusCode::OK);
        let name = body["status"].as_str().unwrap().to_owned();
        if ["succeeded", "failed", "dead"].contains(&name.as_str()) {
            return body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "command still {name}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn fast_retries() -> Backoff {
    Backoff::new()
        .initial_delay(Duration::from_millis(10))
        .max_delay(Duration::from_millis(20))
        .max_attempts(5)
}

/// Serves a handler that responds to each run with the next status of
/// `statuses` (the last one repeats), and counts its runs.
fn scripted(
    store: Arc<MemoryStore>,
    statuses: &'static [u16],
) -> (Router, AcceptLayer, Arc<AtomicUsize>) {
    let runs = Arc::new(AtomicUsize::new(0));
    let handler_runs = runs.clone();
    let handler = move |Extension(id): Extension<CommandId>, body: String| {
        let run = handler_runs.fetch_add(1, Ordering::SeqCst);
        let status = statuses[run.min(statuses.len() - 1)];
        async move {
            (
                StatusCode::from_u16(status).unwrap(),
                format!("run {run} of {id}: {body}"),
            )
        }
    };
    let handlers = Router::new().route("/orders", post(handler));
    let layer = AcceptLayer::new(store).command(Method::POST, "/orders");
    (handlers, layer, runs)
}

#[tokio::test]
async fn command_runs_to_succeeded() {
    let store = Arc::new(MemoryStore::new());
    let (handlers, layer, runs) = scripted(store.clone(), &[201]);
    let address = serve(
        handlers
            .clone()
            .layer(layer.clone())
            .route_service("/commands/status/{id}", layer.status_service()),
    )
    .await;

    let reply = send(
        address,
        loopback::post(address, "/orders", None, "{\"qty\":1}"),
    )
    .await;
    let location = reply.headers["location"].to_str().unwrap().to_owned();
    let id = accepted_id(&reply);
    let (_, before) = status(address, &location).await;
    let worker = layer
        .worker(handlers)
        .poll_interval(Duration::from_millis(20))
        .spawn();
    let after = final_status(address, &location).await;
    worker.shutdown().await;

    assert_eq!(before["status"], "accepted");
    assert_eq!(after["status"], "succeeded");
    assert_eq!(after["attempts"], 1);
    assert_eq!(after["response"]["status"], 201);
    assert_eq!(
        after["response"]["body"],
        format!("run 0 of {id}: {{\"qty\":1}}")
    );
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn server_errors_are_retried_until_201() {
    let store = Arc::new(MemoryStore::new());
    let (handlers, layer, runs) = scripted(store.clone(), &[500, 500, 201]);
    let address = serve(app_with(&handlers, &layer)).await;

    let reply = send(address, loopback::post(address, "/orders", None, "{}")).await;
    let location = reply.headers["location"].to_str().unwrap().to_owned();
    let worker = layer
        .worker(handlers)
        .backoff(fast_retries())
        .poll_interval(Duration::from_millis(20))
        .spawn();
    let body = final_status(address, &location).await;
    worker.shutdown().await;

    assert_eq!(body["status"], "succeeded");
    assert_eq!(body["attempts"], 3);
    assert_eq!(body["response"]["status"], 201);
    assert_eq!(runs.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn client_error_fails_after_one_attempt() {
    let store = Arc::new(MemoryStore::new());
    let (handlers, layer, runs) = scripted(store.clone(), &[400]);
    let address = serve(app_with(&handlers, &layer)).await;

    let reply = send(address, loopback::post(address, "/orders", None, "{}")).await;
    let location = reply.headers["location"].to_str().unwrap().to_owned();
    let worker = layer
        .worker(handlers)
        .backoff(fast_retries())
        .poll_interval(Duration::from_millis(20))
        .spawn();
    let body = final_status(address, &location).await;
    worker.shutdown().await;

    assert_eq!(body["status"], "failed");
    assert_eq!(body["attempts"], 1);
    assert_eq!(body["response"]["status"], 400);
    assert!(body["last_error"].is_string());
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn exhausted_retries_end_dead() {
    let store = Arc::new(MemoryStore::new());
    let (handlers, layer, runs) = scripted(store.clone(), &[503]);
    let address = serve(app_with(&handlers, &layer)).await;

    let reply = send(address, loopback::post(address, "/orders", None, "{}")).await;
    let location = reply.headers["location"].to_str().unwrap().to_owned();
    let backoff = fast_retries().max_attempts(2);
    let worker = layer
        .worker(handlers)
        .backoff(backoff)
        .poll_interval(Duration::from_millis(20))
        .spawn();
    let body = final_status(address, &location).await;
    worker.shutdown().await;

    assert_eq!(body["status"], "dead");
    assert_eq!(body["attempts"], 2);
    assert_eq!(runs.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn worker_may_run_the_whole_stack() {
    let store = Arc::new(MemoryStore::new());
    let (handlers, layer, runs) = scripted(store.clone(), &[201]);
    let stack = app_with(&handlers, &layer);
    let address = serve(stack.clone()).await;

    let reply = send(address, loopback::post(address, "/orders", None, "{}")).await;
    let location = reply.headers["location"].to_str().unwrap().to_owned();
    let worker = layer
        .worker(stack)
        .poll_interval(Duration::from_millis(20))
        .spawn();
    let body = final_status(address, &location).await;
    worker.shutdown().await;

    assert_eq!(body["status"], "succeeded");
    assert_eq!(body["response"]["status"], 201);
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    assert_eq!(store.counts("commands").await.unwrap().succeeded, 1);
}

fn app_with(handlers: &Router, layer: &AcceptLayer) -> Router {
    handlers
        .clone()
        .layer(layer.clone())
        .route_service("/commands/status/{id}", layer.status_service())
}

// A worker process killed mid-command.

/// The environment variable that makes the child test run a worker.
const CHILD_DIR: &str = "COURIER_ACCEPT_CHILD_DIR";

/// The file the child writes once the handler committed its effect.
const COMMITTED_MARKER: &str = "effect-committed";

/// Opens the handler's own database: the inbox table and one row per
/// effect.
async fn app_database(dir: &Path) -> SqlitePool {
    let options = SqliteConnectOptions::new()
        .filename(dir.join("app.db"))
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .busy_timeout(Duration::from_secs(10));
    let pool = SqlitePoolOptions::new()
        .connect_with(options)
        .await
        .unwrap();
    let mut conn = pool.acquire().await.unwrap();
    inbox::ensure_schema(&mut *conn).await.unwrap();
    sqlx::query("CREATE TABLE IF NOT EXISTS effects (command TEXT NOT NULL)")
        .execute(&mut *conn)
        .await
        .unwrap();
    pool
}

/// A handler that applies its effect once per command through the inbox.
/// In the child process it then writes the marker and hangs, so that the
/// kill lands after the commit and before the worker records the result.
fn inbox_handler(pool: SqlitePool, dir: PathBuf, hang_after_commit: bool) -> Router {
    let handler = move |Extension(id): Extension<CommandId>| {
        let (pool, dir) = (pool.clone(), dir.clone());
        async move {
            let mut tx = pool.begin().await.unwrap();
            if inbox::record(&mut *tx, "orders", &id.to_string())
                .await
                .unwrap()
            {
                sqlx::query("INSERT INTO effects (command) VALUES (?1)")
                    .bind(id.to_string())
                    .execute(&mut *tx)
                    .await
                    .unwrap();
            }
            tx.commit().await.unwrap();

            if hang_after_commit {
                std::fs::write(dir.join(COMMITTED_MARKER), b"").unwrap();
                std::future::pending::<()>().await;
            }
            StatusCode::CREATED
        }
    };
    Router::new().route("/orders", post(handler))
}

const KILL_TEST_LEASE: Duration = Duration::from_millis(1500);

/// Runs a worker until the parent kills the process: the child side of
/// `killed_worker_command_runs_again`.
#[tokio::test]
#[ignore = "child process of killed_worker_command_runs_again"]
async fn killed_worker_child() {
    let Ok(dir) = std::env::var(CHILD_DIR) else {
        return;
    };
    let dir = PathBuf::from(dir);
    let store = Arc::new(SqliteStore::open(dir.join("courier.db")).await.unwrap());
    let pool = app_database(&dir).await;
    let layer = AcceptLayer::new(store).command(Method::POST, "/orders");

    let _worker = layer
        .worker(inbox_handler(pool, dir.clone(), true))
        .lease(KILL_TEST_LEASE)
        .poll_interval(Duration::from_millis(20))
        .spawn();
    std::future::pending::<()>().await;
}

#[tokio::test]
async fn killed_worker_command_runs_again() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(
        SqliteStore::open(dir.path().join("courier.db"))
            .await
            .unwrap(),
    );
    let pool = app_database(dir.path()).await;
    let layer = AcceptLayer::new(store.clone()).command(Method::POST, "/orders");
    let handlers = inbox_handler(pool.clone(), dir.path().to_owned(), false);
    let address = serve(app_with(&handlers, &layer)).await;

    let reply = send(address, loopback::post(address, "/orders", None, "{}")).await;
    let location = reply.headers["location"].to_str().unwrap().to_owned();
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "killed_worker_child", "--ignored", "--nocapture"])
        .env(CHILD_DIR, dir.path())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let marker = dir.path().join(COMMITTED_MARKER);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !marker.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the child never ran the command"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // `Child::kill` sends SIGKILL on Unix: no destructor or shutdown runs.
    child.kill().unwrap();
    child.wait().unwrap();

    let (_, mid) = status(address, &location).await;
    let worker = layer
        .worker(handlers)
        .lease(KILL_TEST_LEASE)
        .poll_interval(Duration::from_millis(20))
        .spawn();
    let body = final_status(address, &location).await;
    worker.shutdown().await;

    assert_eq!(mid["status"], "running");
    assert_eq!(body["status"], "succeeded");
    assert_eq!(body["attempts"], 2);
    let (effects,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM effects")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(effects, 1);
    let (recorded,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM courier_inbox")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(recorded, 1);
}

#[tokio::test]
async fn worker_restores_principal_and_id() {
    let store = Arc::new(MemoryStore::new());
    let keys = KeyRing::single(Key::from_bytes("billing", &[7; 32]).unwrap());
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let handler_seen = seen.clone();
    let handler = move |request: axum::extract::Request| {
        let seen = handler_seen.clone();
        async move {
            let extensions = request.extensions();
            let kid = extensions.get::<KeyId>().map(|kid| kid.as_str().to_owned());
            let id = extensions.get::<CommandId>().map(|id| id.to_string());
            seen.lock().unwrap().push((kid, id));
            StatusCode::NO_CONTENT
        }
    };
    let handlers = Router::new().route("/orders", post(handler));
    let layer = AcceptLayer::new(store.clone()).command(Method::POST, "/orders");
    let receiver = ServiceBuilder::new()
        .layer(VerifyLayer::new(keys.clone()))
        .service(handlers.clone().layer(layer.clone()));
    let sender = ServiceBuilder::new()
        .layer(SignLayer::new(keys))
        .service(receiver);

    let request = Request::post("/orders")
        .body(Full::new(Bytes::from_static(b"{}")))
        .unwrap();
    let response = sender.oneshot(request).await.unwrap();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let id: Value = serde_json::from_slice(&body).unwrap();
    let id = id["id"].as_str().unwrap().to_owned();
    let worker = layer
        .worker(handlers)
        .poll_interval(Duration::from_millis(20))
        .spawn();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while seen.lock().unwrap().is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the worker never ran the command"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    worker.shutdown().await;

    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen, [(Some("billing".to_owned()), Some(id))]);
}

#[tokio::test]
async fn shutdown_lets_running_command_finish() {
    let store = Arc::new(MemoryStore::new());
    let started = Arc::new(tokio::sync::Notify::new());
    let handler_started = started.clone();
    let handler = move || {
        let started = handler_started.clone();
        async move {
            started.notify_one();
            tokio::time::sleep(Duration::from_millis(300)).await;
            (StatusCode::CREATED, "finished")
        }
    };
    let handlers = Router::new().route("/orders", post(handler));
    let layer = AcceptLayer::new(store.clone()).command(Method::POST, "/orders");
    let address = serve(app_with(&handlers, &layer)).await;

    let reply = send(address, loopback::post(address, "/orders", None, "{}")).await;
    let location = reply.headers["location"].to_str().unwrap().to_owned();
    let worker = layer
        .worker(handlers)
        .poll_interval(Duration::from_millis(20))
        .spawn();
    started.notified().await;
    worker.shutdown().await;
    let (_, body) = status(address, &location).await;

    assert_eq!(body["status"], "succeeded");
    assert_eq!(body["response"]["body"], "finished");
}

/// A receiver that stored a command but died before the idempotency layer
/// stored the `202` sees the sender's retry reach the accept layer again:
/// the retry must name the first command, not queue a second one.
#[tokio::test]
async fn keyed_retry_without_stored_202_names_same_command() {
    let store = Arc::new(MemoryStore::new());
    let layer = AcceptLayer::new(store.clone()).command(Method::POST, "/orders");
    let address = serve(app(&layer)).await;
    let key = Some("order-7");

    let first = send(
        address,
        loopback::post(address, "/orders", key, "{\"qty\":2}"),
    )
    .await;
    let retry = send(
        address,
        loopback::post(address, "/orders", key, "{\"qty\":2}"),
    )
    .await;
    let other = send(
        address,
        loopback::post(address, "/orders", key, "{\"qty\":3}"),
    )
    .await;

    assert_eq!(first.status, StatusCode::ACCEPTED);
    assert_eq!(retry.status, StatusCode::ACCEPTED);
    assert_eq!(accepted_id(&retry), accepted_id(&first));
    assert_ne!(accepted_id(&other), accepted_id(&first));
    assert_eq!(store.counts("commands").await.unwrap().pending, 2);
}
