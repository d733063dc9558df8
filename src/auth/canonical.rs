//! The string to sign and the body digest.

use std::borrow::Cow;

use http::Uri;
use sha2::{Digest, Sha256};

/// The first line of every string to sign.
const PREFIX: &str = "X-Authentication/v1";

/// Returns the lowercase hex SHA-256 of `body`, the last line of the
/// string to sign.
///
/// ```
/// use tower_courier::auth::body_digest;
///
/// assert_eq!(
///     body_digest(b""),
///     "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
/// );
/// ```
pub fn body_digest(body: &[u8]) -> String {
    DigestHex::of(body).as_str().to_owned()
}

/// The lowercase hex SHA-256 of a body, on the stack.
///
/// The layers run this on every request, so it uses a lookup table
/// instead of formatting byte by byte, which costs about as much as
/// hashing a kilobyte.
pub(crate) struct DigestHex([u8; 64]);

impl DigestHex {
    pub(crate) fn of(body: &[u8]) -> Self {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let digest: [u8; 32] = Sha256::digest(body).into();
        let mut text = [0_u8; 64];
        for (pair, byte) in text.chunks_exact_mut(2).zip(digest) {
            pair[0] = DIGITS[usize::from(byte >> 4)];
            pair[1] = DIGITS[usize::from(byte & 0x0f)];
        }
        Self(text)
    }

    pub(crate) fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).expect("hex digits are ASCII")
    }
}

/// The values that a signature covers, each exactly as sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SignedParts<'a> {
    /// The key id.
    pub kid: &'a str,
    /// The `ts` parameter, as the header spells it.
    pub ts: &'a str,
    /// The nonce.
    pub nonce: &'a str,
    /// The request method, such as `POST`.
    pub method: &'a str,
    /// The request target in origin form, such as `/orders/42?expand=lines`.
    pub path_and_query: &'a str,
    /// The lowercase hex SHA-256 of the body, from [`body_digest`].
    pub body_digest: &'a str,
}

impl SignedParts<'_> {
    /// Builds the string to sign: the seven lines joined by LF, with no
    /// trailing newline.
    ///
    /// ```
    /// use tower_courier::auth::{body_digest, SignedParts};
    ///
    /// let digest = body_digest(b"");
    /// let parts = SignedParts {
    ///     kid: "orders",
    ///     ts: "1700000000",
    ///     nonce: "AAAAAAAAAAAAAAAAAAAAAA",
    ///     method: "GET",
    ///     path_and_query: "/orders/42",
    ///     body_digest: &digest,
    /// };
    /// assert_eq!(
    ///     parts.string_to_sign(),
    ///     format!("X-Authentication/v1\norders\n1700000000\nAAAAAAAAAAAAAAAAAAAAAA\nGET\n/orders/42\n{digest}"),
    /// );
    /// ```
    pub fn string_to_sign(&self) -> String {
        self.lines().join("\n")
    }

    /// Returns the seven lines of the string to sign.
    pub(crate) fn lines(&self) -> [&str; 7] {
        [
            PREFIX,
            self.kid,
            self.ts,
            self.nonce,
            self.method,
            self.path_and_query,
            self.body_digest,
        ]
    }
}

/// Returns the request target in origin form as sent: the path and query
/// without normalisation, and `/` for an empty path.
///
/// A client request with an absolute URI (`http://host/a?b`) is sent by
/// hyper in origin form, so its target is the URI's path and query.
pub(crate) fn path_and_query(uri: &Uri) -> Cow<'_, str> {
    let target = uri.path_and_query().map_or("", |target| target.as_str());
    if target.starts_with('/') {
        Cow::Borrowed(target)
    } else {
        Cow::Owned(format!("/{target}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_and_query_keeps_encoding_and_order() {
        let uri: Uri = "/a%2Fb/../c?z=1&a=%20".parse().unwrap();

        assert_eq!(path_and_query(&uri), "/a%2Fb/../c?z=1&a=%20");
    }

    #[test]
    fn empty_path_is_slash() {
        let absolute: Uri = "http://127.0.0.1:8080".parse().unwrap();
        let query_only: Uri = "http://127.0.0.1:8080?x=1".parse().unwrap();

        assert_eq!(path_and_query(&absolute), "/");
        assert_eq!(path_and_query(&query_only), "/?x=1");
    }
}
