use std::fmt;

use http::{Response, StatusCode};

use crate::MessageId;

/// The result of handing a request to the outbox.
///
/// Only [`Delivery::Delivered`] means the receiver accepted the request.
/// [`Delivery::Queued`] means it is stored and will be delivered later, at
/// least once, by a dispatcher: the caller must not treat it as done.
#[must_use = "a queued request is not delivered yet; match on the delivery"]
#[derive(Debug)]
pub enum Delivery<B> {
    /// The inline attempt succeeded: here is the receiver's response.
    /// Nothing was stored.
    Delivered(Response<B>),
    /// The request is stored in the outbox, not delivered.
    Queued(Queued),
    /// The receiver rejected the request permanently (such as `400` or
    /// `422`): here is its response. Nothing was stored.
    Rejected(Response<B>),
}

impl<B> Delivery<B> {
    /// Returns `true` if the receiver accepted the request.
    pub fn is_delivered(&self) -> bool {
        matches!(self, Delivery::Delivered(_))
    }

    /// Returns the queued message, if the request was stored.
    pub fn queued(&self) -> Option<&Queued> {
        match self {
            Delivery::Queued(queued) => Some(queued),
            _ => None,
        }
    }

    /// Returns the receiver's response, if the inline attempt got one that
    /// ended the request (delivered or rejected).
    pub fn into_response(self) -> Option<Response<B>> {
        match self {
            Delivery::Delivered(response) | Delivery::Rejected(response) => Some(response),
            Delivery::Queued(_) => None,
        }
    }
}

/// A request stored in the outbox for a dispatcher to deliver.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Queued {
    /// The message id, also sent as the `Idempotency-Key` unless the
    /// caller set its own key.
    pub id: MessageId,
    /// The reason the request was stored instead of delivered.
    pub reason: QueuedReason,
}

/// The reason the outbox stored a request instead of delivering it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum QueuedReason {
    /// The layer runs in background mode and never sends inline.
    Background,
    /// The inline attempt failed transiently.
    Transient {
        /// The receiver's status, if a response arrived.
        status: Option<StatusCode>,
        /// The failure, as text for logs.
        error: String,
    },
}

impl fmt::Display for Queued {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.reason {
            QueuedReason::Background => {
                write!(f, "queued as message {}, not delivered yet", self.id)
            }
            QueuedReason::Transient { error, .. } => write!(
                f,
                "queued as message {} after a failed attempt ({error}), not delivered yet",
                self.id
            ),
        }
    }
}
