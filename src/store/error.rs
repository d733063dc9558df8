use std::fmt;

use crate::BoxError;

/// The error returned by a store operation.
///
/// [`StoreError::kind`] shows callers what to do next: retry later
/// ([`StoreErrorKind::Unavailable`]), stop touching a message whose lease
/// was taken over ([`StoreErrorKind::LeaseLost`]), or report a bug or a
/// misconfiguration.
#[derive(Debug)]
pub struct StoreError {
    kind: StoreErrorKind,
    message: String,
    source: Option<BoxError>,
}

/// The kind of failure of a store operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum StoreErrorKind {
    /// The backend could not be reached or failed to respond: connection
    /// lost, I/O error, timeout, database busy past its timeout. Retrying
    /// later may succeed.
    Unavailable,
    /// The caller's lease or claim was taken over by another holder, or
    /// the record it named has moved on. The write was not applied.
    LeaseLost,
    /// The named message or record does not exist.
    NotFound,
    /// A bounded store is full and kept nothing.
    Full,
    /// Stored data could not be decoded.
    Corrupt,
    /// The store was configured or called with an invalid value.
    Invalid,
}

impl StoreError {
    /// Creates an error of `kind` with a lowercase message.
    pub fn new(kind: StoreErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            source: None,
        }
    }

    /// Creates an [`StoreErrorKind::Unavailable`] error caused by `source`.
    pub fn unavailable(message: impl Into<String>, source: impl Into<BoxError>) -> Self {
        Self::new(StoreErrorKind::Unavailable, message).with_source(source)
    }

    /// Creates a [`StoreErrorKind::LeaseLost`] error.
    pub fn lease_lost(message: impl Into<String>) -> Self {
        Self::new(StoreErrorKind::LeaseLost, message)
    }

    /// Attaches the underlying cause, returned by [`std::error::Error::source`].
    pub fn with_source(mut self, source: impl Into<BoxError>) -> Self {
        self.source = Some(source.into());
        self
    }

    /// Returns what went wrong.
    pub fn kind(&self) -> StoreErrorKind {
        self.kind
    }

    /// Returns `true` if the caller's lease was lost and the write refused.
    pub fn is_lease_lost(&self) -> bool {
        self.kind == StoreErrorKind::LeaseLost
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for StoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|source| source as &(dyn std::error::Error + 'static))
    }
}
