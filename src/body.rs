//! Body types and helpers shared by the layers.
//!
//! The layers buffer request bodies (to sign them, verify them, fingerprint
//! them or store them) and respond to some requests themselves. Buffered
//! requests go on as `Request<Full<Bytes>>`, and responses come back as a
//! [`ResponseBody`]: either the inner service's body or one the layer made.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::{error, fmt, mem};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{CONTENT_TYPE, HeaderValue};
use http::{Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use pin_project_lite::pin_project;

use crate::BoxError;

/// The media type of error bodies (RFC 9457).
pub const PROBLEM_JSON: &str = "application/problem+json";

pin_project! {
    // The generated projection type has undocumented fields, and
    // pin-project-lite accepts no doc comments on variant fields.
    #[allow(missing_docs)]
    /// The response body of the crate's layers: the inner service's body,
    /// or a complete body that a layer made or replayed.
    #[project = ResponseBodyProj]
    pub enum ResponseBody<B> {
        /// A complete body made by a layer.
        Full {
            #[pin]
            body: Full<Bytes>,
        },
        /// The inner service's body.
        Inner {
            #[pin]
            body: B,
        },
    }
}

impl<B> ResponseBody<B> {
    /// Creates a complete body from `bytes`.
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        Self::Full {
            body: Full::new(bytes.into()),
        }
    }

    /// Wraps the inner service's body.
    pub fn inner(body: B) -> Self {
        Self::Inner { body }
    }
}

impl<B> fmt::Debug for ResponseBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Full { .. } => f.write_str("ResponseBody::Full"),
            Self::Inner { .. } => f.write_str("ResponseBody::Inner"),
        }
    }
}

impl<B> Body for ResponseBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.project() {
            ResponseBodyProj::Full { body } => body.poll_frame(cx).map_err(|never| match never {}),
            ResponseBodyProj::Inner { body } => body.poll_frame(cx).map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Full { body } => body.is_end_stream(),
            Self::Inner { body } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Full { body } => body.size_hint(),
            Self::Inner { body } => body.size_hint(),
        }
    }
}

/// The error returned by [`collect_limited`].
#[derive(Debug)]
pub enum CollectError {
    /// The body is longer than the limit. Reading stopped at the limit.
    TooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// Reading the body failed, for example because the peer hung up.
    Read(BoxError),
}

impl fmt::Display for CollectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooLarge { limit } => write!(f, "body is longer than the {limit}-byte limit"),
            Self::Read(_) => f.write_str("failed to read body"),
        }
    }
}

impl error::Error for CollectError {
    fn source(&self) -> Option<&(dyn error::Error + 'static)> {
        match self {
            Self::TooLarge { .. } => None,
            Self::Read(source) => Some(source.as_ref()),
        }
    }
}

/// Reads a whole body into memory, holding at most `limit` bytes.
///
/// A `Content-Length` or size hint above the limit fails before any byte is
/// read; otherwise reading stops as soon as the limit is passed.
///
/// # Errors
///
/// [`CollectError::TooLarge`] for a body longer than `limit`, and
/// [`CollectError::Read`] when the body fails.
pub fn collect_limited<B>(body: B, limit: usize) -> CollectLimited<B>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    let phase = if body.size_hint().lower() > limit as u64 {
        Phase::TooLarge
    } else {
        Phase::Reading
    };
    CollectLimited {
        body,
        limit,
        phase,
        collected: Collected::Empty,
    }
}

pin_project! {
    /// The future returned by [`collect_limited`].
    ///
    /// A named type, so that the layers' own response futures can hold it
    /// without a box.
    pub struct CollectLimited<B> {
        #[pin]
        body: B,
        limit: usize,
        phase: Phase,
        collected: Collected,
    }
}

/// The progress of a [`CollectLimited`] future.
enum Phase {
    Reading,
    /// The size hint is over the limit, so nothing is read.
    TooLarge,
    /// The output has been returned.
    Done,
}

impl<B> fmt::Debug for CollectLimited<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CollectLimited")
            .field("limit", &self.limit)
            .field("read", &self.collected.len())
            .finish_non_exhaustive()
    }
}

impl<B> Future for CollectLimited<B>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    type Output = Result<Bytes, CollectError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let limit = *this.limit;
        let output = match this.phase {
            Phase::Reading => ready!(read_frames(this.body, this.collected, limit, cx)),
            Phase::TooLarge => Err(CollectError::TooLarge { limit }),
            Phase::Done => panic!("`CollectLimited` polled after completion"),
        };
        *this.phase = Phase::Done;
        Poll::Ready(output)
    }
}

/// Reads frames into `collected` until the body ends, fails or passes
/// `limit`.
fn read_frames<B>(
    mut body: Pin<&mut B>,
    collected: &mut Collected,
    limit: usize,
    cx: &mut Context<'_>,
) -> Poll<Result<Bytes, CollectError>>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    while let Some(frame) = ready!(body.as_mut().poll_frame(cx)) {
        let frame = frame.map_err(|error| CollectError::Read(error.into()))?;
        // Trailers carry nothing the layers use.
        let Ok(mut data) = frame.into_data() else {
            continue;
        };
        let length = data.remaining();
        if length > limit - collected.len() {
            return Poll::Ready(Err(CollectError::TooLarge { limit }));
        }
        collected.push(data.copy_to_bytes(length));
    }
    Poll::Ready(Ok(mem::take(collected).into_bytes()))
}

/// The data frames read so far. Small bodies usually arrive in one frame,
/// which is kept as it came, without an allocation or a copy.
#[derive(Default)]
enum Collected {
    #[default]
    Empty,
    One(Bytes),
    Many(BytesMut),
}

impl Collected {
    fn len(&self) -> usize {
        match self {
            Self::Empty => 0,
            Self::One(bytes) => bytes.len(),
            Self::Many(buffer) => buffer.len(),
        }
    }

    fn push(&mut self, chunk: Bytes) {
        match self {
            Self::Empty => *self = Self::One(chunk),
            Self::One(first) => {
                let mut buffer = BytesMut::with_capacity(first.len() + chunk.len());
                buffer.extend_from_slice(first);
                buffer.extend_from_slice(&chunk);
                *self = Self::Many(buffer);
            }
            Self::Many(buffer) => buffer.extend_from_slice(&chunk),
        }
    }

    fn into_bytes(self) -> Bytes {
        match self {
            Self::Empty => Bytes::new(),
            Self::One(bytes) => bytes,
            Self::Many(buffer) => buffer.freeze(),
        }
    }
}

/// Builds an `application/problem+json` response (RFC 9457) with
/// `type: about:blank`, the status's reason phrase as `title`, and
/// `detail` when given.
pub fn problem<B>(status: StatusCode, detail: Option<&str>) -> Response<ResponseBody<B>> {
    // Written by hand to keep the member order of the protocol's examples:
    // type, title, status, then detail.
    let title = title(status);
    let mut body = format!(
        r#"{{"type":"about:blank","title":{},"status":{}"#,
        serde_json::Value::from(title),
        status.as_u16()
    );
    if let Some(detail) = detail {
        body.push_str(&format!(r#","detail":{}"#, serde_json::Value::from(detail)));
    }
    body.push('}');

    let mut response = Response::new(ResponseBody::full(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
    response
}

/// Returns the reason phrase of RFC 9110, which renamed two that the
/// `http` crate still spells the RFC 7231 way.
fn title(status: StatusCode) -> &'static str {
    match status {
        StatusCode::PAYLOAD_TOO_LARGE => "Content Too Large",
        StatusCode::UNPROCESSABLE_ENTITY => "Unprocessable Content",
        _ => status.canonical_reason().unwrap_or("Error"),
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;

    use super::*;

    #[tokio::test]
    async fn body_within_limit_is_collected() {
        let bytes = collect_limited(Full::new(Bytes::from_static(b"hello")), 5)
            .await
            .unwrap();

        assert_eq!(bytes, "hello");
    }

    #[tokio::test]
    async fn body_over_limit_is_too_large() {
        let error = collect_limited(Full::new(Bytes::from_static(b"hello!")), 5)
            .await
            .unwrap_err();

        assert!(matches!(error, CollectError::TooLarge { limit: 5 }));
    }

    #[test]
    #[should_panic(expected = "polled after completion")]
    fn collect_limited_polled_after_completion_panics() {
        let mut future = std::pin::pin!(collect_limited(Full::new(Bytes::from_static(b"hi")), 5));
        let mut cx = Context::from_waker(std::task::Waker::noop());

        let first = future.as_mut().poll(&mut cx);
        assert!(matches!(first, Poll::Ready(Ok(ref bytes)) if bytes == "hi"));

        let _ = future.as_mut().poll(&mut cx);
    }

    #[tokio::test]
    async fn problem_body_names_the_status() {
        let response = problem::<Full<Bytes>>(StatusCode::UNAUTHORIZED, None);
        let bytes = response.into_body().collect().await.unwrap().to_bytes();

        assert_eq!(
            bytes,
            r#"{"type":"about:blank","title":"Unauthorized","status":401}"#
        );
    }

    #[test]
    fn titles_follow_rfc_9110() {
        assert_eq!(title(StatusCode::PAYLOAD_TOO_LARGE), "Content Too Large");
        assert_eq!(
            title(StatusCode::UNPROCESSABLE_ENTITY),
            "Unprocessable Content"
        );
        assert_eq!(title(StatusCode::CONFLICT), "Conflict");
    }
}
