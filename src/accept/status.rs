//! The status resource of accepted commands.

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::UNIX_EPOCH;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Empty;
use serde_json::{Value, json};
use tower::Service;

use crate::MessageId;
use crate::body::{ResponseBody, problem};
use crate::store::{Message, MessageQueue, MessageState};

/// The response of [`CommandStatus`].
pub type StatusResponse = Response<ResponseBody<Empty<Bytes>>>;

/// Serves `GET <prefix>/{id}` with the JSON status of an accepted command.
///
/// The id is the last segment of the request path, so the service works
/// wherever it is mounted, for example with axum:
/// `Router::new().route_service("/commands/status/{id}", layer.status_service())`.
/// Put it behind the same signature check as the command routes.
///
/// The body is a JSON object:
///
/// | member | value |
/// |---|---|
/// | `id` | the command id |
/// | `status` | `accepted`, `running`, `retrying`, `succeeded`, `failed` or `dead` |
/// | `attempts` | how many times a worker started the command |
/// | `created_at`, `updated_at` | Unix seconds |
/// | `last_error` | the error of the last failed attempt, or `null` |
/// | `response` | once finished with a response: `{"status": 201, "body": "..."}`, with `body_base64` in place of `body` when the body is not UTF-8 |
///
/// Any id that names no command of this queue, well-formed or not, is
/// `404 Not Found`. So is a command stored with a principal (the key id
/// that signed it) when the status request was authenticated as another
/// key id, or not at all. Command ids derived from an `Idempotency-Key`
/// are not secret, and the status shows the handler's response. Methods other than GET and HEAD get
/// `405 Method Not Allowed`.
#[derive(Clone)]
pub struct CommandStatus {
    queue: Arc<dyn MessageQueue>,
    queue_name: Arc<str>,
}

impl CommandStatus {
    /// Creates the status resource for the commands of `queue_name` in
    /// `queue`.
    pub fn new(queue: Arc<dyn MessageQueue>, queue_name: impl Into<String>) -> Self {
        Self {
            queue,
            queue_name: queue_name.into().into(),
        }
    }
}

impl fmt::Debug for CommandStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CommandStatus")
            .field("queue_name", &self.queue_name)
            .finish_non_exhaustive()
    }
}

impl<B> Service<Request<B>> for CommandStatus {
    type Response = StatusResponse;
    type Error = Infallible;
    type Future = StatusFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let this = self.clone();
        let method = request.method().clone();
        let principal = crate::idempotency::principal(request.extensions());
        let id = request
            .uri()
            .path()
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .to_owned();

        StatusFuture {
            inner: Box::pin(async move { Ok(this.respond(&method, &id, principal).await) }),
        }
    }
}

/// The response future of [`CommandStatus`].
pub struct StatusFuture {
    inner: BoxFuture<'static, Result<StatusResponse, Infallible>>,
}

impl Future for StatusFuture {
    type Output = Result<StatusResponse, Infallible>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.inner.as_mut().poll(cx)
    }
}

impl fmt::Debug for StatusFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StatusFuture").finish_non_exhaustive()
    }
}

impl CommandStatus {
    async fn respond(
        &self,
        method: &Method,
        id: &str,
        principal: Option<String>,
    ) -> StatusResponse {
        if *method != Method::GET && *method != Method::HEAD {
            let mut response = problem(StatusCode::METHOD_NOT_ALLOWED, None);
            response
                .headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            return response;
        }

        let Ok(id) = id.parse::<MessageId>() else {
            return not_found();
        };
        match self.queue.get(id).await {
            Ok(Some(message)) if self.visible(&message, principal.as_deref()) => {
                json_response(&message)
            }
            Ok(_) => not_found(),
            Err(error) => {
                tracing::warn!(command_id = %id, error = %error, "failed to read a command's status");
                problem(
                    StatusCode::SERVICE_UNAVAILABLE,
                    Some("the command store is unavailable"),
                )
            }
        }
    }
}

impl CommandStatus {
    /// Returns `true` if the command belongs to this queue and was stored
    /// without a principal or with the requester's.
    fn visible(&self, message: &Message, principal: Option<&str>) -> bool {
        let owner = message.metadata.get(super::PRINCIPAL_METADATA);
        *message.queue == *self.queue_name
            && owner.is_none_or(|owner| Some(owner.as_str()) == principal)
    }
}

fn not_found() -> StatusResponse {
    problem(StatusCode::NOT_FOUND, Some("no command has this id"))
}

fn json_response(message: &Message) -> StatusResponse {
    let body = status_body(message).to_string();
    let mut response = Response::new(ResponseBody::full(body));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    // A status changes while workers run, so caches must not keep it.
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// Returns the status name of a command, from its state and attempts.
pub(crate) fn status_name(message: &Message) -> &'static str {
    match message.state {
        MessageState::Pending if message.attempts == 0 => "accepted",
        MessageState::Pending => "retrying",
        MessageState::InFlight => "running",
        MessageState::Succeeded => "succeeded",
        MessageState::Failed => "failed",
        MessageState::Dead => "dead",
    }
}

fn status_body(message: &Message) -> Value {
    let unix = |time: std::time::SystemTime| {
        time.duration_since(UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_secs())
    };
    let mut body = json!({
        "id": message.id.to_string(),
        "status": status_name(message),
        "attempts": message.attempts,
        "created_at": unix(message.created_at),
        "updated_at": unix(message.updated_at),
        "last_error": message.last_error,
    });

    if let Some(outcome) = message
        .outcome
        .as_ref()
        .filter(|_| message.state.is_final())
    {
        let mut response = json!({ "status": outcome.status.as_u16() });
        match std::str::from_utf8(&outcome.body) {
            Ok(text) => response["body"] = Value::from(text),
            Err(_) => {
                use base64::Engine as _;
                let encoded = base64::engine::general_purpose::STANDARD.encode(&outcome.body);
                response["body_base64"] = Value::from(encoded);
            }
        }
        body["response"] = response;
    }
    body
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Metadata, Outcome};
    use http::HeaderMap;
    use std::time::SystemTime;

    fn message(state: MessageState, attempts: u32) -> Message {
        let now = SystemTime::now();
        Message {
            id: MessageId::new(),
            queue: "commands".to_owned(),
            destination: "/orders".to_owned(),
            method: Method::POST,
            path_and_query: "/orders".to_owned(),
            headers: HeaderMap::new(),
            body: Bytes::new(),
            metadata: Metadata::new(),
            state,
            attempts,
            available_at: now,
            created_at: now,
            updated_at: now,
            last_error: None,
            outcome: None,
        }
    }

    #[test]
    fn status_names_follow_state_and_attempts() {
        let cases = [
            (MessageState::Pending, 0, "accepted"),
            (MessageState::Pending, 2, "retrying"),
            (MessageState::InFlight, 1, "running"),
            (MessageState::Succeeded, 1, "succeeded"),
            (MessageState::Failed, 1, "failed"),
            (MessageState::Dead, 8, "dead"),
        ];
        for (state, attempts, expected) in cases {
            assert_eq!(
                status_name(&message(state, attempts)),
                expected,
                "{state} {attempts}"
            );
        }
    }

    #[test]
    fn binary_response_body_is_base64() {
        let mut finished = message(MessageState::Succeeded, 1);
        finished.outcome = Some(Outcome {
            status: StatusCode::OK,
            body: Bytes::from_static(b"\xff\x00"),
        });

        let body = status_body(&finished);

        assert_eq!(body["response"]["status"], 200);
        assert_eq!(body["response"]["body_base64"], "/wA=");
        assert!(body["response"].get("body").is_none());
    }

    #[test]
    fn unfinished_command_has_no_response() {
        let mut retrying = message(MessageState::Pending, 1);
        retrying.outcome = Some(Outcome {
            status: StatusCode::SERVICE_UNAVAILABLE,
            body: Bytes::new(),
        });
        retrying.last_error = Some("status 503".to_owned());

        let body = status_body(&retrying);

        assert!(body.get("response").is_none());
        assert_eq!(body["last_error"], "status 503");
    }
}
