//! Tower middleware that gives service-to-service HTTP the semantics of
//! reliable messaging.
//!
//! Services that call each other over HTTP face latency and partial
//! failure: a refused connection, a timeout, a `500`, a receiver with a bug
//! for hours. This crate keeps plain HTTP (curl and logs still work) and
//! adds what a message broker would give: signed requests, commands that
//! are stored before they are acknowledged, deduplication of retries, and
//! an outbox whose requests survive crashes until they are delivered.
//!
//! # Overview
//!
//! On the receiving side, wrap the router:
//!
//! - [`auth::VerifyLayer`] rejects requests without a valid
//!   `X-Authentication` signature and passes the [`auth::KeyId`] on.
//! - [`idempotency::IdempotencyLayer`] runs each `Idempotency-Key` once and
//!   replays the stored response to retries.
//! - [`accept::AcceptLayer`] stores command requests, answers
//!   `202 Accepted`, and runs them in background workers.
//!
//! On the sending side, wrap the HTTP client:
//!
//! - [`outbox::OutboxLayer`] stores requests that could not be delivered
//!   (or every request, in background mode), and [`outbox::Dispatcher`]
//!   retries them with backoff until they succeed or are dead-lettered.
//! - [`auth::SignLayer`] signs every attempt afresh.
//! - [`retry::RetryLayer`] retries idempotent calls inline for callers that
//!   can wait.
//!
//! All of them keep their state in a [`store`]: SQLite (the embedded
//! default), PostgreSQL or Redis, or memory for tests.
//!
//! ```
//! use std::sync::Arc;
//!
//! use axum::{Router, routing::post};
//! use http::StatusCode;
//! use tower::ServiceBuilder;
//! use tower_courier::auth::{Key, KeyRing, VerifyLayer};
//! use tower_courier::idempotency::IdempotencyLayer;
//! use tower_courier::store::memory::MemoryStore;
//!
//! # fn main() -> Result<(), tower_courier::BoxError> {
//! let keys = KeyRing::single(Key::from_base64(
//!     "billing",
//!     "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=",
//! )?);
//! let store = Arc::new(MemoryStore::new());
//!
//! let app: Router = Router::new()
//!     .route("/invoices", post(|| async { StatusCode::CREATED }))
//!     .layer(
//!         ServiceBuilder::new()
//!             .layer(VerifyLayer::new(keys))
//!             .layer(IdempotencyLayer::required(store)),
//!     );
//! # let _ = app;
//! # Ok(())
//! # }
//! ```
//!
//! The wire protocol (headers, string to sign, status codes) is documented
//! in `docs/` and in each module, so that services in other languages can
//! take part.
//!
//! # What is promised, and what is not
//!
//! - Delivery is **at least once**: a message stored in a durable outbox is
//!   sent until it succeeds, fails permanently or runs out of attempts,
//!   across crashes and restarts. It can be sent more than once.
//! - Effects are **once per `Idempotency-Key`** when the receiver runs the
//!   idempotency layer on a shared, durable store, and background commands
//!   apply once when their handler uses the [`inbox`] helper.
//! - Not promised: ordering between messages, exactly-once delivery on the
//!   wire, or durability of the memory store.
//! - Clocks: signatures are accepted within a tolerance (300 seconds by
//!   default) of the receiver's clock, so the services' clocks must agree
//!   within it.
//! - Cancel safety: the idempotency layer runs the handler to completion
//!   even if the client disconnects, so that its response can be stored.
//!
//! # Feature flags
//!
//! | feature | default | what it adds |
//! |---|---|---|
//! | `sqlite` | yes | [`store::sqlite`], the embedded durable store |
//! | `postgres` | no | the PostgreSQL store, for several instances |
//! | `redis` | no | the Redis store |
//! | `testing` | no | [`testing`]: fault injection for integration tests |
//! | `conformance` | no | the store conformance suite, for third-party stores |
//! | `full` | no | all of the above |

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
