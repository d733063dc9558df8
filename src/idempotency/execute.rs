//! Running the handler for a claimed key in its own task, and storing its
//! response.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::FutureExt;
use http::{Request, Response, StatusCode};
use http_body::Body;
use http_body_util::Full;
use tower::Service;

use super::body::{Bounded, PrefixedBody, read_bounded};
use super::layer::Config;
use super::lease::LeaseKeeper;
use super::storable::{is_storable, storable_headers, too_large_replacement};
use crate::BoxError;
use crate::body::{ResponseBody, problem};
use crate::store::{FencingToken, IdempotencyKey, StoredResponse};

/// The response type of the idempotency layer.
pub(crate) type LayerResponse<B> = Response<ResponseBody<PrefixedBody<B>>>;

/// One claimed run: the key, the claim's token and the layer's settings.
pub(crate) struct Run {
    pub(crate) config: Arc<Config>,
    pub(crate) key: IdempotencyKey,
    pub(crate) token: FencingToken,
}

/// Runs the handler in a spawned task and waits for it.
///
/// The task stores a storable response before it returns, so dropping the
/// returned future (a client that hangs up) neither cancels the handler
/// nor loses its response.
pub(crate) async fn run_detached<S, ResBody>(
    run: Run,
    inner: S,
    request: Request<Full<Bytes>>,
) -> Result<LayerResponse<ResBody>, S::Error>
where
    S: Service<Request<Full<Bytes>>, Response = Response<ResBody>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ResBody: Body<Data = Bytes> + Send + Unpin + 'static,
    ResBody::Error: Into<BoxError>,
{
    match tokio::spawn(run_and_store(run, inner, request)).await {
        Ok(result) => result,
        Err(error) => {
            // `run_and_store` catches the handler's panics, so only a
            // runtime shutting down gets here.
            tracing::error!(error = %error, "idempotent handler task ended early");
            Ok(problem(StatusCode::INTERNAL_SERVER_ERROR, None))
        }
    }
}

async fn run_and_store<S, ResBody>(
    run: Run,
    mut inner: S,
    request: Request<Full<Bytes>>,
) -> Result<LayerResponse<ResBody>, S::Error>
where
    S: Service<Request<Full<Bytes>>, Response = Response<ResBody>>,
    ResBody: Body<Data = Bytes> + Unpin,
    ResBody::Error: Into<BoxError>,
{
    let _keeper = LeaseKeeper::start(
        run.config.store.clone(),
        run.key.clone(),
        run.token,
        run.config.lease,
    );

    let call = AssertUnwindSafe(async move { inner.call(request).await });
    let response = match call.catch_unwind().await {
        Ok(Ok(response)) => response,
        Ok(Err(error)) => {
            release(&run).await;
            return Err(error);
        }
        Err(_panic) => {
            tracing::error!(key = %run.key.key, path = %run.key.path, "idempotent handler panicked");
            release(&run).await;
            return Ok(problem(StatusCode::INTERNAL_SERVER_ERROR, None));
        }
    };

    if !is_storable(response.status()) {
        release(&run).await;
        return Ok(response.map(|body| ResponseBody::inner(PrefixedBody::passthrough(body))));
    }
    Ok(store_response(&run, response).await)
}

/// Reads the body up to the limit, stores the response, and only then
/// returns it.
async fn store_response<ResBody>(run: &Run, response: Response<ResBody>) -> LayerResponse<ResBody>
where
    ResBody: Body<Data = Bytes> + Unpin,
    ResBody::Error: Into<BoxError>,
{
    let (parts, body) = response.into_parts();
    let limit = run.config.response_body_limit;

    match read_bounded(body, limit).await {
        Ok(Bounded::Whole(bytes)) => {
            let stored = StoredResponse {
                status: parts.status,
                headers: storable_headers(&parts.headers),
                body: bytes.clone(),
            };
            complete(run, &stored).await;
            Response::from_parts(parts, ResponseBody::full(bytes))
        }
        Ok(Bounded::TooLarge { prefix, rest }) => {
            tracing::warn!(
                key = %run.key.key,
                path = %run.key.path,
                limit,
                "response body is too large to store; retries will get 410 Gone"
            );
            complete(run, &too_large_replacement(parts.status, limit).await).await;
            Response::from_parts(parts, ResponseBody::inner(PrefixedBody::new(prefix, rest)))
        }
        Err(error) => {
            tracing::warn!(key = %run.key.key, error = %error, "failed to read the handler's response body");
            release(run).await;
            problem(StatusCode::INTERNAL_SERVER_ERROR, None)
        }
    }
}

async fn complete(run: &Run, stored: &StoredResponse) {
    let config = &run.config;
    let result = config
        .store
        .complete(&run.key, run.token, stored, config.retention)
        .await;

    match result {
        Ok(()) => {}
        // The caller still gets the response: the handler ran, and hiding
        // its result would only make the client retry.
        Err(error) if error.is_lease_lost() => tracing::warn!(
            key = %run.key.key,
            path = %run.key.path,
            "idempotency claim was taken over before the response was stored"
        ),
        Err(error) => tracing::error!(
            key = %run.key.key,
            error = %error,
            "failed to store the response; a retry after the lease ends runs the handler again"
        ),
    }
}

async fn release(run: &Run) {
    match run.config.store.release(&run.key, run.token).await {
        Ok(()) => {}
        Err(error) if error.is_lease_lost() => {
            tracing::debug!(key = %run.key.key, "idempotency claim was already taken over")
        }
        Err(error) => tracing::warn!(
            key = %run.key.key,
            error = %error,
            "failed to release an idempotency claim; it ends with its lease"
        ),
    }
}
