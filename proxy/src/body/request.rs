use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use pin_project_lite::pin_project;

use super::BoxError;

/// The start of a request body, read before forwarding.
#[derive(Debug)]
pub struct Head<B> {
    /// Up to `limit` bytes (or the whole body, when it was shorter).
    pub bytes: Bytes,
    /// The rest of the body when it did not fit; `None` when `bytes` is the whole body.
    pub rest: Option<B>,
}

/// Reads up to `limit` bytes of `body`.
///
/// LLM request bodies are small JSON documents the upstream cannot act on before it has them
/// whole, so reading them up to a bound costs no latency that matters and lets Tally read the
/// model, the stream flag and the user before forwarding. A larger body (an audio upload, say)
/// is forwarded as this head followed by the untouched rest, streamed.
pub async fn read_head<B>(mut body: B, limit: usize) -> Result<Head<B>, BoxError>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    let mut first: Option<Bytes> = None;
    let mut buf = BytesMut::new();
    loop {
        if body.is_end_stream() {
            break;
        }
        let Some(frame) = body.frame().await else {
            break;
        };
        let Ok(data) = frame.map_err(Into::into)?.into_data() else {
            continue; // request trailers: rare, and meaningless to LLM APIs
        };
        // Most bodies arrive in one frame: keep it without copying.
        match first.take() {
            None if buf.is_empty() => first = Some(data),
            Some(f) => {
                buf.extend_from_slice(&f);
                buf.extend_from_slice(&data);
            }
            None => buf.extend_from_slice(&data),
        }
        let len = first.as_ref().map_or(buf.len(), Bytes::len);
        if len > limit {
            let bytes = first.unwrap_or_else(|| buf.freeze());
            return Ok(Head {
                bytes,
                rest: Some(body),
            });
        }
    }
    Ok(Head {
        bytes: first.unwrap_or_else(|| buf.freeze()),
        rest: None,
    })
}

pin_project! {
    /// A head already read, then the rest of the body as it arrives; counts the bytes of the
    /// rest so the record knows the full request size.
    pub struct PrefixedBody<B> {
        head: Option<Bytes>,
        #[pin]
        rest: B,
        counted: Arc<AtomicU64>,
    }
}

impl<B> PrefixedBody<B> {
    /// `counted` receives the number of bytes forwarded from `rest`.
    pub fn new(head: Bytes, rest: B, counted: Arc<AtomicU64>) -> Self {
        Self {
            head: Some(head),
            rest,
            counted,
        }
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
        if let Some(head) = this.head.take() {
            return Poll::Ready(Some(Ok(Frame::data(head))));
        }
        let frame = ready!(this.rest.poll_frame(cx));
        Poll::Ready(frame.map(|r| {
            r.inspect(|f| {
                if let Some(d) = f.data_ref() {
                    this.counted.fetch_add(d.len() as u64, Ordering::Relaxed);
                }
            })
            .map_err(Into::into)
        }))
    }

    fn is_end_stream(&self) -> bool {
        self.head.is_none() && self.rest.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let rest = self.rest.size_hint();
        let head = self.head.as_ref().map_or(0, |b| b.len() as u64);
        // Raise the upper bound first: SizeHint asserts lower <= upper on every set.
        let mut h = SizeHint::new();
        if let Some(u) = rest.upper() {
            h.set_upper(u.saturating_add(head));
        }
        h.set_lower(rest.lower().saturating_add(head));
        h
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{Full, StreamBody};

    fn chunked(
        parts: &[&'static [u8]],
    ) -> StreamBody<impl futures_util::Stream<Item = Result<Frame<Bytes>, BoxError>>> {
        let v: Vec<Result<Frame<Bytes>, BoxError>> = parts
            .iter()
            .map(|p| Ok(Frame::data(Bytes::from_static(p))))
            .collect();
        StreamBody::new(futures_util::stream::iter(v))
    }

    #[tokio::test]
    async fn small_body_is_read_whole() {
        let head = read_head(Full::new(Bytes::from_static(b"{\"a\":1}")), 100)
            .await
            .expect("ok");
        assert_eq!(&head.bytes[..], b"{\"a\":1}");
        assert!(head.rest.is_none());
        let head = read_head(chunked(&[b"ab", b"cd", b"ef"]), 6)
            .await
            .expect("ok");
        assert_eq!(&head.bytes[..], b"abcdef");
        assert!(head.rest.is_none());
    }

    #[test]
    fn size_hint_adds_the_head_to_an_exact_rest() {
        let body = PrefixedBody::new(
            Bytes::from_static(b"abcd"),
            Full::new(Bytes::from_static(b"ef")),
            Arc::new(AtomicU64::new(0)),
        );
        assert_eq!(body.size_hint().exact(), Some(6));
    }

    #[tokio::test]
    async fn large_body_is_head_plus_untouched_rest() {
        let head = read_head(chunked(&[b"ab", b"cd", b"ef", b"gh"]), 3)
            .await
            .expect("ok");
        assert_eq!(&head.bytes[..], b"abcd");
        let rest = head.rest.expect("rest");
        let counted = Arc::new(AtomicU64::new(0));
        let all = PrefixedBody::new(head.bytes, rest, counted.clone())
            .collect()
            .await
            .expect("ok")
            .to_bytes();
        assert_eq!(&all[..], b"abcdefgh");
        assert_eq!(counted.load(Ordering::Relaxed), 4);
    }
}
