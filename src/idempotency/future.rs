use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::future::BoxFuture;

use super::execute::LayerResponse;

/// The response future of [`Idempotency`](super::Idempotency).
///
/// Dropping it does not cancel a request that carries an
/// `Idempotency-Key` and was polled once: the rest of its work (reading
/// the body, claiming the key, running the handler and storing the
/// response) moves to a task of its own.
pub struct ResponseFuture<B, E>
where
    B: Send + 'static,
    E: Send + 'static,
{
    /// The whole handling of the request; `None` once it finished.
    work: Option<BoxFuture<'static, Result<LayerResponse<B>, E>>>,
    /// Whether a drop moves unfinished work to a task.
    detach: bool,
    /// Whether the work was polled, that is, taken up by the server.
    started: bool,
}

impl<B, E> ResponseFuture<B, E>
where
    B: Send + 'static,
    E: Send + 'static,
{
    pub(crate) fn new(work: BoxFuture<'static, Result<LayerResponse<B>, E>>, detach: bool) -> Self {
        Self {
            work: Some(work),
            detach,
            started: false,
        }
    }
}

impl<B, E> Future for ResponseFuture<B, E>
where
    B: Send + 'static,
    E: Send + 'static,
{
    type Output = Result<LayerResponse<B>, E>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.started = true;
        // The work is put back only when pending, so work that panicked is
        // dropped with the panic and never detached to be polled again.
        let mut work = self
            .work
            .take()
            .expect("ResponseFuture polled after completion");
        let output = work.as_mut().poll(cx);
        if output.is_pending() {
            self.work = Some(work);
        }
        output
    }
}

impl<B, E> Drop for ResponseFuture<B, E>
where
    B: Send + 'static,
    E: Send + 'static,
{
    fn drop(&mut self) {
        // Running inline saves a task per request. A client that goes away
        // drops this future, so unfinished keyed work moves to a task,
        // which settles any claim it took and stores the response.
        if !(self.detach && self.started) {
            return;
        }
        let Some(work) = self.work.take() else {
            return;
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    let _ = work.await;
                });
            }
            Err(_) => tracing::warn!(
                "idempotent request dropped outside a tokio runtime; \
                 a claim it took ends with its lease"
            ),
        }
    }
}

impl<B, E> fmt::Debug for ResponseFuture<B, E>
where
    B: Send + 'static,
    E: Send + 'static,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("finished", &self.work.is_none())
            .field("detach", &self.detach)
            .field("started", &self.started)
            .finish()
    }
}
