//! The workers that run stored commands, built on the crate's shared
//! queue worker.

use bytes::Bytes;
use http::{Request, Response, Uri};
use http_body::Body;
use http_body_util::Full;
use tower::Service;

use super::enqueue::PRINCIPAL_METADATA;
use super::{AcceptLayer, CommandId};
use crate::BoxError;
use crate::store::Message;
use crate::worker::{PermanentFailure, Worker};

/// Rebuilds the request of a stored command: its method, path and query,
/// headers and body, with the [`CommandId`] and the authenticated
/// principal in its extensions.
///
/// # Errors
///
/// Fails when the stored path and query is not a valid request target,
/// which only a corrupted store produces.
pub fn command_request(message: &Message) -> Result<Request<Full<Bytes>>, BoxError> {
    let uri: Uri = message.path_and_query.parse()?;
    let mut request = Request::new(Full::new(message.body.clone()));
    *request.method_mut() = message.method.clone();
    *request.uri_mut() = uri;
    *request.headers_mut() = message.headers.clone();

    let extensions = request.extensions_mut();
    extensions.insert(CommandId::new(message.id));
    if let Some(principal) = message.metadata.get(PRINCIPAL_METADATA) {
        crate::idempotency::insert_principal(extensions, principal);
    }
    Ok(request)
}

impl AcceptLayer {
    /// Creates the worker that runs this layer's commands through
    /// `service`, usually the application's router.
    ///
    /// It is the crate's shared [`Worker`], configured for commands: it
    /// claims from this layer's queue and store, rebuilds each request with
    /// [`command_request`], and marks a command failed (not dead) on a
    /// permanent failure, because a handler's 4xx is the command's result.
    /// A 2xx completes the command; a 5xx, 408, 409, 425, 429, a timeout
    /// or a panic is retried with backoff, and the command is dead once
    /// the backoff's attempts or age run out. Adjust the backoff, lease,
    /// concurrency and the rest on the returned [`Worker`], then call
    /// [`Worker::spawn`]; [`WorkerHandle::shutdown`] stops it gracefully.
    ///
    /// The service may include this layer (requests carrying a
    /// [`CommandId`] pass through it), but not the signature check: a
    /// stored command keeps the signature it arrived with, which the check
    /// rejects as a replay. Pass the handlers.
    ///
    /// [`WorkerHandle::shutdown`]: crate::worker::WorkerHandle::shutdown
    pub fn worker<S, B>(&self, service: S) -> Worker
    where
        S: Service<Request<Full<Bytes>>, Response = Response<B>> + Clone + Send + 'static,
        S::Future: Send + 'static,
        S::Error: Into<BoxError>,
        B: Body<Data = Bytes> + Send + 'static,
    {
        let config = &self.config;
        Worker::new(
            config.queue_name.clone(),
            config.queue.clone(),
            service,
            command_request,
        )
        .on_permanent(PermanentFailure::Fail)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::KeyId;
    use crate::store::{MessageState, Metadata};
    use http::{HeaderMap, HeaderValue, Method};
    use std::time::SystemTime;

    #[test]
    fn stored_command_becomes_request() {
        let now = SystemTime::now();
        let mut headers = HeaderMap::new();
        headers.append("x-raw", HeaderValue::from_bytes(b"\xe9").unwrap());
        let mut metadata = Metadata::new();
        metadata.insert(PRINCIPAL_METADATA.to_owned(), "billing".to_owned());
        let message = Message {
            id: crate::MessageId::new(),
            queue: "commands".to_owned(),
            destination: "/orders/{id}".to_owned(),
            method: Method::PUT,
            path_and_query: "/orders/7?dry=1".to_owned(),
            headers,
            body: Bytes::from_static(b"{}"),
            metadata,
            state: MessageState::InFlight,
            attempts: 1,
            available_at: now,
            created_at: now,
            updated_at: now,
            last_error: None,
            outcome: None,
        };

        let request = command_request(&message).unwrap();

        assert_eq!(request.method(), Method::PUT);
        assert_eq!(request.uri(), "/orders/7?dry=1");
        assert_eq!(request.headers()["x-raw"].as_bytes(), b"\xe9");
        assert_eq!(
            request.extensions().get::<CommandId>().unwrap().id(),
            message.id
        );
        assert_eq!(
            request.extensions().get::<KeyId>().unwrap().as_str(),
            "billing"
        );
    }
}
