use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use super::{Delivery, OutboxError};

type BoxedCall<B> = Pin<Box<dyn Future<Output = Result<Delivery<B>, OutboxError>> + Send>>;

/// The response future of [`Outbox`](super::Outbox).
///
/// The steps (buffer, try inline, store) are one `async` block, boxed
/// here: a hand-written state machine over a store call and a client call
/// would add length and no speed that matters next to either.
pub struct ResponseFuture<B> {
    inner: BoxedCall<B>,
}

impl<B> ResponseFuture<B> {
    pub(crate) fn new(inner: BoxedCall<B>) -> Self {
        Self { inner }
    }
}

impl<B> Future for ResponseFuture<B> {
    type Output = Result<Delivery<B>, OutboxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.inner.as_mut().poll(cx)
    }
}

impl<B> fmt::Debug for ResponseFuture<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
