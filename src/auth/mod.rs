//! Signed requests between services: the `X-Authentication` header.
//!
//! A sender wraps its HTTP client in a [`SignLayer`], which signs every
//! request with HMAC-SHA256 over the method, the path and query, the body
//! digest, a timestamp and a fresh nonce. A receiver wraps its service in
//! a [`VerifyLayer`], which rejects every request that is unsigned,
//! tampered with, too old, from the future or replayed, and hands the
//! authenticated [`KeyId`] to the inner service.
//!
//! ```text
//! X-Authentication: v1; kid=<key id>; ts=<unix seconds>; nonce=<nonce>; sig=<signature>
//! ```
//!
//! ```
//! use bytes::Bytes;
//! use http::{Request, Response, StatusCode};
//! use http_body_util::Full;
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//! use tower_courier::auth::{Key, KeyId, KeyRing, SignLayer, VerifyLayer};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tower_courier::BoxError> {
//! let key = Key::from_base64("orders", "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=")?;
//! let keys = KeyRing::single(key);
//!
//! // The receiver returns the key id that signed the request.
//! let receiver = ServiceBuilder::new()
//!     .layer(VerifyLayer::new(keys.clone()))
//!     .service(service_fn(|request: Request<Full<Bytes>>| async move {
//!         let kid = request.extensions().get::<KeyId>().unwrap().as_str().to_owned();
//!         Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from(kid))))
//!     }));
//!
//! // The sender signs the request and hands it to the receiver in process.
//! let sender = ServiceBuilder::new().layer(SignLayer::new(keys)).service(receiver.clone());
//! let request = Request::post("/orders").body(Full::new(Bytes::from("{}")))?;
//! let response = sender.oneshot(request).await?;
//! assert_eq!(response.status(), StatusCode::OK);
//!
//! // The same request without the signing layer is rejected.
//! let unsigned = Request::post("/orders").body(Full::new(Bytes::from("{}")))?;
//! let response = receiver.oneshot(unsigned).await?;
//! assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
//! # Ok(())
//! # }
//! ```
//!
//! # Keys
//!
//! A [`KeyRing`] holds the shared secrets by key id, each at least 32
//! bytes, with optional validity windows for rotation, and one key that
//! signs. [`KeyRing::read_key_file`] reads them from a file of
//! `KID BASE64-SECRET` lines.
//!
//! # What is not promised
//!
//! - The sender's and the receiver's clocks must agree within the
//!   tolerance (300 seconds by default). A receiver whose clock is off by
//!   more rejects every request as expired or from the future.
//! - A captured request can be replayed only within the tolerance, and the
//!   replay guard catches that only where it keeps the nonce. The default
//!   in-memory store protects one process until it restarts. Replicas must
//!   share one [`ReplayStore`](crate::store::ReplayStore).
//! - The signature covers the method, the path and query, and the body,
//!   but no other header: a `Content-Type` or `Idempotency-Key` can be
//!   changed in transit without detection. Use TLS between services.

mod canonical;
mod header;
mod key;
mod rejection;

pub mod sign;
pub mod verify;

use http::HeaderName;

pub use canonical::{SignedParts, body_digest};
pub use header::{ParseHeaderError, SignatureHeader};
pub use key::{
    Key, KeyId, KeyRing, KeyRingBuilder, KeyRingError, KeyRingErrorKind, MIN_SECRET_LEN,
};
pub use rejection::{AuthMetrics, RejectReason, unauthorized};
pub use sign::{Sign, SignError, SignLayer};
pub use verify::{DEFAULT_TOLERANCE, Verify, VerifyLayer};

/// The header name, in the lowercase form HTTP/2 and the `http` crate use.
/// HTTP/1 names are case-insensitive, so `X-Authentication` matches it.
pub const HEADER_NAME: HeaderName = HeaderName::from_static("x-authentication");

/// The default body limit of both layers: 2 MiB, the same as axum's.
pub const DEFAULT_BODY_LIMIT: usize = 2 * 1024 * 1024;
