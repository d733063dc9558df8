use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::future::BoxFuture;

use super::execute::LayerResponse;

/// The response future of [`Idempotency`](super::Idempotency).
///
/// Dropping it does not cancel a handler that already started: the handler
/// runs in its own task and its response is stored.
pub struct ResponseFuture<B, E> {
    inner: BoxFuture<'static, Result<LayerResponse<B>, E>>,
}

impl<B, E> ResponseFuture<B, E> {
    pub(crate) fn new(inner: BoxFuture<'static, Result<LayerResponse<B>, E>>) -> Self {
        Self { inner }
    }
}

impl<B, E> Future for ResponseFuture<B, E> {
    type Output = Result<LayerResponse<B>, E>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.inner.as_mut().poll(cx)
    }
}

impl<B, E> fmt::Debug for ResponseFuture<B, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
