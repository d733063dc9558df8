use std::error::Error as StdError;
use std::fmt;
use std::time::Duration;

use crate::BoxError;

/// The error of a request that cannot be sent as it is: an unsupported URL
/// scheme, a URI without a host. Always a permanent failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidRequest {
    message: String,
}

impl InvalidRequest {
    /// Creates an error with a lowercase `message` that names the value.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
        }
    }
}

impl fmt::Display for InvalidRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl StdError for InvalidRequest {}

/// The error of one attempt that did not finish within its timeout. Always
/// a transient failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttemptTimedOut {
    timeout: Duration,
}

impl AttemptTimedOut {
    /// Creates the error for an attempt cut off after `timeout`.
    pub fn new(timeout: Duration) -> Self {
        Self { timeout }
    }

    /// Returns the timeout that passed.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }
}

impl fmt::Display for AttemptTimedOut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "attempt timed out after {:?}", self.timeout)
    }
}

impl StdError for AttemptTimedOut {}

/// The error returned by the inline [`Retry`](super::Retry) service.
///
/// A response, even a `503` after the last attempt, is returned as a
/// response; this error is for calls that ended without one.
#[derive(Debug)]
pub struct RetryError {
    kind: RetryErrorKind,
    attempts: u32,
    source: Option<BoxError>,
}

/// The reason an inline call ended without a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RetryErrorKind {
    /// The request body is longer than the buffer limit. Nothing was sent,
    /// because a body that cannot be replayed cannot be retried.
    BodyTooLarge,
    /// Reading the request body failed. Nothing was sent.
    BodyRead,
    /// The request cannot be sent, such as a URL with an unsupported
    /// scheme. Nothing was sent.
    InvalidRequest,
    /// The last attempt timed out.
    TimedOut,
    /// The total deadline passed before a response arrived.
    DeadlineExceeded,
    /// The client failed, and the failure was permanent, or no retry was
    /// allowed (attempts, deadline, budget or a non-idempotent request).
    Client,
}

impl RetryError {
    pub(crate) fn new(kind: RetryErrorKind, attempts: u32, source: Option<BoxError>) -> Self {
        Self {
            kind,
            attempts,
            source,
        }
    }

    /// Returns why the call ended.
    pub fn kind(&self) -> RetryErrorKind {
        self.kind
    }

    /// Returns how many attempts were sent, `0` if none was.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }
}

impl fmt::Display for RetryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.kind {
            RetryErrorKind::BodyTooLarge => "request body too large to buffer for retries",
            RetryErrorKind::BodyRead => "failed to read request body",
            RetryErrorKind::InvalidRequest => "invalid request",
            RetryErrorKind::TimedOut => "request timed out",
            RetryErrorKind::DeadlineExceeded => "retry deadline exceeded",
            RetryErrorKind::Client => "request failed",
        };
        write!(f, "{what} after {} attempt(s)", self.attempts)
    }
}

impl StdError for RetryError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.source
            .as_deref()
            .map(|source| source as &(dyn StdError + 'static))
    }
}

/// Joins an error and its sources with `: `, for the stored last error,
/// which has no `source()` to follow.
pub(crate) fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.ends_with(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}
