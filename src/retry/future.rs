use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::Response;

use super::RetryError;

type BoxedCall<B> = Pin<Box<dyn Future<Output = Result<Response<B>, RetryError>> + Send>>;

/// The response future of [`Retry`](super::Retry).
///
/// The retry loop is written as one `async` block and boxed here: it holds
/// the buffered body, the inner service and sleeps between attempts, and a
/// hand-written state machine would add little but length.
pub struct ResponseFuture<B> {
    inner: BoxedCall<B>,
}

impl<B> ResponseFuture<B> {
    pub(crate) fn new(inner: BoxedCall<B>) -> Self {
        Self { inner }
    }
}

impl<B> Future for ResponseFuture<B> {
    type Output = Result<Response<B>, RetryError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.inner.as_mut().poll(cx)
    }
}

impl<B> fmt::Debug for ResponseFuture<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
