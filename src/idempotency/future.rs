use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use futures_util::future::BoxFuture;

use super::execute::LayerResponse;

/// The output of the steps before the handler: a response, or the run of
/// the handler under a claim.
pub(crate) enum Step<B, E> {
    Done(Result<LayerResponse<B>, E>),
    Run(BoxFuture<'static, Result<LayerResponse<B>, E>>),
}

/// The response future of [`Idempotency`](super::Idempotency).
///
/// Dropping it does not cancel a handler that already started: the rest
/// of the run moves to a task of its own, which stores the response.
pub struct ResponseFuture<B, E>
where
    B: Send + 'static,
    E: Send + 'static,
{
    state: State<B, E>,
}

enum State<B, E> {
    /// Parsing the key, buffering the body and claiming.
    Admitting(BoxFuture<'static, Step<B, E>>),
    /// Running the handler under the claim.
    Running(BoxFuture<'static, Result<LayerResponse<B>, E>>),
    Finished,
}

impl<B, E> ResponseFuture<B, E>
where
    B: Send + 'static,
    E: Send + 'static,
{
    pub(crate) fn new(admit: BoxFuture<'static, Step<B, E>>) -> Self {
        Self {
            state: State::Admitting(admit),
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
        loop {
            let output = match &mut self.state {
                State::Admitting(admit) => match ready!(admit.as_mut().poll(cx)) {
                    Step::Done(output) => output,
                    Step::Run(run) => {
                        self.state = State::Running(run);
                        continue;
                    }
                },
                State::Running(run) => ready!(run.as_mut().poll(cx)),
                State::Finished => panic!("ResponseFuture polled after completion"),
            };
            self.state = State::Finished;
            return Poll::Ready(output);
        }
    }
}

impl<B, E> Drop for ResponseFuture<B, E>
where
    B: Send + 'static,
    E: Send + 'static,
{
    fn drop(&mut self) {
        // Running the handler inline saves a task per request. A client
        // that goes away drops this future, so the unfinished run moves to
        // a task and still stores its response.
        // NOTE: a future dropped while its claim call is in flight may
        // leave a claim that no request runs, and retries get 409 until its
        // lease ends.
        let State::Running(run) = std::mem::replace(&mut self.state, State::Finished) else {
            return;
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    let _ = run.await;
                });
            }
            Err(_) => tracing::warn!(
                "idempotent handler dropped outside a tokio runtime; \
                 its claim ends with its lease"
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
        let state = match self.state {
            State::Admitting(_) => "admitting",
            State::Running(_) => "running",
            State::Finished => "finished",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish()
    }
}
