//! The request fingerprint that distinguishes a retry from a different request
//! sent under the same key.

use http::header::CONTENT_TYPE;
use http::request::Parts;
use sha2::{Digest, Sha256};

use crate::store::Fingerprint;

/// Computes SHA-256 over the method, the path and query, every
/// `Content-Type` value and the body.
///
/// Each part is prefixed with its length, so that no two different requests
/// hash the same input by moving bytes from one part to the next.
pub(crate) fn fingerprint(parts: &Parts, body: &[u8]) -> Fingerprint {
    let mut hasher = Sha256::new();
    let path_and_query = parts
        .uri
        .path_and_query()
        .map_or("/", |path_and_query| path_and_query.as_str());

    update_part(&mut hasher, parts.method.as_str().as_bytes());
    update_part(&mut hasher, path_and_query.as_bytes());

    let content_types = parts.headers.get_all(CONTENT_TYPE);
    hasher.update((content_types.iter().count() as u64).to_be_bytes());
    for value in content_types {
        update_part(&mut hasher, value.as_bytes());
    }

    update_part(&mut hasher, body);
    Fingerprint(hasher.finalize().into())
}

fn update_part(hasher: &mut Sha256, part: &[u8]) {
    hasher.update((part.len() as u64).to_be_bytes());
    hasher.update(part);
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Request;

    fn parts(method: &str, uri: &str, content_type: Option<&str>) -> Parts {
        let mut builder = Request::builder().method(method).uri(uri);
        if let Some(content_type) = content_type {
            builder = builder.header(CONTENT_TYPE, content_type);
        }
        builder.body(()).unwrap().into_parts().0
    }

    #[test]
    fn same_request_has_same_fingerprint() {
        let first = fingerprint(&parts("POST", "/a?x=1", Some("text/plain")), b"hi");
        let second = fingerprint(&parts("POST", "/a?x=1", Some("text/plain")), b"hi");
        assert_eq!(first, second);
    }

    #[test]
    fn each_part_changes_the_fingerprint() {
        let base = fingerprint(&parts("POST", "/a?x=1", Some("text/plain")), b"hi");
        let variants = [
            fingerprint(&parts("PUT", "/a?x=1", Some("text/plain")), b"hi"),
            fingerprint(&parts("POST", "/a?x=2", Some("text/plain")), b"hi"),
            fingerprint(&parts("POST", "/a?x=1", Some("text/html")), b"hi"),
            fingerprint(&parts("POST", "/a?x=1", None), b"hi"),
            fingerprint(&parts("POST", "/a?x=1", Some("text/plain")), b"ho"),
        ];
        for variant in variants {
            assert_ne!(variant, base);
        }
    }
}
