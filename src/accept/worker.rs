//! Running stored commands: the request a worker rebuilds from a stored
//! command.

use bytes::Bytes;
use http::{Request, Uri};
use http_body_util::Full;

use super::CommandId;
use super::enqueue::PRINCIPAL_METADATA;
use crate::BoxError;
use crate::store::Message;

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
