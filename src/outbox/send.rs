//! The outbox's handling of one request: buffer, try inline, store.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::HeaderValue;
use http::{Request, Response, StatusCode};
use http_body::Body;
use http_body_util::Full;
use tower::{Service, ServiceExt};

use super::layer::{Mode, OutboxConfig};
use super::{Delivery, OutboxError, OutboxErrorKind, Queued, QueuedReason};
use crate::body::{CollectError, collect_limited};
use crate::idempotency::IDEMPOTENCY_KEY;
use crate::retry::{AttemptTimedOut, Classification, check_uri, error_chain, rebuild, retry_after};
use crate::store::NewMessage;
use crate::{BoxError, MessageId};

/// A request buffered and given its message id and `Idempotency-Key`.
struct Prepared {
    id: MessageId,
    parts: http::request::Parts,
    body: Bytes,
}

/// Handles one request in the layer's mode.
pub(crate) async fn handle<S, ReqBody, ResBody>(
    config: Arc<OutboxConfig>,
    inner: S,
    request: Request<ReqBody>,
) -> Result<Delivery<ResBody>, OutboxError>
where
    S: Service<Request<Full<Bytes>>, Response = Response<ResBody>>,
    S::Error: Into<BoxError>,
    ReqBody: Body,
    ReqBody::Error: Into<BoxError>,
{
    let prepared = prepare(&config, request).await?;
    match config.mode {
        Mode::Background => {
            let available_at = config.clock.now();
            store(&config, &prepared, available_at, QueuedReason::Background).await
        }
        Mode::Optimistic => try_inline(&config, inner, prepared).await,
    }
}

/// Converts `request` into the message the layer would store for it, due
/// now, for the caller to store in its own transaction.
pub(crate) async fn message_for<ReqBody>(
    config: &OutboxConfig,
    request: Request<ReqBody>,
) -> Result<NewMessage, OutboxError>
where
    ReqBody: Body,
    ReqBody::Error: Into<BoxError>,
{
    let prepared = prepare(config, request).await?;
    Ok(new_message(config, &prepared, config.clock.now()))
}

async fn prepare<ReqBody>(
    config: &OutboxConfig,
    request: Request<ReqBody>,
) -> Result<Prepared, OutboxError>
where
    ReqBody: Body,
    ReqBody::Error: Into<BoxError>,
{
    check_uri(request.uri())
        .map_err(|error| OutboxError::new(OutboxErrorKind::InvalidRequest, error))?;

    let (mut parts, body) = request.into_parts();
    let body = collect_limited(body, config.body_limit)
        .await
        .map_err(|error| match error {
            CollectError::TooLarge { .. } => OutboxError::new(OutboxErrorKind::BodyTooLarge, error),
            CollectError::Read(_) => OutboxError::new(OutboxErrorKind::BodyRead, error),
        })?;

    // The key is set before the first attempt and stored with the headers,
    // so that every attempt, inline or after a restart, carries the same.
    let id = MessageId::new();
    if !parts.headers.contains_key(IDEMPOTENCY_KEY) {
        let key = HeaderValue::from_str(&id.to_string()).expect("a UUID is a valid header value");
        parts.headers.insert(IDEMPOTENCY_KEY, key);
    }
    Ok(Prepared { id, parts, body })
}

async fn try_inline<S, ResBody>(
    config: &OutboxConfig,
    inner: S,
    prepared: Prepared,
) -> Result<Delivery<ResBody>, OutboxError>
where
    S: Service<Request<Full<Bytes>>, Response = Response<ResBody>>,
    S::Error: Into<BoxError>,
{
    let request = rebuild(&prepared.parts, &prepared.body);
    let call = inner.oneshot(request);
    let result = match tokio::time::timeout(config.attempt_timeout, call).await {
        Ok(result) => result.map_err(Into::into),
        Err(_) => Err(AttemptTimedOut::new(config.attempt_timeout).into()),
    };

    match result {
        Ok(response) => after_response(config, prepared, response).await,
        Err(error) => after_error(config, prepared, error).await,
    }
}

async fn after_response<ResBody>(
    config: &OutboxConfig,
    prepared: Prepared,
    response: Response<ResBody>,
) -> Result<Delivery<ResBody>, OutboxError> {
    let status = response.status();
    match config.success.classify_response(status, response.headers()) {
        Classification::Success => Ok(Delivery::Delivered(response)),
        Classification::Permanent => {
            tracing::debug!(message_id = %prepared.id, %status, "outbound request rejected");
            Ok(Delivery::Rejected(response))
        }
        Classification::Transient => {
            let now = config.clock.now();
            let wait = retry_after(response.headers(), now);
            let reason = QueuedReason::Transient {
                status: Some(status),
                error: format!("receiver responded {status}"),
            };
            store(config, &prepared, now + first_delay(config, wait), reason).await
        }
    }
}

async fn after_error<ResBody>(
    config: &OutboxConfig,
    prepared: Prepared,
    error: BoxError,
) -> Result<Delivery<ResBody>, OutboxError> {
    if config.success.classify_error(error.as_ref()) == Classification::Permanent {
        return Err(OutboxError::new(OutboxErrorKind::Client, error));
    }

    let now = config.clock.now();
    let reason = QueuedReason::Transient {
        status: None::<StatusCode>,
        error: error_chain(error.as_ref()),
    };
    store(config, &prepared, now + first_delay(config, None), reason).await
}

fn first_delay(config: &OutboxConfig, retry_after: Option<Duration>) -> Duration {
    config.backoff.delay_after(1, retry_after)
}

async fn store<ResBody>(
    config: &OutboxConfig,
    prepared: &Prepared,
    available_at: SystemTime,
    reason: QueuedReason,
) -> Result<Delivery<ResBody>, OutboxError> {
    let message = new_message(config, prepared, available_at);
    config
        .store
        .enqueue(vec![message])
        .await
        .map_err(|error| OutboxError::new(OutboxErrorKind::Store, error))?;

    let destination = destination(&prepared.parts.uri);
    match &reason {
        QueuedReason::Background => {
            tracing::debug!(message_id = %prepared.id, %destination, "outbound request queued");
        }
        QueuedReason::Transient { error, .. } => tracing::info!(
            message_id = %prepared.id,
            %destination,
            attempt = 1,
            error,
            "inline attempt failed, outbound request queued"
        ),
    }
    Ok(Delivery::Queued(Queued {
        id: prepared.id,
        reason,
    }))
}

fn new_message(config: &OutboxConfig, prepared: &Prepared, available_at: SystemTime) -> NewMessage {
    let uri = &prepared.parts.uri;
    let path_and_query = uri.path_and_query().map_or("/", |target| target.as_str());
    let mut message = NewMessage::new(
        config.queue.clone(),
        destination(uri),
        prepared.parts.method.clone(),
        path_and_query,
        available_at,
    );
    message.id = prepared.id;
    message.headers = prepared.parts.headers.clone();
    message.body = prepared.body.clone();
    message
}

/// Returns `scheme://authority` of an absolute URI checked by `check_uri`.
pub(crate) fn destination(uri: &http::Uri) -> String {
    let scheme = uri.scheme_str().unwrap_or("http");
    let authority = uri.authority().map_or("", |authority| authority.as_str());
    format!("{scheme}://{authority}")
}
