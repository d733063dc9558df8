use std::error::Error as StdError;
use std::fmt;
use std::sync::Arc;

use http::{HeaderMap, StatusCode, Uri};

use super::error::{AttemptTimedOut, InvalidRequest};

/// The class of one delivery attempt's result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Classification {
    /// The receiver accepted the request: stop, it is delivered.
    Success,
    /// The attempt failed in a way that a later attempt may not: retry with
    /// backoff.
    Transient,
    /// The attempt failed in a way that retrying cannot fix: stop and
    /// report (inline) or dead-letter (outbox).
    Permanent,
}

impl Classification {
    /// Returns `true` for [`Classification::Success`].
    pub fn is_success(self) -> bool {
        self == Classification::Success
    }

    /// Returns `true` for [`Classification::Transient`].
    pub fn is_transient(self) -> bool {
        self == Classification::Transient
    }
}

/// Decides what counts as success for a call and how each failure is
/// classified.
///
/// The inline [`Retry`](super::Retry) layer, the outbox and the workers all
/// take one. [`StandardSuccess`] implements the protocol's default; a
/// caller with other needs implements this trait, or wraps a status
/// function with [`success_fn`].
pub trait SuccessSpec: fmt::Debug + Send + Sync + 'static {
    /// Classifies a response by its status and headers.
    fn classify_response(&self, status: StatusCode, headers: &HeaderMap) -> Classification;

    /// Classifies an error returned by the client instead of a response.
    ///
    /// The default is [`classify_error`].
    fn classify_error(&self, error: &(dyn StdError + 'static)) -> Classification {
        classify_error(error)
    }
}

impl<T: SuccessSpec + ?Sized> SuccessSpec for Arc<T> {
    fn classify_response(&self, status: StatusCode, headers: &HeaderMap) -> Classification {
        (**self).classify_response(status, headers)
    }

    fn classify_error(&self, error: &(dyn StdError + 'static)) -> Classification {
        (**self).classify_error(error)
    }
}

/// A shared, type-erased success specification.
pub type SharedSuccessSpec = Arc<dyn SuccessSpec>;

/// The default success specification.
///
/// - Success: any 2xx.
/// - Transient: 5xx, `408 Request Timeout`, `409 Conflict` (the receiver is
///   still running an earlier attempt with the same `Idempotency-Key`),
///   `425 Too Early` and `429 Too Many Requests`, and the errors that
///   [`classify_error`] calls transient.
/// - Permanent: every other status (other 4xx, and 1xx or 3xx, which a
///   client that follows no redirects cannot act on).
#[derive(Debug, Clone, Copy, Default)]
pub struct StandardSuccess;

impl SuccessSpec for StandardSuccess {
    fn classify_response(&self, status: StatusCode, _headers: &HeaderMap) -> Classification {
        classify_status(status)
    }
}

/// Classifies a status the way [`StandardSuccess`] does.
pub fn classify_status(status: StatusCode) -> Classification {
    match status.as_u16() {
        200..=299 => Classification::Success,
        500..=599 | 408 | 409 | 425 | 429 => Classification::Transient,
        _ => Classification::Permanent,
    }
}

/// Classifies a client error the way [`StandardSuccess`] does.
///
/// The whole `source()` chain is searched:
///
/// - Permanent: an invalid request found by this crate, such as an
///   unsupported URL scheme. Also an `http` crate error (invalid URI, header
///   or method). Also a hyper client error that reports a misuse of the
///   client, such as a URI without an authority. Also a URL that hyper's
///   `HttpConnector` rejects, such as `https` on a connector without TLS.
/// - Transient: everything else, including connection errors, timeouts and
///   connections closed mid-response, because a later attempt may succeed
///   and a message that never succeeds ends as a dead letter anyway.
pub fn classify_error(error: &(dyn StdError + 'static)) -> Classification {
    let mut current = Some(error);
    while let Some(error) = current {
        if is_permanent_error(error) {
            return Classification::Permanent;
        }
        if error.is::<AttemptTimedOut>() {
            return Classification::Transient;
        }
        current = error.source();
    }
    Classification::Transient
}

fn is_permanent_error(error: &(dyn StdError + 'static)) -> bool {
    if error.is::<InvalidRequest>()
        || error.is::<http::Error>()
        || error.is::<http::uri::InvalidUri>()
        || error.is::<http::uri::InvalidUriParts>()
    {
        return true;
    }

    // NOTE: hyper-util 0.1 exposes only `is_connect()` on its legacy client
    // error and keeps its connector's error type private. So two cases are
    // recognised by their Display text: misuse of the client starts with
    // `client error (User`, and a URL that `HttpConnector` rejects starts
    // with `invalid URL, `. `check_uri` runs before a request is sent, so
    // this only catches what that check cannot know.
    let text = error.to_string();
    let client_misuse =
        error.is::<hyper_util::client::legacy::Error>() && text.starts_with("client error (User");
    client_misuse || text.starts_with("invalid URL, ")
}

/// Checks that `uri` can be sent by an HTTP client: absolute, with an
/// `http` or `https` scheme and an authority.
///
/// # Errors
///
/// Returns an [`InvalidRequest`] naming what is wrong.
pub fn check_uri(uri: &Uri) -> Result<(), InvalidRequest> {
    match uri.scheme_str() {
        Some("http" | "https") => {}
        Some(other) => {
            return Err(InvalidRequest::new(format!(
                "unsupported url scheme {other:?}: expected http or https"
            )));
        }
        None => {
            return Err(InvalidRequest::new(format!(
                "request uri {uri} is not absolute: expected http://host/path"
            )));
        }
    }

    if uri.authority().is_none() {
        return Err(InvalidRequest::new(format!(
            "request uri {uri} has no host"
        )));
    }
    Ok(())
}

/// A success specification from a function of the status, for callers
/// whose receivers signal success differently (for example, where `404`
/// on a `DELETE` means the work is already done).
///
/// Errors are classified by [`classify_error`].
///
/// ```
/// use http::{HeaderMap, StatusCode};
/// use tower_courier::retry::{Classification, SuccessSpec, classify_status, success_fn};
///
/// let spec = success_fn(|status| match status {
///     StatusCode::NOT_FOUND => Classification::Success,
///     other => classify_status(other),
/// });
/// let headers = HeaderMap::new();
/// assert_eq!(spec.classify_response(StatusCode::NOT_FOUND, &headers), Classification::Success);
/// assert_eq!(spec.classify_response(StatusCode::BAD_REQUEST, &headers), Classification::Permanent);
/// ```
pub fn success_fn<F>(classify: F) -> SuccessFn<F>
where
    F: Fn(StatusCode) -> Classification + Send + Sync + 'static,
{
    SuccessFn { classify }
}

/// A success specification made by [`success_fn`].
#[derive(Clone, Copy)]
pub struct SuccessFn<F> {
    classify: F,
}

impl<F> fmt::Debug for SuccessFn<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SuccessFn").finish_non_exhaustive()
    }
}

impl<F> SuccessSpec for SuccessFn<F>
where
    F: Fn(StatusCode) -> Classification + Send + Sync + 'static,
{
    fn classify_response(&self, status: StatusCode, _headers: &HeaderMap) -> Classification {
        (self.classify)(status)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_table() {
        let cases = [
            (200, Classification::Success),
            (201, Classification::Success),
            (204, Classification::Success),
            (301, Classification::Permanent),
            (400, Classification::Permanent),
            (401, Classification::Permanent),
            (404, Classification::Permanent),
            (408, Classification::Transient),
            (409, Classification::Transient),
            (422, Classification::Permanent),
            (425, Classification::Transient),
            (429, Classification::Transient),
            (500, Classification::Transient),
            (503, Classification::Transient),
            (599, Classification::Transient),
        ];
        for (code, expected) in cases {
            let status = StatusCode::from_u16(code).unwrap();
            assert_eq!(classify_status(status), expected, "status {code}");
        }
    }

    #[test]
    fn unsupported_scheme_is_invalid() {
        let uri: Uri = "ftp://127.0.0.1/file".parse().unwrap();
        let error = check_uri(&uri).unwrap_err();

        assert!(error.to_string().contains("\"ftp\""), "{error}");
        assert_eq!(classify_error(&error), Classification::Permanent);
    }

    #[test]
    fn relative_uri_is_invalid() {
        let uri: Uri = "/orders".parse().unwrap();
        assert!(check_uri(&uri).is_err());
    }

    #[test]
    fn io_error_is_transient() {
        let error = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(classify_error(&error), Classification::Transient);
    }
}
