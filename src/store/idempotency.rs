use std::fmt;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use sha2::{Digest, Sha256};

use super::{FencingToken, StoreError};

/// The identity of one idempotent operation:
/// (principal, method, path, key).
///
/// The same key sent by two principals, or on two routes, names two
/// different operations.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IdempotencyKey {
    /// The authenticated key id, or `None` when no authentication ran.
    pub principal: Option<String>,
    /// The request method.
    pub method: String,
    /// The request path without the query.
    pub path: String,
    /// The unquoted `Idempotency-Key` value.
    pub key: String,
}

impl IdempotencyKey {
    /// Returns a fixed-size lowercase hex digest of the four parts, for
    /// stores that want a short primary key.
    ///
    /// Each part is length-prefixed before hashing, so no two different
    /// identities share an input.
    pub fn digest(&self) -> String {
        let mut hasher = Sha256::new();
        let principal = self.principal.as_deref();
        hasher.update([u8::from(principal.is_some())]);
        for part in [principal.unwrap_or(""), &self.method, &self.path, &self.key] {
            hasher.update((part.len() as u64).to_be_bytes());
            hasher.update(part.as_bytes());
        }
        hex_lower(&hasher.finalize())
    }
}

/// The SHA-256 fingerprint of a request, used to tell a retry from a
/// different request sent under the same key.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint(pub [u8; 32]);

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({})", hex_lower(&self.0))
    }
}

/// A response kept for replay: status, headers with repeated names and
/// raw bytes, and body.
#[derive(Clone, PartialEq, Eq)]
pub struct StoredResponse {
    /// The response status.
    pub status: StatusCode,
    /// The response headers to replay.
    pub headers: HeaderMap,
    /// The response body.
    pub body: Bytes,
}

impl fmt::Debug for StoredResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoredResponse")
            .field("status", &self.status)
            .field("headers", &self.headers.len())
            .field("body_len", &self.body.len())
            .finish()
    }
}

/// A completed idempotency record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompletedRecord {
    /// The fingerprint of the request that produced the response.
    pub fingerprint: Fingerprint,
    /// The response to replay.
    pub response: StoredResponse,
    /// When the record stops being replayed and may be purged.
    pub expires_at: SystemTime,
}

/// The result of [`IdempotencyStore::claim`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimOutcome {
    /// No live record existed (none at all, an expired lease or an expired
    /// completed record); the caller now holds the claim.
    Claimed(FencingToken),
    /// A live claim of another request exists.
    InProgress {
        /// The fingerprint of the request holding the claim.
        fingerprint: Fingerprint,
    },
    /// The operation completed and its response is stored.
    Completed(CompletedRecord),
}

/// A record as read back by [`IdempotencyStore::get`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdempotencyRecord {
    /// A claim held until `expires_at`.
    InProgress {
        /// The fingerprint of the request holding the claim.
        fingerprint: Fingerprint,
        /// The claim's current token.
        token: FencingToken,
        /// When the claim's lease ends unless renewed.
        expires_at: SystemTime,
    },
    /// A completed operation.
    Completed(CompletedRecord),
}

/// Records of idempotent operations: claims with leases, then stored
/// responses.
///
/// # Contract
///
/// - [`claim`](Self::claim) is atomic: of any number of concurrent claims
///   of one key, exactly one returns [`ClaimOutcome::Claimed`].
/// - A claim whose lease expired, and a completed record past its
///   retention, count as absent.
/// - Writes that take a token are applied only while the token is the
///   record's current one and the record is still a claim. Otherwise they
///   fail with [`StoreErrorKind::LeaseLost`](super::StoreErrorKind::LeaseLost).
#[async_trait]
pub trait IdempotencyStore: Send + Sync + fmt::Debug + 'static {
    /// Claims `key` for `lease` unless a live record exists.
    async fn claim(
        &self,
        key: &IdempotencyKey,
        fingerprint: Fingerprint,
        lease: Duration,
    ) -> Result<ClaimOutcome, StoreError>;

    /// Extends a claim's lease to `extend_by` from now.
    async fn renew(
        &self,
        key: &IdempotencyKey,
        token: FencingToken,
        extend_by: Duration,
    ) -> Result<(), StoreError>;

    /// Replaces a claim with the completed response, kept for `retention`.
    async fn complete(
        &self,
        key: &IdempotencyKey,
        token: FencingToken,
        response: &StoredResponse,
        retention: Duration,
    ) -> Result<(), StoreError>;

    /// Deletes a claim, so that the next request with the key runs again.
    async fn release(&self, key: &IdempotencyKey, token: FencingToken) -> Result<(), StoreError>;

    /// Returns the live record for `key`, if any.
    async fn get(&self, key: &IdempotencyKey) -> Result<Option<IdempotencyRecord>, StoreError>;

    /// Deletes expired claims and completed records past their retention,
    /// and returns how many were deleted.
    async fn purge_expired(&self) -> Result<u64, StoreError>;
}

pub(crate) fn hex_lower(bytes: &[u8]) -> String {
    use std::fmt::Write;

    let mut text = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        // `fmt::Write` for `String` never returns an error.
        let _ = write!(text, "{byte:02x}");
    }
    text
}
