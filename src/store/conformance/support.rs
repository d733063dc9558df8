//! Helpers shared by the cases.

use std::fmt::Debug;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method};

use crate::MessageId;
use crate::store::{NewMessage, StoreError, StoreErrorKind};

/// The lease that cases let expire: short enough to keep the suite fast,
/// long enough that a loaded machine does not expire it by accident
/// between two steps that expect it live.
pub(super) const SHORT_LEASE: Duration = Duration::from_millis(300);

/// A wait that outlasts [`SHORT_LEASE`] with room for clock steps between
/// a client and a database server.
pub(super) const PAST_SHORT_LEASE: Duration = Duration::from_millis(450);

/// A lease that no case outlives.
pub(super) const LONG_LEASE: Duration = Duration::from_secs(120);

/// Builds `cases` from async functions that take `Arc<S>`.
macro_rules! cases {
    ($($name:ident),* $(,)?) => {
        vec![$(
            $crate::store::conformance::Case::new(
                stringify!($name),
                |store| Box::pin($name(store)),
            )
        ),*]
    };
}

pub(super) use cases;

/// Returns a name no other case or earlier run uses, so that backends
/// sharing one database across cases stay isolated.
pub(super) fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", MessageId::new())
}

/// Returns a due message for `queue` with repeated and non-UTF-8 headers,
/// a binary body and metadata.
pub(super) fn message(queue: &str) -> NewMessage {
    let mut message = NewMessage::new(
        queue,
        "http://127.0.0.1:9/orders",
        Method::PUT,
        "/orders/42?expand=lines",
        SystemTime::now(),
    );
    message.headers = rich_headers();
    message.body = Bytes::from_static(b"{\"id\":42}\x00\xff");
    message
        .metadata
        .insert("principal".to_owned(), "billing".to_owned());
    message
}

/// Returns `count` due messages for `queue`.
pub(super) fn messages(queue: &str, count: usize) -> Vec<NewMessage> {
    (0..count).map(|_| message(queue)).collect()
}

/// Returns headers with a repeated name and a non-UTF-8 value.
pub(super) fn rich_headers() -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.append("content-type", HeaderValue::from_static("application/json"));
    headers.append("link", HeaderValue::from_static("<a>; rel=next"));
    headers.append("link", HeaderValue::from_static("<b>; rel=prev"));
    headers.append("x-raw", HeaderValue::from_bytes(b"caf\xe9").unwrap());
    headers
}

/// Asserts that `result` failed because the lease or claim was lost.
pub(super) fn assert_lease_lost<T: Debug>(result: Result<T, StoreError>, operation: &str) {
    match result {
        Err(error) => assert_eq!(
            error.kind(),
            StoreErrorKind::LeaseLost,
            "{operation} with a lost lease failed with the wrong kind: {error}"
        ),
        Ok(value) => panic!("{operation} with a lost lease succeeded: {value:?}"),
    }
}

/// Asserts that two times are equal to the millisecond, the finest unit
/// that every backend keeps.
pub(super) fn assert_same_millis(actual: SystemTime, expected: SystemTime, what: &str) {
    let millis = |time: SystemTime| {
        time.duration_since(SystemTime::UNIX_EPOCH)
            .expect("case times are after the epoch")
            .as_millis()
    };
    assert_eq!(
        millis(actual),
        millis(expected),
        "{what} changed in the store"
    );
}
