use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body::Body;
use http_body_util::Full;
use tower::{Service, ServiceExt};

use super::layer::RetryConfig;
use super::{AttemptTimedOut, Classification, RetryError, RetryErrorKind, check_uri, retry_after};
use crate::BoxError;
use crate::body::{CollectError, collect_limited};

/// Rebuilds a request from the parts of a buffered one, so that every
/// attempt sends the same method, URI, headers, extensions and body bytes.
pub(crate) fn rebuild(parts: &http::request::Parts, body: &Bytes) -> Request<Full<Bytes>> {
    let mut request = Request::new(Full::new(body.clone()));
    *request.method_mut() = parts.method.clone();
    *request.uri_mut() = parts.uri.clone();
    *request.version_mut() = parts.version;
    *request.headers_mut() = parts.headers.clone();
    *request.extensions_mut() = parts.extensions.clone();
    request
}

/// Returns `true` for the methods RFC 9110 section 9.2.2 defines as
/// idempotent.
pub(crate) fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// The result of one attempt.
enum Attempt<B> {
    Response(Response<B>),
    Error(RetryError),
}

/// Runs the attempts of one inline call.
pub(crate) async fn run<S, ReqBody, ResBody>(
    config: Arc<RetryConfig>,
    mut inner: S,
    request: Request<ReqBody>,
) -> Result<Response<ResBody>, RetryError>
where
    S: Service<Request<Full<Bytes>>, Response = Response<ResBody>>,
    S::Error: Into<BoxError>,
    ReqBody: Body,
    ReqBody::Error: Into<BoxError>,
{
    let started = Instant::now();
    let (parts, body) = buffer(&config, request).await?;
    let retryable = is_idempotent(&parts.method)
        || parts
            .headers
            .contains_key(crate::idempotency::IDEMPOTENCY_KEY);
    config.budget.deposit();

    let mut attempt: u32 = 0;
    loop {
        attempt = attempt.saturating_add(1);
        let remaining = config.deadline.saturating_sub(started.elapsed());
        let outcome = send(
            &config,
            &mut inner,
            rebuild(&parts, &body),
            attempt,
            remaining,
        )
        .await;

        let (class, wait_hint) = classify(&config, &outcome);
        if class != Classification::Transient {
            return finish(outcome);
        }

        let Some(delay) = next_delay(&config, attempt, wait_hint, started, retryable) else {
            return finish(outcome);
        };
        tracing::debug!(
            method = %parts.method,
            uri = %parts.uri,
            attempt,
            error = %describe(&outcome),
            delay_ms = delay.as_millis() as u64,
            "attempt failed, retrying request"
        );
        drop(outcome);
        tokio::time::sleep(delay).await;
    }
}

async fn buffer<ReqBody>(
    config: &RetryConfig,
    request: Request<ReqBody>,
) -> Result<(http::request::Parts, Bytes), RetryError>
where
    ReqBody: Body,
    ReqBody::Error: Into<BoxError>,
{
    if request.uri().scheme().is_some() {
        check_uri(request.uri()).map_err(|invalid| {
            RetryError::new(RetryErrorKind::InvalidRequest, 0, Some(invalid.into()))
        })?;
    }

    let (parts, body) = request.into_parts();
    match collect_limited(body, config.body_limit).await {
        Ok(bytes) => Ok((parts, bytes)),
        Err(error @ CollectError::TooLarge { .. }) => Err(RetryError::new(
            RetryErrorKind::BodyTooLarge,
            0,
            Some(error.into()),
        )),
        Err(error) => Err(RetryError::new(
            RetryErrorKind::BodyRead,
            0,
            Some(error.into()),
        )),
    }
}

async fn send<S, ResBody>(
    config: &RetryConfig,
    inner: &mut S,
    request: Request<Full<Bytes>>,
    attempt: u32,
    remaining: Duration,
) -> Attempt<ResBody>
where
    S: Service<Request<Full<Bytes>>, Response = Response<ResBody>>,
    S::Error: Into<BoxError>,
{
    let deadline_bites = remaining < config.attempt_timeout;
    let timeout = config.attempt_timeout.min(remaining);
    let call = async {
        let ready = inner.ready().await.map_err(Into::into)?;
        ready.call(request).await.map_err(Into::into)
    };

    match tokio::time::timeout(timeout, call).await {
        Ok(Ok(response)) => Attempt::Response(response),
        Ok(Err(error)) => Attempt::Error(RetryError::new(
            RetryErrorKind::Client,
            attempt,
            Some(error),
        )),
        Err(_) if deadline_bites => Attempt::Error(RetryError::new(
            RetryErrorKind::DeadlineExceeded,
            attempt,
            Some(AttemptTimedOut::new(timeout).into()),
        )),
        Err(_) => Attempt::Error(RetryError::new(
            RetryErrorKind::TimedOut,
            attempt,
            Some(AttemptTimedOut::new(timeout).into()),
        )),
    }
}

fn classify<B>(config: &RetryConfig, outcome: &Attempt<B>) -> (Classification, Option<Duration>) {
    match outcome {
        Attempt::Response(response) => {
            let class = config
                .success
                .classify_response(response.status(), response.headers());
            (class, retry_after(response.headers(), SystemTime::now()))
        }
        Attempt::Error(error) if error.kind() == RetryErrorKind::DeadlineExceeded => {
            (Classification::Permanent, None)
        }
        Attempt::Error(error) => (config.success.classify_error(error), None),
    }
}

/// Returns the delay before the next attempt, or `None` if no retry is
/// allowed: not idempotent, out of attempts, out of budget, or the delay
/// would end past the deadline.
fn next_delay(
    config: &RetryConfig,
    attempt: u32,
    retry_after: Option<Duration>,
    started: Instant,
    retryable: bool,
) -> Option<Duration> {
    if !retryable || attempt >= config.backoff.attempts_limit() {
        return None;
    }

    let delay = config.backoff.delay_after(attempt, retry_after);
    if started.elapsed().saturating_add(delay) >= config.deadline {
        return None;
    }

    // The budget is checked last, so that a retry the deadline forbids
    // does not spend it.
    if !config.budget.withdraw() {
        tracing::debug!(attempt, "retry budget exhausted, not retrying");
        return None;
    }
    Some(delay)
}

fn describe<B>(outcome: &Attempt<B>) -> String {
    match outcome {
        Attempt::Response(response) => format!("receiver responded {}", response.status()),
        Attempt::Error(error) => super::error_chain(error),
    }
}

fn finish<B>(outcome: Attempt<B>) -> Result<Response<B>, RetryError> {
    match outcome {
        Attempt::Response(response) => Ok(response),
        Attempt::Error(error) => Err(error),
    }
}
