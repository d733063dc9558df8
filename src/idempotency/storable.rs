//! The storable-response rule and the header filter of stored responses.

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::{BodyExt, Empty};

use crate::body::{ResponseBody, problem};
use crate::store::StoredResponse;

/// The response header that marks a replayed response.
pub const IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");

/// The status stored in place of a response too large to store.
///
/// `410 Gone` is a 4xx other than 408, 409, 425 and 429, so a sender that
/// follows the protocol treats it as permanent and stops retrying, which is
/// right because the operation has run. It also names what happened: the
/// response existed and can no longer be sent. A 2xx replacement was not
/// chosen because a client would read its body as the real result.
pub const TOO_LARGE_TO_REPLAY: StatusCode = StatusCode::GONE;

/// Returns `true` for responses that are stored: 2xx and 4xx, except 408,
/// 409, 425 and 429, which ask the client to try again later.
pub(crate) fn is_storable(status: StatusCode) -> bool {
    let retry_later = matches!(status.as_u16(), 408 | 409 | 425 | 429);
    (status.is_success() || status.is_client_error()) && !retry_later
}

/// Returns the headers to store: all but hop-by-hop fields (including those
/// named by `Connection`), `Content-Length`, `Date` and `Set-Cookie`.
///
/// `Content-Length` is left to the server, which frames the replayed body
/// itself. A cookie set for the first caller must not be handed to another
/// client that retries with the same key, and a replayed `Date` would be
/// stale.
pub(crate) fn storable_headers(headers: &HeaderMap) -> HeaderMap {
    let named_by_connection: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();

    let mut stored = HeaderMap::with_capacity(headers.len());
    for (name, value) in headers {
        if !is_excluded(name) && !named_by_connection.contains(name) {
            stored.append(name.clone(), owned_value(value));
        }
    }
    stored
}

/// Copies `value` into an allocation of its own.
///
/// A parsed header value can be a slice of a connection's whole read
/// buffer, and a stored record that kept the slice would keep the buffer
/// alive for the record's retention.
pub(crate) fn owned_value(value: &HeaderValue) -> HeaderValue {
    let mut owned = HeaderValue::from_maybe_shared(Bytes::copy_from_slice(value.as_bytes()))
        .expect("bytes of a valid header value are valid");
    owned.set_sensitive(value.is_sensitive());
    owned
}

fn is_excluded(name: &HeaderName) -> bool {
    const EXCLUDED: [HeaderName; 11] = [
        header::CONNECTION,
        HeaderName::from_static("keep-alive"),
        header::PROXY_AUTHENTICATE,
        header::PROXY_AUTHORIZATION,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
        header::CONTENT_LENGTH,
        header::DATE,
        header::SET_COOKIE,
    ];
    EXCLUDED.contains(name)
}

/// Builds the record kept for a response whose body passed the response
/// body limit, so that retries get a documented response instead of running
/// the handler again.
pub(crate) async fn too_large_replacement(original: StatusCode, limit: usize) -> StoredResponse {
    let detail = format!(
        "the operation completed with status {}, but its response body was longer \
         than the {limit}-byte limit for stored responses, so it cannot be replayed",
        original.as_u16()
    );
    let (parts, body) = problem::<Empty<Bytes>>(TOO_LARGE_TO_REPLAY, Some(&detail)).into_parts();

    // `problem` builds a `Full` body, whose error type is `Infallible`.
    let body = body.collect().await.map(|collected| collected.to_bytes());
    StoredResponse {
        status: parts.status,
        headers: parts.headers,
        body: body.unwrap_or_default(),
    }
}

/// Builds the replay of a stored response, marked `Idempotent-Replayed: true`.
pub(crate) fn replay<B>(stored: StoredResponse) -> Response<ResponseBody<B>> {
    let mut response = Response::new(ResponseBody::full(stored.body));
    *response.status_mut() = stored.status;
    *response.headers_mut() = stored.headers;
    response
        .headers_mut()
        .insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storable_statuses_follow_the_protocol() {
        for code in [200, 201, 204, 400, 404, 410, 422] {
            assert!(is_storable(StatusCode::from_u16(code).unwrap()), "{code}");
        }
        for code in [301, 408, 409, 425, 429, 500, 502, 503] {
            assert!(!is_storable(StatusCode::from_u16(code).unwrap()), "{code}");
        }
    }

    #[test]
    fn excluded_headers_are_not_stored() {
        let mut headers = HeaderMap::new();
        headers.append(header::LINK, HeaderValue::from_static("<a>; rel=next"));
        headers.append(header::LINK, HeaderValue::from_static("<b>; rel=prev"));
        headers.append(header::SET_COOKIE, HeaderValue::from_static("s=1"));
        headers.append(header::DATE, HeaderValue::from_static("today"));
        headers.append(header::CONNECTION, HeaderValue::from_static("x-hop"));
        headers.append("x-hop", HeaderValue::from_static("1"));
        headers.append("x-raw", HeaderValue::from_bytes(b"caf\xe9").unwrap());

        let stored = storable_headers(&headers);

        assert_eq!(stored.get_all(header::LINK).iter().count(), 2);
        assert_eq!(stored["x-raw"].as_bytes(), b"caf\xe9");
        assert!(!stored.contains_key(header::SET_COOKIE));
        assert!(!stored.contains_key(header::DATE));
        assert!(!stored.contains_key(header::CONNECTION));
        assert!(!stored.contains_key("x-hop"));
    }

    #[tokio::test]
    async fn too_large_replacement_is_a_problem() {
        let stored = too_large_replacement(StatusCode::CREATED, 10).await;

        assert_eq!(stored.status, StatusCode::GONE);
        assert_eq!(
            stored.headers[header::CONTENT_TYPE],
            crate::body::PROBLEM_JSON
        );
        let body = std::str::from_utf8(&stored.body).unwrap();
        assert!(body.contains("status 201"), "{body}");
    }
}
