//! The steps before the handler runs: key parsing, body buffering and the
//! claim that decides between running, replaying and rejecting.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderValue, RETRY_AFTER};
use http::{Method, Request, Response, StatusCode};
use http_body::Body;
use tokio::time::Instant;

use super::fingerprint::fingerprint;
use super::key::key_from_headers;
use super::layer::Config;
use super::storable::replay;
use crate::BoxError;
use crate::body::{CollectError, ResponseBody, collect_limited, problem};
use crate::store::{ClaimOutcome, FencingToken, Fingerprint, IdempotencyKey};

/// How often a waiting request looks at the record of a running one.
const WAIT_POLL: Duration = Duration::from_millis(50);

/// The claim's decision for a request.
pub(crate) enum Admission<B> {
    /// This request owns the claim and runs the handler.
    Run(FencingToken),
    /// The layer responds without running the handler.
    Respond(Response<ResponseBody<B>>),
}

/// A request that carries a key, with its body buffered.
pub(crate) struct Keyed {
    pub(crate) request: Request<Bytes>,
    pub(crate) key: IdempotencyKey,
    pub(crate) fingerprint: Fingerprint,
}

/// The decision on an incoming request before any claim.
pub(crate) enum Intake<B> {
    /// The request is not deduplicated; it goes on with its body buffered.
    Pass(Request<Bytes>),
    /// The request carries a valid key.
    Keyed(Keyed),
    /// The request is rejected.
    Reject(Response<ResponseBody<B>>),
}

/// Returns `true` for methods that are never deduplicated, because they
/// change nothing on the server.
pub(crate) fn is_safe(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    )
}

/// Parses the key and buffers the body, up to the request body limit.
pub(crate) async fn intake<ReqBody, B>(config: &Config, request: Request<ReqBody>) -> Intake<B>
where
    ReqBody: Body,
    ReqBody::Error: Into<BoxError>,
{
    let (parts, body) = request.into_parts();
    let key = match key_from_headers(&parts.headers) {
        _ if is_safe(&parts.method) => None,
        Ok(key) => key,
        Err(error) => {
            return Intake::Reject(problem(StatusCode::BAD_REQUEST, Some(&error.to_string())));
        }
    };
    if key.is_none() && config.key_required && !is_safe(&parts.method) {
        let detail = "missing Idempotency-Key header: this route requires one";
        return Intake::Reject(problem(StatusCode::BAD_REQUEST, Some(detail)));
    }

    let body = match collect_limited(body, config.request_body_limit).await {
        Ok(body) => body,
        Err(error @ CollectError::TooLarge { .. }) => {
            return Intake::Reject(problem(
                StatusCode::PAYLOAD_TOO_LARGE,
                Some(&error.to_string()),
            ));
        }
        Err(CollectError::Read(_)) => {
            let detail = "failed to read the request body";
            return Intake::Reject(problem(StatusCode::BAD_REQUEST, Some(detail)));
        }
    };

    let Some(key) = key else {
        return Intake::Pass(Request::from_parts(parts, body));
    };
    let fingerprint = fingerprint(&parts, &body);
    let key = IdempotencyKey {
        principal: super::principal::principal(&parts.extensions),
        method: parts.method.as_str().to_owned(),
        path: parts.uri.path().to_owned(),
        key,
    };
    Intake::Keyed(Keyed {
        request: Request::from_parts(parts, body),
        key,
        fingerprint,
    })
}

/// Claims the key, or builds the response when a record exists.
///
/// In wait mode, a request whose key is held by a running request of the
/// same fingerprint claims again every 50 ms until the wait ends. It then
/// replays the stored response, or runs the handler itself if the first
/// request released its claim.
pub(crate) async fn admit<B>(
    config: &Arc<Config>,
    key: &IdempotencyKey,
    fingerprint: Fingerprint,
) -> Admission<B> {
    let deadline = config.wait.map(|wait| Instant::now() + wait);
    loop {
        let outcome = match config.store.claim(key, fingerprint, config.lease).await {
            Ok(outcome) => outcome,
            Err(error) => {
                tracing::warn!(key = %key.key, error = %error, "idempotency store failed to claim a key");
                let detail = "the idempotency store is unavailable, so the request was not run";
                return Admission::Respond(problem(StatusCode::SERVICE_UNAVAILABLE, Some(detail)));
            }
        };

        match outcome {
            ClaimOutcome::Claimed(token) => return Admission::Run(token),
            ClaimOutcome::Completed(record) if record.fingerprint == fingerprint => {
                tracing::debug!(key = %key.key, path = %key.path, "replaying stored response");
                return Admission::Respond(replay(record.response));
            }
            ClaimOutcome::Completed(_) => return Admission::Respond(mismatch()),
            ClaimOutcome::InProgress { fingerprint: held } if held != fingerprint => {
                return Admission::Respond(mismatch());
            }
            ClaimOutcome::InProgress { .. } => match deadline {
                Some(deadline) if Instant::now() < deadline => {
                    let remaining = deadline.saturating_duration_since(Instant::now());
                    tokio::time::sleep(remaining.min(WAIT_POLL)).await;
                }
                _ => return Admission::Respond(conflict()),
            },
        }
    }
}

fn mismatch<B>() -> Response<ResponseBody<B>> {
    let detail = "this Idempotency-Key was already used with a different request";
    problem(StatusCode::UNPROCESSABLE_ENTITY, Some(detail))
}

fn conflict<B>() -> Response<ResponseBody<B>> {
    let detail = "a request with this Idempotency-Key is still running; retry later";
    let mut response = problem(StatusCode::CONFLICT, Some(detail));
    response
        .headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from_static("1"));
    response
}
