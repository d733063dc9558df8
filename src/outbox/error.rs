use std::error::Error as StdError;
use std::fmt;

use crate::BoxError;

/// The error returned by the [`Outbox`](super::Outbox) service: the request
/// was neither delivered nor stored.
#[derive(Debug)]
pub struct OutboxError {
    kind: OutboxErrorKind,
    source: Option<BoxError>,
}

/// The reason the outbox neither delivered nor stored a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum OutboxErrorKind {
    /// The request cannot be sent, such as a URL with an unsupported
    /// scheme or no host.
    InvalidRequest,
    /// The request body is longer than the outbox's body limit.
    BodyTooLarge,
    /// Reading the request body failed.
    BodyRead,
    /// The inline attempt failed permanently without a response.
    Client,
    /// Storing the message failed. In optimistic mode the inline attempt
    /// had failed transiently before.
    Store,
}

impl OutboxError {
    pub(crate) fn new(kind: OutboxErrorKind, source: impl Into<BoxError>) -> Self {
        Self {
            kind,
            source: Some(source.into()),
        }
    }

    /// Returns why the request was neither delivered nor stored.
    pub fn kind(&self) -> OutboxErrorKind {
        self.kind
    }
}

impl fmt::Display for OutboxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.kind {
            OutboxErrorKind::InvalidRequest => "invalid outbound request",
            OutboxErrorKind::BodyTooLarge => "outbound request body too large for the outbox",
            OutboxErrorKind::BodyRead => "failed to read outbound request body",
            OutboxErrorKind::Client => "outbound request failed permanently",
            OutboxErrorKind::Store => "failed to store outbound request in the outbox",
        })
    }
}

impl StdError for OutboxError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.source
            .as_deref()
            .map(|source| source as &(dyn StdError + 'static))
    }
}
