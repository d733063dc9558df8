//! The principal that scopes idempotency keys.

use http::Extensions;

/// Returns the authenticated key id that the signature check stored in the
/// request's extensions, or `None` when no authentication ran.
// TODO: read `crate::auth::KeyId` once the signature layer is merged.
pub(crate) fn principal(extensions: &Extensions) -> Option<String> {
    let _ = extensions;
    None
}
