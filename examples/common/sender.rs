//! The sender's client stacks: an outbox in front of a signing HTTP
//! client, and a dispatcher that delivers what the outbox stored.
//!
//! ```text
//! caller ──> OutboxLayer::background|optimistic(store)  stores the request (and, optimistic, tries it once)
//!              └─> SignLayer(keys)                       signs the inline attempt
//!                    └─> hyper-util legacy Client
//!
//! Dispatcher(store) ──> SignLayer(keys)                  signs every attempt afresh
//!                         └─> hyper-util legacy Client
//! ```

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tower::{Layer, ServiceBuilder};
use tower_courier::auth::{KeyRing, Sign, SignLayer};
use tower_courier::outbox::{Dispatcher, Outbox, OutboxLayer};
use tower_courier::store::MessageQueue;
use tower_courier::worker::WorkerHandle;

use super::{EXAMPLE_LEASE, example_backoff};

/// The HTTP client under every stack: hyper-util's pooled client.
pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// The client that signs each request it sends.
pub type SignedClient = Sign<HttpClient>;

/// Whether the outbox tries a request inline before storing it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SendMode {
    /// Store every request and let the dispatcher send it.
    Background,
    /// Send once inline; store only what failed transiently.
    Optimistic,
}

/// Builds the signing client: `SignLayer` over hyper-util's client.
pub fn signed_client(keys: KeyRing) -> SignedClient {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    ServiceBuilder::new()
        .layer(SignLayer::new(keys))
        .service(client)
}

/// Builds the outbox stack that callers send commands through.
pub fn outbox(
    mode: SendMode,
    store: Arc<dyn MessageQueue>,
    client: SignedClient,
    attempt_timeout: Duration,
) -> Outbox<SignedClient> {
    let layer = match mode {
        SendMode::Background => OutboxLayer::background(store),
        SendMode::Optimistic => OutboxLayer::optimistic(store),
    };
    layer
        .attempt_timeout(attempt_timeout)
        .backoff(example_backoff())
        .layer(client)
}

/// Starts a dispatcher that delivers the outbox's messages through
/// `client`, with the examples' lease and backoff.
///
/// Every dispatcher of one outbox must sign with the same key id. The
/// receiver scopes idempotency keys by the signing key id, so a message
/// that one instance sent and another sends again after a crash, under
/// another key id, is handled twice.
pub fn spawn_dispatcher(
    store: Arc<dyn MessageQueue>,
    client: SignedClient,
    attempt_timeout: Duration,
) -> WorkerHandle {
    Dispatcher::new(store, client)
        .lease(EXAMPLE_LEASE)
        .backoff(example_backoff())
        .attempt_timeout(attempt_timeout)
        .poll_interval(Duration::from_millis(200))
        .spawn()
}

/// Creates command `index`: `POST {target}/commands/cmd-{index}` with a
/// JSON body.
pub fn command_request(target: &str, index: u64) -> Request<Full<Bytes>> {
    let body = serde_json::json!({ "command": format!("cmd-{index}"), "index": index });
    Request::post(format!(
        "{}/commands/cmd-{index}",
        target.trim_end_matches('/')
    ))
    .header(http::header::CONTENT_TYPE, "application/json")
    .body(Full::new(Bytes::from(body.to_string())))
    .expect("a target that parsed as a URL makes a valid request")
}
