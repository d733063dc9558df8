//! The principal that scopes idempotency keys and commands.

use http::Extensions;

use crate::auth::KeyId;

/// Returns the authenticated key id that the signature check stored in the
/// request's extensions, or `None` when no authentication ran.
pub(crate) fn principal(extensions: &Extensions) -> Option<String> {
    extensions
        .get::<KeyId>()
        .map(|key_id| key_id.as_str().to_owned())
}

/// Puts `principal` back into a request's extensions, as the signature
/// check would have, for a command that a worker runs later.
pub(crate) fn insert_principal(extensions: &mut Extensions, principal: &str) {
    extensions.insert(KeyId::new(principal));
}
