use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::{Request, Response};
use tower::{Layer, Service};

use super::{Fault, FaultError, Faults};
use crate::BoxError;
use crate::body::{ResponseBody, problem};

/// Applies [`FaultService`] to a service.
#[derive(Debug, Clone)]
pub struct FaultLayer {
    faults: Faults,
}

impl FaultLayer {
    /// Creates a layer that injects the faults `faults` decides.
    pub fn new(faults: Faults) -> Self {
        Self { faults }
    }
}

impl<S> Layer<S> for FaultLayer {
    type Service = FaultService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        FaultService::new(inner, self.faults.clone())
    }
}

/// Injects failures into the requests that its [`Faults`] picks.
#[derive(Debug, Clone)]
pub struct FaultService<S> {
    inner: S,
    faults: Faults,
}

impl<S> FaultService<S> {
    /// Creates a service that injects the faults `faults` decides.
    pub fn new(inner: S, faults: Faults) -> Self {
        Self { inner, faults }
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

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for FaultService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
    ReqBody: Send + 'static,
    ResBody: Send + 'static,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = BoxError;
    type Future = ResponseFuture<ResBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let (parts, body) = request.into_parts();
        let fault = self.faults.decide(&parts);
        let request = Request::from_parts(parts, body);

        // The clone that was driven to readiness serves this request; the
        // fresh clone stays behind for the next `poll_ready`.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);

        ResponseFuture {
            future: Box::pin(apply(fault, inner, request)),
        }
    }
}

async fn apply<S, ReqBody, ResBody>(
    fault: Option<Fault>,
    mut inner: S,
    request: Request<ReqBody>,
) -> Result<Response<ResponseBody<ResBody>>, BoxError>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    S::Error: Into<BoxError>,
{
    match fault {
        None => inner_response(&mut inner, request).await,
        Some(Fault::Refuse) => Err(FaultError::new(Fault::Refuse).into()),
        Some(Fault::FailBefore(status)) => Ok(problem(status, Some("injected fault"))),
        Some(Fault::Delay(delay)) => {
            tokio::time::sleep(delay).await;
            inner_response(&mut inner, request).await
        }
        Some(Fault::Reset) => {
            inner_response(&mut inner, request).await?;
            Err(FaultError::new(Fault::Reset).into())
        }
        Some(Fault::FailAfter(status)) => {
            inner_response(&mut inner, request).await?;
            Ok(problem(status, Some("injected fault")))
        }
    }
}

async fn inner_response<S, ReqBody, ResBody>(
    inner: &mut S,
    request: Request<ReqBody>,
) -> Result<Response<ResponseBody<ResBody>>, BoxError>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    S::Error: Into<BoxError>,
{
    let response = inner.call(request).await.map_err(Into::into)?;
    Ok(response.map(ResponseBody::inner))
}

type BoxResponseFuture<B> =
    Pin<Box<dyn Future<Output = Result<Response<ResponseBody<B>>, BoxError>> + Send>>;

/// The response future of [`FaultService`].
pub struct ResponseFuture<B> {
    future: BoxResponseFuture<B>,
}

impl<B> Future for ResponseFuture<B> {
    type Output = Result<Response<ResponseBody<B>>, BoxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.future.as_mut().poll(cx)
    }
}

impl<B> fmt::Debug for ResponseFuture<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use bytes::Bytes;
    use http::StatusCode;
    use http_body_util::Full;
    use tower::{ServiceExt, service_fn};

    use super::*;

    fn counting_handler(
        runs: Arc<AtomicUsize>,
    ) -> impl Service<
        Request<Full<Bytes>>,
        Response = Response<Full<Bytes>>,
        Error = Infallible,
        Future = impl Send,
    > + Clone
    + Send
    + 'static {
        service_fn(move |_request: Request<Full<Bytes>>| {
            let runs = runs.clone();
            async move {
                runs.fetch_add(1, Ordering::SeqCst);
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
            }
        })
    }

    async fn call_once(fault: Fault) -> (Result<StatusCode, String>, usize) {
        let runs = Arc::new(AtomicUsize::new(0));
        let service =
            FaultLayer::new(Faults::sequence([Some(fault)])).layer(counting_handler(runs.clone()));

        let result = service
            .oneshot(Request::new(Full::default()))
            .await
            .map(|response| response.status())
            .map_err(|error| error.to_string());
        (result, runs.load(Ordering::SeqCst))
    }

    #[tokio::test]
    async fn fail_before_skips_handler() {
        let (result, runs) = call_once(Fault::fail_before(StatusCode::BAD_GATEWAY)).await;

        assert_eq!(result, Ok(StatusCode::BAD_GATEWAY));
        assert_eq!(runs, 0);
    }

    #[tokio::test]
    async fn fail_after_runs_handler_and_loses_reply() {
        let (result, runs) = call_once(Fault::fail_after(StatusCode::INTERNAL_SERVER_ERROR)).await;

        assert_eq!(result, Ok(StatusCode::INTERNAL_SERVER_ERROR));
        assert_eq!(runs, 1);
    }

    #[tokio::test]
    async fn refuse_is_an_error_without_handler() {
        let (result, runs) = call_once(Fault::Refuse).await;

        assert!(result.unwrap_err().contains("connection refused"));
        assert_eq!(runs, 0);
    }

    #[tokio::test]
    async fn reset_is_an_error_after_handler() {
        let (result, runs) = call_once(Fault::Reset).await;

        assert!(result.unwrap_err().contains("reset"));
        assert_eq!(runs, 1);
    }

    #[tokio::test]
    async fn delay_waits_before_handler() {
        let delay = std::time::Duration::from_millis(200);
        let started = std::time::Instant::now();

        let (result, runs) = call_once(Fault::Delay(delay)).await;

        assert_eq!(result, Ok(StatusCode::OK));
        assert_eq!(runs, 1);
        assert!(started.elapsed() >= delay);
    }
}
