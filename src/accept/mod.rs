//! `202 Accepted` commands: requests stored durably and run by background
//! workers.
//!
//! [`AcceptLayer`] marks some routes (a method and a path pattern) as
//! commands. A command request is stored in a [`MessageQueue`](crate::store::MessageQueue) with its
//! method, path and query, headers, body and authenticated principal, and
//! only then does the layer respond:
//!
//! ```text
//! HTTP/1.1 202 Accepted
//! Location: /commands/status/01936f4e-8a1b-7c2d-9e3f-0123456789ab
//! Content-Type: application/json
//!
//! {"id":"01936f4e-8a1b-7c2d-9e3f-0123456789ab","status":"accepted"}
//! ```
//!
//! If the store fails, the response is `503 Service Unavailable` and
//! nothing is queued. Other requests go to the inner service unchanged.
//!
//! ```
//! use std::sync::Arc;
//!
//! use axum::Router;
//! use axum::routing::post;
//! use bytes::Bytes;
//! use http::{Method, Request, StatusCode};
//! use http_body_util::Full;
//! use tower::ServiceExt;
//! use tower_courier::accept::AcceptLayer;
//! use tower_courier::store::MessageQueue;
//! use tower_courier::store::memory::MemoryStore;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let store = Arc::new(MemoryStore::new());
//! let accept = AcceptLayer::new(store.clone()).command(Method::POST, "/orders");
//! let app = Router::new()
//!     .route("/orders", post(|| async { StatusCode::CREATED }))
//!     .layer(accept.clone())
//!     .route_service("/commands/status/{id}", accept.status_service());
//!
//! let request = Request::post("/orders").body(Full::new(Bytes::from("{}"))).unwrap();
//! let response = app.oneshot(request).await.unwrap();
//! assert_eq!(response.status(), StatusCode::ACCEPTED);
//! assert!(response.headers()["location"].to_str().unwrap().starts_with("/commands/status/"));
//! assert_eq!(store.counts("commands").await.unwrap().pending, 1);
//! # }
//! ```
//!
//! [`CommandStatus`] is the status resource that `Location` points to;
//! the application mounts it at `<status prefix>/{id}`, behind the same
//! signature check as the command routes.
//!
//! # Workers
//!
//! [`AcceptLayer::worker`] returns the crate's shared queue
//! [`Worker`](crate::worker::Worker), configured to run this layer's
//! commands through the application's handlers: the stored request is
//! rebuilt by [`command_request`] with the principal and the
//! [`CommandId`] in its extensions. A 2xx completes the command. A 5xx,
//! 408, 409, 425, 429, a timeout or a panic is retried with backoff, and
//! the command is dead once the attempts or age run out. Any other 4xx
//! fails it at once. The handler's status and the first 64 KiB of its body
//! (the worker's default outcome limit) are kept for the status resource.
//! [`WorkerHandle::shutdown`](crate::worker::WorkerHandle::shutdown) stops
//! the worker gracefully: it claims nothing more, lets running commands
//! finish within its grace period, and releases the rest.
//!
//! # Delivery
//!
//! Workers run each command at least once: a worker that dies while it
//! runs a command leaves it to be run again once its lease ends. A handler
//! whose effect must apply once records the [`CommandId`] (an extension of
//! the worker's request) in the same database transaction as its writes,
//! with [`inbox`](crate::inbox).
//!
//! With the idempotency layer in front, a retried command request gets the
//! same `202` and command id replayed, and no second command is queued.
//! A command that carries an `Idempotency-Key` also gets an id derived from
//! the key, its principal and route, and the request's fingerprint, so a
//! retry whose stored `202` was lost in a crash names the same command.
//! Such ids are UUID version 8 and not time-ordered.
//!
//! Requests that carry a [`CommandId`] extension, as the worker's do, pass
//! through this layer to the inner service. Give the worker the handlers,
//! not a stack with the signature check: a stored command keeps the
//! signature it arrived with, which the check rejects as a replay.

mod enqueue;
mod layer;
mod route;
mod status;
mod worker;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::future::BoxFuture;
use http::{Request, Response};
use http_body::Body;
use pin_project_lite::pin_project;
use tower::Service;

use self::layer::Config;
use crate::body::ResponseBody;
use crate::{BoxError, MessageId};

pub use self::enqueue::PRINCIPAL_METADATA;
pub use self::layer::{
    AcceptLayer, DEFAULT_QUEUE, DEFAULT_REQUEST_BODY_LIMIT, DEFAULT_STATUS_PREFIX,
};
pub use self::status::{CommandStatus, StatusFuture, StatusResponse};
pub use self::worker::command_request;

/// The id of the command a worker runs, in the extensions of the request
/// the handler receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CommandId(MessageId);

impl CommandId {
    /// Creates a command id extension for `id`.
    pub fn new(id: MessageId) -> Self {
        Self(id)
    }

    /// Returns the id of the stored command.
    pub fn id(&self) -> MessageId {
        self.0
    }
}

impl fmt::Display for CommandId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

/// Stores command requests and responds `202 Accepted`.
///
/// Built by [`AcceptLayer`].
#[derive(Debug, Clone)]
pub struct Accept<S> {
    inner: S,
    config: Arc<Config>,
}

impl<S> Accept<S> {
    pub(crate) fn from_config(inner: S, config: Arc<Config>) -> Self {
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

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Accept<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ReqBody: Body + Send + 'static,
    ReqBody::Data: Send,
    ReqBody::Error: Into<BoxError>,
    ResBody: Send + 'static,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = AcceptFuture<S::Future, ResBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let from_worker = request.extensions().get::<CommandId>().is_some();
        let route = self
            .config
            .routes
            .iter()
            .find(|route| route.matches(request.method(), request.uri().path()))
            .filter(|_| !from_worker)
            .cloned();

        match route {
            Some(route) => {
                let config = self.config.clone();
                AcceptFuture::enqueue(Box::pin(enqueue::accept(config, route, request)))
            }
            None => AcceptFuture::inner(self.inner.call(request)),
        }
    }
}

pin_project! {
    /// The response future of [`Accept`].
    pub struct AcceptFuture<F, B> {
        #[pin]
        state: State<F, B>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, B> {
        // The inner service handles the request.
        Inner {
            #[pin]
            future: F,
        },
        // The layer stores the command.
        Enqueue {
            future: BoxFuture<'static, Response<ResponseBody<B>>>,
        },
    }
}

impl<F, B> AcceptFuture<F, B> {
    fn inner(future: F) -> Self {
        let state = State::Inner { future };
        Self { state }
    }

    fn enqueue(future: BoxFuture<'static, Response<ResponseBody<B>>>) -> Self {
        let state = State::Enqueue { future };
        Self { state }
    }
}

impl<F, B, E> Future for AcceptFuture<F, B>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<ResponseBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Inner { future } => future
                .poll(cx)
                .map_ok(|response| response.map(ResponseBody::inner)),
            StateProj::Enqueue { future } => future.as_mut().poll(cx).map(Ok),
        }
    }
}

impl<F, B> fmt::Debug for AcceptFuture<F, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.state {
            State::Inner { .. } => "inner",
            State::Enqueue { .. } => "enqueue",
        };
        f.debug_struct("AcceptFuture")
            .field("state", &state)
            .finish()
    }
}
