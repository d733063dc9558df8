//! Tower middleware that gives service-to-service HTTP the semantics of
//! reliable messaging.
//!
//! Placeholder: the crate docs are written as the layers land.

#![forbid(unsafe_code)]
#![warn(
    missing_docs,
    missing_debug_implementations,
    unreachable_pub,
    rust_2018_idioms
)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod accept;
pub mod auth;
pub mod body;
pub mod clock;
pub mod idempotency;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
#[cfg_attr(docsrs, doc(cfg(any(feature = "sqlite", feature = "postgres"))))]
pub mod inbox;
pub mod outbox;
pub mod retry;
pub mod store;
#[cfg(feature = "testing")]
#[cfg_attr(docsrs, doc(cfg(feature = "testing")))]
pub mod testing;
pub mod worker;

mod id;

pub use id::MessageId;

/// A type-erased error, as tower and hyper use.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;
