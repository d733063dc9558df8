//! The `202 Accepted` layer, its status resource and its workers.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use axum::Router;
use axum::routing::post;
use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use http_body_util::Full;
use serde_json::Value;
use tower::{ServiceBuilder, ServiceExt};
use tower_courier::MessageId;
use tower_courier::accept::{AcceptLayer, PRINCIPAL_METADATA};
use tower_courier::auth::{Key, KeyRing, SignLayer, VerifyLayer};
use tower_courier::idempotency::IdempotencyLayer;
use tower_courier::store::memory::MemoryStore;
use tower_courier::store::{
    Claimed, Lease, Message, MessageQueue, MessageState, NewMessage, Outcome, QueueCounts,
    StoreError, Subscription,
};

use common::{Reply, send, serve};

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
        common::post(address, "/orders?source=web", None, "{\"qty\":2}"),
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

    let reply = send(address, common::post(address, "/orders", None, "{}")).await;
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

    let direct = send(address, common::post(address, "/orders", None, "a")).await;
    let command = send(
        address,
        common::post(address, "/orders/7/cancel", None, "b"),
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

    let first = send(address, common::post(address, "/orders", Some("c1"), "{}")).await;
    let retry = send(address, common::post(address, "/orders", Some("c1"), "{}")).await;

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

    let reply = send(address, common::post(address, "/orders", None, "{}")).await;

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

    let reply = send(address, common::post(address, &location, None, "{}")).await;

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
