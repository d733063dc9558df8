//! Fault injection for integration tests (feature `testing`).
//!
//! [`FaultLayer`] wraps a server's router or a client's service and makes
//! chosen requests fail the way networks and deployments fail. It can
//! refuse a connection, reset it after the work was done, reply slowly, or
//! answer `5xx` before the handler runs. It can also answer `5xx` after
//! the handler ran: the reply is lost but the work is done, which is the
//! case retries must survive.
//!
//! [`Faults`] decides per request: by position ([`Faults::sequence`]), by
//! time ([`Faults::until`]) or by chance with a seed ([`Faults::random`]),
//! and only for matching requests ([`Faults::only`]).
//!
//! ```
//! use std::convert::Infallible;
//! use http::{Request, Response, StatusCode};
//! use http_body_util::Full;
//! use bytes::Bytes;
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//! use tower_courier::testing::{Fault, FaultLayer, Faults};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let handler = service_fn(|_req: Request<Full<Bytes>>| async {
//!     Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("done"))))
//! });
//! let faults = Faults::sequence([Some(Fault::fail_before(StatusCode::SERVICE_UNAVAILABLE)), None]);
//! let service = ServiceBuilder::new().layer(FaultLayer::new(faults)).service(handler);
//!
//! let first = service.clone().oneshot(Request::new(Full::default())).await.unwrap();
//! let second = service.oneshot(Request::new(Full::default())).await.unwrap();
//! assert_eq!(first.status(), StatusCode::SERVICE_UNAVAILABLE);
//! assert_eq!(second.status(), StatusCode::OK);
//! # }
//! ```
//!
//! A [`Fault::Refuse`] or [`Fault::Reset`] makes the service return an
//! error. Over a hyper server that closes the connection without a
//! response; under a client stack it looks like a connection error.

mod fault;
mod layer;

pub use fault::{Fault, FaultError, Faults};
pub use layer::{FaultLayer, FaultService};
