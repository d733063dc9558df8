//! One attempt: send the request, read the response, classify the result.

use std::panic::AssertUnwindSafe;
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use futures_util::FutureExt;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::{BodyExt, Full};
use tower::util::BoxCloneService;
use tower::{Service, ServiceExt};

use crate::BoxError;
use crate::retry::{AttemptTimedOut, Classification, SuccessSpec, error_chain, retry_after};
use crate::store::Outcome;

/// A response head with its body cut to the outcome limit.
#[derive(Debug)]
pub(crate) struct AttemptResponse {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

/// The worker's view of any client stack: buffered request in, cut
/// response out, errors boxed.
pub(crate) type AttemptService = BoxCloneService<Request<Full<Bytes>>, AttemptResponse, BoxError>;

/// Erases the type of a client stack, reading at most `outcome_limit`
/// bytes of each response body.
pub(crate) fn erase<S, B>(service: S, outcome_limit: usize) -> AttemptService
where
    S: Service<Request<Full<Bytes>>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body<Data = Bytes> + Send + 'static,
{
    let service = service
        .map_err(Into::into)
        .and_then(move |response: Response<B>| read_response(response, outcome_limit));
    BoxCloneService::new(service)
}

async fn read_response<B>(response: Response<B>, limit: usize) -> Result<AttemptResponse, BoxError>
where
    B: Body<Data = Bytes>,
{
    let (parts, body) = response.into_parts();
    Ok(AttemptResponse {
        status: parts.status,
        headers: parts.headers,
        body: read_prefix(body, limit).await,
    })
}

/// Reads the first `limit` bytes of `body` and drops the rest unread. A
/// body that fails midway keeps what arrived: the status already shows how
/// the attempt went.
async fn read_prefix<B>(body: B, limit: usize) -> Bytes
where
    B: Body<Data = Bytes>,
{
    let mut body = std::pin::pin!(body);
    let mut kept = BytesMut::new();
    while kept.len() < limit {
        let Some(Ok(frame)) = body.frame().await else {
            break;
        };
        if let Ok(data) = frame.into_data() {
            let room = limit - kept.len();
            kept.extend_from_slice(&data[..data.len().min(room)]);
        }
    }
    kept.freeze()
}

/// The result of an attempt, as the worker records it.
#[derive(Debug)]
pub(crate) enum Verdict {
    Success(Outcome),
    Transient {
        error: String,
        retry_after: Option<Duration>,
        outcome: Option<Outcome>,
    },
    Permanent {
        error: String,
        outcome: Option<Outcome>,
    },
}

/// Sends `request` once within `timeout` and classifies the result. A
/// panic in the service counts as a transient failure.
pub(crate) async fn send(
    service: AttemptService,
    request: Request<Full<Bytes>>,
    timeout: Duration,
    spec: &dyn SuccessSpec,
    now: impl Fn() -> SystemTime,
) -> Verdict {
    let call = AssertUnwindSafe(service.oneshot(request)).catch_unwind();
    match tokio::time::timeout(timeout, call).await {
        Ok(Ok(Ok(response))) => classify_response(response, spec, now()),
        Ok(Ok(Err(error))) => classify_error(error.as_ref(), spec),
        Ok(Err(_panic)) => Verdict::Transient {
            error: "client service panicked".to_owned(),
            retry_after: None,
            outcome: None,
        },
        Err(_) => classify_error(&AttemptTimedOut::new(timeout), spec),
    }
}

fn classify_response(
    response: AttemptResponse,
    spec: &dyn SuccessSpec,
    now: SystemTime,
) -> Verdict {
    let class = spec.classify_response(response.status, &response.headers);
    let outcome = Outcome {
        status: response.status,
        body: response.body,
    };
    let error = format!("receiver responded {}", response.status);

    match class {
        Classification::Success => Verdict::Success(outcome),
        Classification::Transient => Verdict::Transient {
            error,
            retry_after: retry_after(&response.headers, now),
            outcome: Some(outcome),
        },
        Classification::Permanent => Verdict::Permanent {
            error,
            outcome: Some(outcome),
        },
    }
}

fn classify_error(error: &(dyn std::error::Error + 'static), spec: &dyn SuccessSpec) -> Verdict {
    let text = error_chain(error);
    match spec.classify_error(error) {
        Classification::Permanent => Verdict::Permanent {
            error: text,
            outcome: None,
        },
        // An error is never a success, whatever a custom spec returns.
        Classification::Success | Classification::Transient => Verdict::Transient {
            error: text,
            retry_after: None,
            outcome: None,
        },
    }
}
