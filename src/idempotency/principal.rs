//! The principal that scopes idempotency keys.

use http::Extensions;

/// Returns the authenticated key id that the signature check stored in the
/// request's extensions, or `None` when no authentication ran.
// TODO: read `crate::auth::KeyId` once the signature layer is merged.
pub(crate) fn principal(extensions: &Extensions) -> Option<String> {
    let _ = extensions;
    None
}

/// Puts `principal` back into a request's extensions, as the signature
/// check would have, for a command that a worker runs later.
// TODO: insert `crate::auth::KeyId` once the signature layer is merged.
pub(crate) fn insert_principal(extensions: &mut Extensions, principal: &str) {
    let _ = (extensions, principal);
}
