//! A durable outbox for outbound HTTP requests, and the dispatcher that
//! delivers what it stores.
//!
//! [`OutboxLayer`] wraps an HTTP client service and works in one of two
//! modes:
//!
//! - [`OutboxLayer::optimistic`] tries each request once inline. A success
//!   returns [`Delivery::Delivered`] and stores nothing. A transient
//!   failure (connection error, timeout, 5xx, 408, 409, 425, 429) stores
//!   the request and returns [`Delivery::Queued`]: **queued, not
//!   delivered**. A permanent failure returns [`Delivery::Rejected`] with
//!   the receiver's response, or an [`OutboxError`].
//! - [`OutboxLayer::background`] stores each request and returns
//!   [`Delivery::Queued`] at once. Permanent failures are dead-lettered by
//!   the dispatcher.
//!
//! In both modes a request that cannot be sent (a scheme other than `http`
//! or `https`, no host, a body over the limit) is an [`OutboxError`] and
//! nothing is stored.
//!
//! Each request gets a [`MessageId`](crate::MessageId) and, unless the
//! caller set one, an `Idempotency-Key` header with that id. The header is
//! stored with the request, so every attempt, inline or from the outbox,
//! before or after a restart, carries the same key.
//!
//! A [`Dispatcher`] claims due messages, sends them through the client
//! stack and completes, reschedules or dead-letters each one. Dead letters
//! stay in the store, where [`MessageQueue::list`], [`MessageQueue::retry`]
//! and [`MessageQueue::purge`] reach them.
//!
//! # Stacking order
//!
//! The outbox goes above the signing layer, and the dispatcher gets the
//! same client stack, so that every attempt is signed afresh (new `ts`,
//! new nonce) when it is sent, not when it was stored:
//! `ServiceBuilder::new().layer(OutboxLayer::..).layer(SignLayer::..).service(client)`.
//! The example below builds that stack.
//!
//! # What is promised
//!
//! - A request for which the layer returned [`Delivery::Queued`] is as
//!   durable as the store (the memory store is not durable).
//! - While a dispatcher runs, a queued request is delivered **at least
//!   once**, until it succeeds, fails permanently, or runs out of attempts
//!   or age.
//! - Receivers see the same `Idempotency-Key`, method, target, headers and
//!   body bytes on every attempt, so they can deduplicate.
//!
//! Not promised:
//!
//! - Exactly-once effects: a dispatcher that dies after sending and before
//!   recording the result sends the message again.
//! - Order: messages are claimed oldest first, but sent concurrently and
//!   retried independently.
//! - Durability of the inline attempt: in optimistic mode nothing is stored
//!   before the inline attempt, so a process that dies during it loses the
//!   request (the caller has no response yet and should treat it as not
//!   sent). The inline attempt is also not counted against the
//!   dispatcher's maximum attempts.
//!
//! # Example
//!
//! ```
//! # use std::sync::Arc;
//! # use std::convert::Infallible;
//! # use bytes::Bytes;
//! # use http::{Request, Response, StatusCode};
//! # use http_body_util::Full;
//! # use tower::{ServiceBuilder, ServiceExt, service_fn};
//! use tower_courier::auth::{Key, KeyRing, SignLayer};
//! use tower_courier::outbox::{Delivery, Dispatcher, OutboxLayer, QueuedReason};
//! use tower_courier::store::{MessageQueue, MessageState, memory::MemoryStore};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let store: Arc<dyn MessageQueue> = Arc::new(MemoryStore::new());
//! let keys = KeyRing::single(Key::from_bytes("billing", &[7; 32]).unwrap());
//! // Stands in for a hyper client: a receiver that is down for now.
//! let http_client = service_fn(|_request: Request<Full<Bytes>>| async {
//!     let mut response = Response::new(Full::new(Bytes::new()));
//!     *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
//!     Ok::<_, Infallible>(response)
//! });
//!
//! let outbox = ServiceBuilder::new()
//!     .layer(OutboxLayer::optimistic(store.clone()))
//!     .layer(SignLayer::new(keys.clone()))
//!     .service(http_client.clone());
//! let request = Request::post("http://127.0.0.1:9/orders").body(Full::new(Bytes::from("{}"))).unwrap();
//!
//! let Delivery::Queued(queued) = outbox.oneshot(request).await.unwrap() else {
//!     panic!("a 503 is queued");
//! };
//! assert!(matches!(queued.reason, QueuedReason::Transient { status: Some(StatusCode::SERVICE_UNAVAILABLE), .. }));
//!
//! // The stored request carries its Idempotency-Key, and no signature:
//! // each attempt is signed when it is sent.
//! let stored = store.get(queued.id).await.unwrap().unwrap();
//! assert_eq!(stored.state, MessageState::Pending);
//! assert_eq!(stored.headers["idempotency-key"], queued.id.to_string());
//! assert!(!stored.headers.contains_key("x-authentication"));
//!
//! // The dispatcher sends through the same signing stack.
//! let client = ServiceBuilder::new().layer(SignLayer::new(keys)).service(http_client);
//! let dispatcher = Dispatcher::new(store, client).spawn();
//! dispatcher.shutdown().await;
//! # }
//! ```
//!
//! # Transactional outbox
//!
//! Some requests must go out if and only if the caller's own database
//! writes commit, such as an order row and its `order-created` event.
//! Store those in the caller's transaction instead of through the layer.
//! [`OutboxLayer::prepare`] converts the request exactly as the layer
//! would (destination, `Idempotency-Key`, body limit, queue). The store's
//! `enqueue_in` then inserts it on the transaction's connection. A
//! rollback leaves no message, and no dispatcher can claim the message
//! before the commit.
//!
//! - SQLite ([`SqliteStore`](crate::store::sqlite::SqliteStore)): begin the
//!   transaction on [`SqliteStore::pool`](crate::store::sqlite::SqliteStore::pool)
//!   with `BEGIN IMMEDIATE`, and after the commit call
//!   [`SqliteStore::notify`](crate::store::sqlite::SqliteStore::notify)
//!   with the queue to wake this process's dispatchers at once. Without
//!   it they find the message at their next poll.
//! - PostgreSQL (`PostgresStore`, feature `postgres`):
//!   `enqueue_in` calls `pg_notify` in the transaction, which PostgreSQL
//!   delivers at commit, so dispatchers in every process wake after the
//!   commit. No call is needed afterwards.
//!
//! Prepare before beginning the transaction: buffering the body can wait
//! on the network, and an open write transaction holds locks meanwhile.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # use std::sync::Arc;
//! # use bytes::Bytes;
//! # use http_body_util::Full;
//! use tower_courier::outbox::OutboxLayer;
//! use tower_courier::store::MessageQueue;
//! use tower_courier::store::sqlite::SqliteStore;
//!
//! # let dir = tempfile::tempdir()?;
//! let store = SqliteStore::open(dir.path().join("app.db")).await?;
//! let outbox = OutboxLayer::background(Arc::new(store.clone()));
//! sqlx::query("CREATE TABLE orders (id INTEGER PRIMARY KEY, item TEXT)")
//!     .execute(store.pool())
//!     .await?;
//!
//! let event = http::Request::post("http://127.0.0.1:9/order-created")
//!     .body(Full::new(Bytes::from(r#"{"order":1}"#)))?;
//! let message = outbox.prepare(event).await?;
//! let queue = message.queue.clone();
//!
//! // The order and its event commit together, or neither does.
//! let mut tx = store.pool().begin_with("BEGIN IMMEDIATE").await?;
//! sqlx::query("INSERT INTO orders (id, item) VALUES (1, 'book')")
//!     .execute(&mut *tx)
//!     .await?;
//! store.enqueue_in(&mut tx, &[message]).await?;
//! tx.commit().await?;
//! store.notify(&queue);
//!
//! assert_eq!(store.counts(&queue).await?.pending, 1);
//! # Ok(())
//! # }
//! ```
//!
//! [`MessageQueue::list`]: crate::store::MessageQueue::list
//! [`MessageQueue::retry`]: crate::store::MessageQueue::retry
//! [`MessageQueue::purge`]: crate::store::MessageQueue::purge

mod delivery;
mod dispatcher;
mod error;
mod future;
mod layer;
mod send;

use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use http_body_util::Full;
use tower::Service;

pub use delivery::{Delivery, Queued, QueuedReason};
pub use dispatcher::{Dispatcher, outbound_request};
pub use error::{OutboxError, OutboxErrorKind};
pub use future::ResponseFuture;
pub use layer::OutboxLayer;

use crate::BoxError;
use layer::OutboxConfig;

/// Stores outbound requests in an outbox: see the [module docs](self).
#[derive(Clone)]
pub struct Outbox<S> {
    inner: S,
    config: Arc<OutboxConfig>,
}

impl<S> Outbox<S> {
    pub(crate) fn from_config(inner: S, config: Arc<OutboxConfig>) -> Self {
        Self { inner, config }
    }

    /// Returns a reference to the inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Returns a mutable reference to the inner service.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Returns the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: std::fmt::Debug> std::fmt::Debug for Outbox<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox")
            .field("inner", &self.inner)
            .field("mode", &self.config.mode)
            .field("queue", &self.config.queue)
            .finish()
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Outbox<S>
where
    S: Service<Request<Full<Bytes>>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Into<BoxError>,
    ReqBody: Body + Send + 'static,
    ReqBody::Data: Send,
    ReqBody::Error: Into<BoxError>,
    ResBody: Send + 'static,
{
    type Response = Delivery<ResBody>;
    type Error = OutboxError;
    type Future = ResponseFuture<ResBody>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // The inner service is driven to readiness inside the future, after
        // the body is buffered, and background mode does not call it at
        // all, so this layer is always ready.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let inner = self.inner.clone();
        let config = self.config.clone();
        ResponseFuture::new(Box::pin(send::handle(config, inner, request)))
    }
}
