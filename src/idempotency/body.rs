//! The response body of the idempotency layer, and bounded reading of the
//! handler's response.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use pin_project_lite::pin_project;

use crate::BoxError;

pin_project! {
    /// The handler's response body with the bytes already read from it in
    /// front.
    ///
    /// The idempotency layer reads a response body up to its limit to store
    /// it. When the body is longer, the caller still gets all of it: first
    /// the bytes read so far, then the rest of the handler's body.
    #[derive(Debug)]
    pub struct PrefixedBody<B> {
        prefix: Option<Bytes>,
        #[pin]
        rest: B,
    }
}

impl<B> PrefixedBody<B> {
    /// Creates a body that yields `prefix`, then the frames of `rest`.
    pub fn new(prefix: Bytes, rest: B) -> Self {
        let prefix = (!prefix.is_empty()).then_some(prefix);
        Self { prefix, rest }
    }

    /// Creates a body that yields the frames of `rest` only.
    pub fn passthrough(rest: B) -> Self {
        Self { prefix: None, rest }
    }
}

impl<B> Body for PrefixedBody<B>
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
        let this = self.project();
        if let Some(prefix) = this.prefix.take() {
            return Poll::Ready(Some(Ok(Frame::data(prefix))));
        }
        this.rest.poll_frame(cx).map_err(Into::into)
    }

    fn is_end_stream(&self) -> bool {
        self.prefix.is_none() && self.rest.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let prefix_len = self.prefix.as_ref().map_or(0, |prefix| prefix.len() as u64);
        let rest = self.rest.size_hint();
        let mut hint = SizeHint::new();
        hint.set_lower(rest.lower().saturating_add(prefix_len));
        if let Some(upper) = rest.upper() {
            hint.set_upper(upper.saturating_add(prefix_len));
        }
        hint
    }
}

/// A response body read up to a limit.
pub(crate) enum Bounded<B> {
    /// The whole body, within the limit.
    Whole(Bytes),
    /// The body is longer than the limit: the bytes read so far and the
    /// unread rest.
    TooLarge { prefix: Bytes, rest: B },
}

/// Reads `body` until it ends or passes `limit` bytes. Trailers are
/// dropped, because stored responses have none.
pub(crate) async fn read_bounded<B>(mut body: B, limit: usize) -> Result<Bounded<B>, BoxError>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    if body.size_hint().lower() > limit as u64 {
        return Ok(Bounded::TooLarge {
            prefix: Bytes::new(),
            rest: body,
        });
    }

    let mut buffer = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame.map_err(Into::into)?.into_data() else {
            continue;
        };

        // Most handlers send their body as one frame: keep it without a copy.
        if buffer.is_empty() && body.is_end_stream() {
            if data.len() <= limit {
                return Ok(Bounded::Whole(data));
            }
            return Ok(Bounded::TooLarge {
                prefix: data,
                rest: body,
            });
        }

        buffer.extend_from_slice(&data);
        if buffer.len() > limit {
            return Ok(Bounded::TooLarge {
                prefix: buffer.freeze(),
                rest: body,
            });
        }
    }
    Ok(Bounded::Whole(buffer.freeze()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{Full, StreamBody};

    fn chunked(chunks: &[&'static str]) -> impl Body<Data = Bytes, Error = BoxError> + Unpin {
        let frames: Vec<Result<Frame<Bytes>, BoxError>> = chunks
            .iter()
            .map(|chunk| Ok(Frame::data(Bytes::from_static(chunk.as_bytes()))))
            .collect();
        StreamBody::new(futures_util::stream::iter(frames))
    }

    #[tokio::test]
    async fn body_within_limit_is_whole() {
        let bounded = read_bounded(chunked(&["ab", "cd"]), 4).await.unwrap();
        assert!(matches!(bounded, Bounded::Whole(bytes) if bytes == "abcd"));
    }

    #[tokio::test]
    async fn long_body_is_given_back_whole() {
        let bounded = read_bounded(chunked(&["ab", "cd", "ef"]), 3).await.unwrap();
        let Bounded::TooLarge { prefix, rest } = bounded else {
            panic!("expected a body over the limit");
        };

        let all = PrefixedBody::new(prefix, rest).collect().await.unwrap();
        assert_eq!(all.to_bytes(), "abcdef");
    }

    #[tokio::test]
    async fn single_frame_is_kept_whole_or_given_back() {
        let within = read_bounded(chunked(&["abcd"]), 4).await.unwrap();
        assert!(matches!(within, Bounded::Whole(bytes) if bytes == "abcd"));

        let over = read_bounded(chunked(&["abcde"]), 4).await.unwrap();
        let Bounded::TooLarge { prefix, rest } = over else {
            panic!("expected a body over the limit");
        };
        let all = PrefixedBody::new(prefix, rest).collect().await.unwrap();
        assert_eq!(all.to_bytes(), "abcde");
    }

    #[tokio::test]
    async fn size_hint_over_limit_reads_nothing() {
        let body = Full::new(Bytes::from_static(b"abcdef"));
        let bounded = read_bounded(body, 3).await.unwrap();
        let Bounded::TooLarge { prefix, .. } = bounded else {
            panic!("expected a body over the limit");
        };
        assert!(prefix.is_empty());
    }
}
