//! Command storage and the `202 Accepted` response.

use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body::Body;

use super::layer::Config;
use super::route::CommandRoute;
use crate::BoxError;
use crate::MessageId;
use crate::body::{CollectError, ResponseBody, collect_limited, problem};
use crate::store::{IdempotencyKey, NewMessage};

/// The metadata entry that keeps the authenticated key id of a command.
pub const PRINCIPAL_METADATA: &str = "principal";

/// Stores the command, then returns `202 Accepted`. Returns `503` and
/// stores nothing if the store fails.
pub(crate) async fn accept<ReqBody, B>(
    config: Arc<Config>,
    route: CommandRoute,
    request: Request<ReqBody>,
) -> Response<ResponseBody<B>>
where
    ReqBody: Body,
    ReqBody::Error: Into<BoxError>,
{
    let (parts, body) = request.into_parts();
    let body = match collect_limited(body, config.request_body_limit).await {
        Ok(body) => body,
        Err(error @ CollectError::TooLarge { .. }) => {
            return problem(StatusCode::PAYLOAD_TOO_LARGE, Some(&error.to_string()));
        }
        Err(CollectError::Read(_)) => {
            return problem(
                StatusCode::BAD_REQUEST,
                Some("failed to read the request body"),
            );
        }
    };

    let message = command_message(&config, &route, parts, body);
    let id = message.id;
    if let Err(error) = config.queue.enqueue(vec![message]).await {
        tracing::warn!(error = %error, route = route.pattern(), "failed to store a command");
        let detail = "the command store is unavailable, so the command was not accepted";
        return problem(StatusCode::SERVICE_UNAVAILABLE, Some(detail));
    }

    tracing::debug!(command_id = %id, route = route.pattern(), "accepted command");
    accepted(&config.status_prefix, &id.to_string())
}

fn command_message(
    config: &Config,
    route: &CommandRoute,
    parts: http::request::Parts,
    body: Bytes,
) -> NewMessage {
    let path_and_query = parts.uri.path_and_query().map_or_else(
        || "/".to_owned(),
        |path_and_query| path_and_query.to_string(),
    );
    let principal = crate::idempotency::principal(&parts.extensions);
    let id = command_id(&parts, principal.as_deref(), &body);
    let mut message = NewMessage::new(
        config.queue_name.clone(),
        route.pattern(),
        parts.method,
        path_and_query,
        config.clock.now(),
    );

    // Copies, because parsed headers and bodies can be slices of the
    // connection's read buffer, which a memory store would keep alive.
    message.id = id;
    message.headers = end_to_end_headers(parts.headers);
    message.body = Bytes::copy_from_slice(&body);
    if let Some(principal) = principal {
        message
            .metadata
            .insert(PRINCIPAL_METADATA.to_owned(), principal);
    }
    message
}

/// Returns the id of the command: derived from its idempotency identity
/// and fingerprint when the request carries a valid `Idempotency-Key`,
/// otherwise fresh.
///
/// The idempotency layer replays the stored `202` to retries, but a
/// receiver that dies after storing the command and before storing the
/// `202` leaves only an expired claim. The retry then reaches this layer
/// again, and the derived id makes its enqueue a no-op that returns
/// the first command's id. The fingerprint is part of the seed, so a
/// different request that reuses the key after the record's retention is
/// a new command.
fn command_id(parts: &http::request::Parts, principal: Option<&str>, body: &[u8]) -> MessageId {
    let Ok(Some(key)) = crate::idempotency::key_from_headers(&parts.headers) else {
        return MessageId::new();
    };
    let identity = IdempotencyKey {
        principal: principal.map(str::to_owned),
        method: parts.method.to_string(),
        path: parts.uri.path().to_owned(),
        key,
    };
    let fingerprint = crate::idempotency::fingerprint(parts, body);

    let mut seed = identity.digest().into_bytes();
    seed.extend_from_slice(&fingerprint.0);
    MessageId::derived(&seed)
}

/// Drops the hop-by-hop fields, which describe the connection the command
/// arrived on and mean nothing to the worker that runs it later, and
/// copies the other values into allocations of their own.
fn end_to_end_headers(mut headers: HeaderMap) -> HeaderMap {
    const HOP_BY_HOP: [HeaderName; 6] = [
        header::CONNECTION,
        HeaderName::from_static("keep-alive"),
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
    ];
    for name in HOP_BY_HOP {
        headers.remove(name);
    }

    let mut owned = HeaderMap::with_capacity(headers.len());
    for (name, value) in &headers {
        owned.append(name.clone(), crate::idempotency::owned_value(value));
    }
    owned
}

fn accepted<B>(status_prefix: &str, id: &str) -> Response<ResponseBody<B>> {
    let body = serde_json::json!({ "id": id, "status": "accepted" }).to_string();
    let location = format!("{status_prefix}/{id}");

    let mut response = Response::new(ResponseBody::full(body));
    *response.status_mut() = StatusCode::ACCEPTED;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    let location = HeaderValue::try_from(location)
        .expect("the status prefix was checked to be a valid header value");
    headers.insert(header::LOCATION, location);
    response
}
