//! Storage for messages, idempotency records and replay-guard nonces.
//!
//! Every reliable behaviour of the crate rests on a store: the outbox and
//! the `202 Accepted` layer keep requests in a [`MessageQueue`], the
//! idempotency layer keeps claims and responses in an [`IdempotencyStore`],
//! and the signature check keeps nonces in a [`ReplayStore`]. Each is a
//! small trait, so a backend can implement only what it supports.
//!
//! [`Store`] bundles the three for one backend and opens a backend from a
//! URL such as `sqlite:courier.db` or `memory`.

mod bundle;
// Used by the database backends, so unused when none is compiled in.
#[cfg_attr(not(feature = "sqlite"), allow(dead_code))]
mod codec;
mod error;
mod idempotency;
mod message;
mod notify;
mod replay;

#[cfg(feature = "conformance")]
#[cfg_attr(docsrs, doc(cfg(feature = "conformance")))]
pub mod conformance;
pub mod memory;
#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub mod postgres;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub mod redis;
#[cfg(feature = "sqlite")]
#[cfg_attr(docsrs, doc(cfg(feature = "sqlite")))]
pub mod sqlite;

pub use bundle::Store;
pub use error::{StoreError, StoreErrorKind};
pub use idempotency::{
    ClaimOutcome, CompletedRecord, Fingerprint, IdempotencyKey, IdempotencyRecord,
    IdempotencyStore, StoredResponse,
};
pub use message::{
    Claimed, FencingToken, Lease, Message, MessageQueue, MessageState, Metadata, NewMessage,
    Outcome, QueueCounts,
};
pub use notify::{Notifier, Subscription};
pub use replay::ReplayStore;

#[allow(unused_imports)]
pub(crate) use codec::{decode_headers, encode_headers};
#[allow(unused_imports)]
pub(crate) use idempotency::hex_lower;
