//! Rejection reasons, the uniform 401 response and the outcome counters.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use http::header::{HeaderValue, WWW_AUTHENTICATE};
use http::{Response, StatusCode};

use crate::body::{ResponseBody, problem};

/// The reason the verifying layer rejected a request.
///
/// Every reason gets the same `401` response; the reason goes only to the
/// log and to [`AuthMetrics`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RejectReason {
    /// No `X-Authentication` field.
    Missing,
    /// More than one `X-Authentication` field.
    Multiple,
    /// The value does not follow the grammar.
    Malformed,
    /// `kid` names no configured key.
    UnknownKey,
    /// `kid` names a key outside its validity window.
    InactiveKey,
    /// `ts` is older than the tolerance allows.
    Expired,
    /// `ts` is further ahead than the tolerance allows.
    FromFuture,
    /// The signature does not match.
    BadSignature,
    /// The (`kid`, `nonce`) pair was accepted before.
    Replayed,
}

impl RejectReason {
    /// Every reason, in the order the checks run.
    pub const ALL: [Self; 9] = [
        Self::Missing,
        Self::Multiple,
        Self::Malformed,
        Self::UnknownKey,
        Self::InactiveKey,
        Self::Expired,
        Self::FromFuture,
        Self::BadSignature,
        Self::Replayed,
    ];

    /// Returns a short snake_case name for logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::Multiple => "multiple",
            Self::Malformed => "malformed",
            Self::UnknownKey => "unknown_key",
            Self::InactiveKey => "inactive_key",
            Self::Expired => "expired",
            Self::FromFuture => "from_future",
            Self::BadSignature => "bad_signature",
            Self::Replayed => "replayed",
        }
    }

    fn index(self) -> usize {
        Self::ALL
            .iter()
            .position(|reason| *reason == self)
            .expect("ALL lists every reason")
    }
}

impl fmt::Display for RejectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Builds the uniform rejection: `401 Unauthorized`,
/// `WWW-Authenticate: X-Authentication` and the problem+json body
/// `{"type":"about:blank","title":"Unauthorized","status":401}`.
pub fn unauthorized<B>() -> Response<ResponseBody<B>> {
    let mut response = problem(StatusCode::UNAUTHORIZED, None);
    response.headers_mut().insert(
        WWW_AUTHENTICATE,
        HeaderValue::from_static("X-Authentication"),
    );
    response
}

/// Counters of the verifying layer's outcomes.
///
/// Clones share the counters. Read them from [`VerifyLayer::metrics`] and
/// export them to the metrics system of your choice.
///
/// [`VerifyLayer::metrics`]: super::VerifyLayer::metrics
#[derive(Debug, Clone, Default)]
pub struct AuthMetrics {
    counters: Arc<Counters>,
}

#[derive(Debug, Default)]
struct Counters {
    accepted: AtomicU64,
    rejected: [AtomicU64; RejectReason::ALL.len()],
    too_large: AtomicU64,
    store_errors: AtomicU64,
}

impl AuthMetrics {
    /// Returns how many requests passed verification.
    pub fn accepted(&self) -> u64 {
        self.counters.accepted.load(Ordering::Relaxed)
    }

    /// Returns how many requests were rejected for `reason`.
    pub fn rejected(&self, reason: RejectReason) -> u64 {
        self.counters.rejected[reason.index()].load(Ordering::Relaxed)
    }

    /// Returns how many requests were rejected for any reason.
    pub fn rejected_total(&self) -> u64 {
        RejectReason::ALL
            .iter()
            .map(|reason| self.rejected(*reason))
            .sum()
    }

    /// Returns how many requests got `413` for a body over the limit.
    pub fn too_large(&self) -> u64 {
        self.counters.too_large.load(Ordering::Relaxed)
    }

    /// Returns how many requests got `503` because the replay store failed.
    pub fn store_errors(&self) -> u64 {
        self.counters.store_errors.load(Ordering::Relaxed)
    }

    pub(crate) fn count_accepted(&self) {
        self.counters.accepted.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn count_rejected(&self, reason: RejectReason) {
        self.counters.rejected[reason.index()].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn count_too_large(&self) {
        self.counters.too_large.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn count_store_error(&self) {
        self.counters.store_errors.fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_per_reason() {
        let metrics = AuthMetrics::default();

        metrics.count_rejected(RejectReason::Replayed);
        metrics.count_rejected(RejectReason::Replayed);
        metrics.count_rejected(RejectReason::Missing);

        assert_eq!(metrics.rejected(RejectReason::Replayed), 2);
        assert_eq!(metrics.rejected(RejectReason::Missing), 1);
        assert_eq!(metrics.rejected(RejectReason::Expired), 0);
        assert_eq!(metrics.rejected_total(), 3);
    }
}
