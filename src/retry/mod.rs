//! Success specifications, backoff and inline retries for outbound HTTP.
//!
//! This module contains the rules every delivery path of the crate shares:
//!
//! - [`SuccessSpec`] decides what counts as success and classifies each
//!   failure as [`Classification::Transient`] (connection errors,
//!   timeouts, 5xx, 408, 409, 425, 429) or [`Classification::Permanent`]
//!   (other 4xx, invalid requests, unsupported URL schemes).
//!   [`StandardSuccess`] is the default.
//! - [`Backoff`] computes capped exponential delays with full jitter, and
//!   [`retry_after`] reads the receiver's `Retry-After`.
//! - [`RetryLayer`] retries calls that can wait for their answer, within a
//!   total deadline, a per-attempt timeout and a shared [`RetryBudget`].
//!
//! # Inline retries
//!
//! [`Retry`] retries only requests that are safe to repeat: idempotent
//! methods (`GET`, `HEAD`, `OPTIONS`, `TRACE`, `PUT`, `DELETE`) and
//! requests that carry an `Idempotency-Key`. Other requests are sent once.
//! The body is buffered up to a limit so that every attempt sends the same
//! bytes; a longer body is an error and nothing is sent. The layer keeps
//! the caller's headers as they are: to sign each attempt afresh, put the
//! signing layer below it, next to the client.
//!
//! After the last attempt the caller gets the last response, even a `503`,
//! or a [`RetryError`] when no response arrived.
//!
//! A call that must not be lost when the process stops belongs in the
//! outbox, not here: inline retries live only as long as the call.
//!
//! ```
//! use std::convert::Infallible;
//! use std::sync::Arc;
//! use std::sync::atomic::{AtomicU32, Ordering};
//! use std::time::Duration;
//!
//! use bytes::Bytes;
//! use http::{Request, Response, StatusCode};
//! use http_body_util::Full;
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//! use tower_courier::retry::{Backoff, RetryLayer};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let calls = Arc::new(AtomicU32::new(0));
//! let counter = calls.clone();
//! let flaky = service_fn(move |_request: Request<Full<Bytes>>| {
//!     let call = counter.fetch_add(1, Ordering::SeqCst);
//!     let status = if call == 0 { StatusCode::SERVICE_UNAVAILABLE } else { StatusCode::OK };
//!     let mut response = Response::new(Full::new(Bytes::new()));
//!     *response.status_mut() = status;
//!     async move { Ok::<_, Infallible>(response) }
//! });
//!
//! let client = ServiceBuilder::new()
//!     .layer(RetryLayer::new().backoff(Backoff::inline().initial_delay(Duration::from_millis(1))))
//!     .service(flaky);
//! let request = Request::get("http://127.0.0.1/health").body(Full::new(Bytes::new())).unwrap();
//! let response = client.oneshot(request).await.unwrap();
//!
//! assert_eq!(response.status(), StatusCode::OK);
//! assert_eq!(calls.load(Ordering::SeqCst), 2);
//! # }
//! ```

mod attempts;
mod backoff;
mod budget;
mod classify;
mod error;
mod future;
mod layer;
mod retry_after;

use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use http_body_util::Full;
use tower::Service;

pub use backoff::Backoff;
pub use budget::RetryBudget;
pub use classify::{
    Classification, SharedSuccessSpec, StandardSuccess, SuccessFn, SuccessSpec, check_uri,
    classify_error, classify_status, success_fn,
};
pub use error::{AttemptTimedOut, InvalidRequest, RetryError, RetryErrorKind};
pub use future::ResponseFuture;
pub use layer::RetryLayer;
pub use retry_after::retry_after;

pub(crate) use attempts::rebuild;
pub(crate) use error::error_chain;

use crate::BoxError;
use layer::RetryConfig;

/// Retries an HTTP client service inline: see the [module docs](self).
#[derive(Debug, Clone)]
pub struct Retry<S> {
    inner: S,
    config: Arc<RetryConfig>,
}

impl<S> Retry<S> {
    /// Wraps `inner` with the defaults of [`RetryLayer::new`].
    pub fn new(inner: S) -> Self {
        tower::Layer::layer(&RetryLayer::new(), inner)
    }

    /// Returns a [`RetryLayer`] with default settings.
    pub fn layer() -> RetryLayer {
        RetryLayer::new()
    }

    pub(crate) fn from_config(inner: S, config: Arc<RetryConfig>) -> Self {
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

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Retry<S>
where
    S: Service<Request<Full<Bytes>>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Into<BoxError>,
    ReqBody: Body + Send + 'static,
    ReqBody::Data: Send,
    ReqBody::Error: Into<BoxError>,
    ResBody: Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = RetryError;
    type Future = ResponseFuture<ResBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner
            .poll_ready(cx)
            .map_err(|error| RetryError::new(RetryErrorKind::Client, 0, Some(error.into())))
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        // The service that was polled ready goes into the future for the
        // first attempt, and a fresh clone stays here for the next call.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let config = self.config.clone();
        ResponseFuture::new(Box::pin(attempts::run(config, inner, request)))
    }
}
