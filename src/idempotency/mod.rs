//! `Idempotency-Key` deduplication of unsafe requests.
//!
//! [`IdempotencyLayer`] makes a retried request return the response of the
//! first one instead of running the handler again. A record is identified
//! by (principal, method, path, key): the principal is the key id that the
//! signature check authenticated, or none, and the path excludes the
//! query. The request fingerprint (SHA-256 over method, path and query,
//! `Content-Type` and body) distinguishes a retry from a different request
//! sent under the same key.
//!
//! | Situation | Response |
//! |---|---|
//! | no record, or a claim whose lease ended | the handler runs under a claim |
//! | completed record, same fingerprint | the stored response with `Idempotent-Replayed: true` |
//! | any record, different fingerprint | `422 Unprocessable Content` |
//! | claim held by a running request | `409 Conflict` with `Retry-After: 1`, or a wait (see [`IdempotencyLayer::wait_for_running`]) |
//! | store failed | `503 Service Unavailable`, the handler does not run |
//! | malformed key, repeated field, or missing where required | `400 Bad Request` |
//! | request body over the limit | `413 Content Too Large` |
//!
//! GET, HEAD, OPTIONS and TRACE requests pass through undeduplicated.
//! Error bodies are `application/problem+json`.
//!
//! ```
//! use std::convert::Infallible;
//! use std::sync::Arc;
//!
//! use bytes::Bytes;
//! use http::{Request, Response, StatusCode};
//! use http_body_util::Full;
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//! use tower_courier::idempotency::IdempotencyLayer;
//! use tower_courier::store::memory::MemoryStore;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let handler = service_fn(|_request: Request<Full<Bytes>>| async {
//!     let mut response = Response::new(Full::new(Bytes::from("order 42")));
//!     *response.status_mut() = StatusCode::CREATED;
//!     Ok::<_, Infallible>(response)
//! });
//! let service = ServiceBuilder::new()
//!     .layer(IdempotencyLayer::required(Arc::new(MemoryStore::new())))
//!     .service(handler);
//! let request = || {
//!     Request::post("/orders")
//!         .header("idempotency-key", "8e03978e-40d5-43e8-bc93-6894a57f9324")
//!         .body(Full::new(Bytes::from("{}")))
//!         .unwrap()
//! };
//!
//! let first = service.clone().oneshot(request()).await.unwrap();
//! let retry = service.oneshot(request()).await.unwrap();
//! assert_eq!(first.status(), StatusCode::CREATED);
//! assert_eq!(retry.status(), StatusCode::CREATED);
//! assert_eq!(retry.headers()["idempotent-replayed"], "true");
//! # }
//! ```
//!
//! # Storing responses
//!
//! - 2xx and 4xx responses are stored, except 408, 409, 425 and 429. Those
//!   and every 5xx release the claim, so a retry runs the handler again.
//! - A response is stored before it is returned, so a retry that starts
//!   after the first response arrived is replayed and never gets `409`.
//! - Stored headers keep repeated fields and non-UTF-8 bytes. Hop-by-hop
//!   fields, `Content-Length`, `Date` and `Set-Cookie` are not stored.
//!   Trailers are not stored either.
//! - A response body longer than the response body limit still goes whole
//!   to the first caller, but the record keeps a `410 Gone` problem in its
//!   place. `410` is a permanent failure to a sender, so retries stop, and
//!   the handler does not run again.
//!
//! # Cancel safety and crashes
//!
//! A request with a key is handled inside its response future, which
//! saves a task per request. The future may be dropped once polled,
//! because the client disconnected or a timeout layer above this one gave
//! up. The unfinished work then moves to a task of its own, which settles
//! any claim it took, lets the handler finish and stores its response.
//! Only a runtime that shuts down stops it, and then the claim ends with
//! its lease. The layer expects a Tokio runtime with timers, as hyper and
//! axum servers have: outside one, a handler that waits is not renewed,
//! so it must finish within the lease, and a dropped request is not
//! finished. Requests without a key, and safe methods, are cancelled by a
//! drop as usual. The claim is a lease (default
//! 60 seconds) renewed every third of the lease while the handler runs.
//! A claim left by a crashed process is taken over once its lease ends,
//! and a late write by the old holder is refused by its fencing token.
//! A handler that panics releases its claim and is answered `500`.
//!
//! Several layer instances, in one process or many, that share one store
//! behave as one layer, because the store's claim is atomic.
//!
//! # Requirements on the inner service
//!
//! The request body is buffered (default limit 2 MiB) and the inner service
//! receives `Request<Full<Bytes>>`. The service must be `Clone + Send +
//! 'static`, because the handler may move to a spawned task, and its
//! response body must be `Unpin`, as hyper's, axum's and `Full` bodies are.

mod admit;
mod body;
mod execute;
mod fingerprint;
mod future;
mod key;
mod layer;
mod lease;
pub(crate) mod principal;
mod purge;
mod storable;

use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use http_body_util::Full;
use tower::Service;

use self::admit::{Admission, Intake, admit, intake};
use self::execute::{LayerResponse, Run, run_and_store};
use self::layer::Config;
use crate::BoxError;
use crate::body::ResponseBody;

pub use self::body::PrefixedBody;
pub use self::future::ResponseFuture;
pub use self::key::{IDEMPOTENCY_KEY, MAX_KEY_LEN};
pub use self::layer::{
    DEFAULT_LEASE, DEFAULT_REQUEST_BODY_LIMIT, DEFAULT_RESPONSE_BODY_LIMIT, DEFAULT_RETENTION,
    IdempotencyLayer,
};
pub use self::purge::spawn_purge_task;
pub use self::storable::{IDEMPOTENT_REPLAYED, TOO_LARGE_TO_REPLAY};

pub(crate) use self::fingerprint::fingerprint;
pub(crate) use self::key::key_from_headers;
pub(crate) use self::principal::{insert_principal, principal};
pub(crate) use self::storable::owned_value;

/// Deduplicates requests by their `Idempotency-Key`.
///
/// Built by [`IdempotencyLayer`].
#[derive(Debug)]
pub struct Idempotency<S> {
    inner: S,
    config: Arc<Config>,
}

impl<S: Clone> Clone for Idempotency<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            config: self.config.clone(),
        }
    }
}

impl<S> Idempotency<S> {
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

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Idempotency<S>
where
    S: Service<Request<Full<Bytes>>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Body + Send + 'static,
    ReqBody::Data: Send,
    ReqBody::Error: Into<BoxError>,
    ResBody: Body<Data = Bytes> + Send + Unpin + 'static,
    ResBody::Error: Into<BoxError>,
{
    type Response = LayerResponse<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<ResBody, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        // The service that `poll_ready` made ready goes with this request;
        // a fresh clone stays behind for the next `poll_ready`.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let config = self.config.clone();

        let detach = may_claim(&request);
        ResponseFuture::new(Box::pin(handle(config, inner, request)), detach)
    }
}

/// Returns `true` for a request that may claim a key, whose handling must
/// therefore finish even if its future is dropped.
fn may_claim<B>(request: &Request<B>) -> bool {
    !admit::is_safe(request.method()) && request.headers().contains_key(IDEMPOTENCY_KEY)
}

async fn handle<S, ReqBody, ResBody>(
    config: Arc<Config>,
    mut inner: S,
    request: Request<ReqBody>,
) -> Result<LayerResponse<ResBody>, S::Error>
where
    S: Service<Request<Full<Bytes>>, Response = Response<ResBody>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Body,
    ReqBody::Error: Into<BoxError>,
    ResBody: Body<Data = Bytes> + Send + Unpin + 'static,
    ResBody::Error: Into<BoxError>,
{
    let keyed = match intake(&config, request).await {
        Intake::Keyed(keyed) => keyed,
        Intake::Reject(response) => return Ok(response),
        Intake::Pass(request) => {
            let result = inner.call(request.map(Full::new)).await;
            let passthrough = |body| ResponseBody::inner(PrefixedBody::passthrough(body));
            return result.map(|response| response.map(passthrough));
        }
    };

    let token = match admit(&config, &keyed.key, keyed.fingerprint).await {
        Admission::Run(token) => token,
        Admission::Respond(response) => return Ok(response),
    };

    let run = Run {
        config,
        key: keyed.key,
        token,
    };
    run_and_store(run, inner, keyed.request.map(Full::new)).await
}
