//! Running the handler for a claimed key and storing its response.

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
use super::lease::keep_renewed;
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

/// The handler's result, before the claim is completed or released.
enum Produced<B, E> {
    /// A storable response and the record to keep for it.
    Store {
        response: LayerResponse<B>,
        stored: StoredResponse,
    },
    /// A result that is not stored, so the claim is released.
    Release(Result<LayerResponse<B>, E>),
}

/// Runs the handler under the claim, keeps the claim renewed, and stores a
/// storable response (or releases the claim) before returning.
///
/// The future finishes the whole run wherever it is polled: the layer's
/// response future moves it to a task of its own if the client goes away.
pub(crate) async fn run_and_store<S, ResBody>(
    run: Run,
    inner: S,
    request: Request<Full<Bytes>>,
) -> Result<LayerResponse<ResBody>, S::Error>
where
    S: Service<Request<Full<Bytes>>, Response = Response<ResBody>>,
    ResBody: Body<Data = Bytes> + Unpin,
    ResBody::Error: Into<BoxError>,
{
    let config = run.config.clone();
    // Reading the response body can panic too, after the handler's own
    // guard, and the claim must still be released.
    let guarded = AssertUnwindSafe(produce(&run, inner, request)).catch_unwind();
    let produced = keep_renewed(
        config.store.as_ref(),
        &run.key,
        run.token,
        config.lease,
        guarded,
    )
    .await
    .unwrap_or_else(|_panic| {
        tracing::error!(key = %run.key.key, path = %run.key.path, "idempotent response body panicked");
        Produced::Release(Ok(problem(StatusCode::INTERNAL_SERVER_ERROR, None)))
    });

    match produced {
        Produced::Store { response, stored } => {
            complete(&run, &stored).await;
            Ok(response)
        }
        Produced::Release(result) => {
            release(&run).await;
            result
        }
    }
}

async fn produce<S, ResBody>(
    run: &Run,
    mut inner: S,
    request: Request<Full<Bytes>>,
) -> Produced<ResBody, S::Error>
where
    S: Service<Request<Full<Bytes>>, Response = Response<ResBody>>,
    ResBody: Body<Data = Bytes> + Unpin,
    ResBody::Error: Into<BoxError>,
{
    let call = AssertUnwindSafe(async move { inner.call(request).await });
    let response = match call.catch_unwind().await {
        Ok(Ok(response)) => response,
        Ok(Err(error)) => return Produced::Release(Err(error)),
        Err(_panic) => {
            tracing::error!(key = %run.key.key, path = %run.key.path, "idempotent handler panicked");
            let response = problem(StatusCode::INTERNAL_SERVER_ERROR, None);
            return Produced::Release(Ok(response));
        }
    };

    if !is_storable(response.status()) {
        let response = response.map(|body| ResponseBody::inner(PrefixedBody::passthrough(body)));
        return Produced::Release(Ok(response));
    }
    read_for_storage(run, response).await
}

/// Reads the body up to the limit and builds the record to store.
async fn read_for_storage<ResBody, E>(
    run: &Run,
    response: Response<ResBody>,
) -> Produced<ResBody, E>
where
    ResBody: Body<Data = Bytes> + Unpin,
    ResBody::Error: Into<BoxError>,
{
    let (parts, body) = response.into_parts();
    let limit = run.config.response_body_limit;

    match read_bounded(body, limit).await {
        Ok(Bounded::Whole(bytes)) => {
            // A copy, because the body can be a slice of a larger buffer
            // (such as the request's read buffer) that the record would
            // otherwise keep alive for its whole retention.
            let stored = StoredResponse {
                status: parts.status,
                headers: storable_headers(&parts.headers),
                body: Bytes::copy_from_slice(&bytes),
            };
            let response = Response::from_parts(parts, ResponseBody::full(bytes));
            Produced::Store { response, stored }
        }
        Ok(Bounded::TooLarge { prefix, rest }) => {
            tracing::warn!(
                key = %run.key.key,
                path = %run.key.path,
                limit,
                "response body is too large to store; retries will get 410 Gone"
            );
            let stored = too_large_replacement(parts.status, limit).await;
            let body = ResponseBody::inner(PrefixedBody::new(prefix, rest));
            let response = Response::from_parts(parts, body);
            Produced::Store { response, stored }
        }
        Err(error) => {
            tracing::warn!(key = %run.key.key, error = %error, "failed to read the handler's response body");
            Produced::Release(Ok(problem(StatusCode::INTERNAL_SERVER_ERROR, None)))
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
