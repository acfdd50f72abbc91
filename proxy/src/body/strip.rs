use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use super::BoxError;
use crate::formats::WireFormat;

/// If no event boundary shows up within this many bytes, the stream is not the SSE we expect;
/// stop rewriting and pass the rest through untouched.
const MAX_PENDING: usize = 1024 * 1024;

pin_project! {
    /// Undoes, for the client, what asking for stream usage changed in a stream: each whole
    /// event goes through the format's [`strip_event`](crate::formats) (for OpenAI: the
    /// usage-only chunk is dropped and the `usage: null` member the upstream then adds to every
    /// other chunk is cut). Everything else passes through byte for byte.
    ///
    /// It works on whole events, so it holds back at most one partial event; OpenAI sends an
    /// event per write, so in practice nothing is held back.
    pub struct StripUsage<B> {
        #[pin]
        inner: B,
        format: WireFormat,
        pending: BytesMut,
        passthrough: bool,
    }
}

impl<B> StripUsage<B> {
    /// Wraps a stream Tally asked `format`'s upstream to add usage to.
    pub fn new(inner: B, format: WireFormat) -> Self {
        Self {
            inner,
            format,
            pending: BytesMut::new(),
            passthrough: false,
        }
    }
}

/// Index just past the first blank line (`\n\n` or `\r\n\r\n`) in `buf`.
fn event_end(buf: &[u8]) -> Option<usize> {
    let lf = memchr::memmem::find(buf, b"\n\n").map(|i| i + 2);
    let crlf = memchr::memmem::find(buf, b"\r\n\r\n").map(|i| i + 4);
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

impl<B> Body for StripUsage<B>
where
    B: Body<Data = Bytes, Error = BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        loop {
            match ready!(this.inner.as_mut().poll_frame(cx)) {
                Some(Ok(frame)) => {
                    let data = match frame.into_data() {
                        Ok(d) => d,
                        Err(other) => return Poll::Ready(Some(Ok(other))),
                    };
                    if *this.passthrough {
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                    this.pending.extend_from_slice(&data);
                    let mut out = BytesMut::with_capacity(this.pending.len());
                    while let Some(end) = event_end(this.pending) {
                        let event = this.pending.split_to(end);
                        this.format.strip_event(&event, &mut out);
                    }
                    if this.pending.len() > MAX_PENDING {
                        *this.passthrough = true;
                        out.extend_from_slice(&this.pending.split());
                    }
                    if !out.is_empty() {
                        return Poll::Ready(Some(Ok(Frame::data(out.freeze()))));
                    }
                    // A partial event: wait for more before emitting anything.
                }
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                None => {
                    if this.pending.is_empty() {
                        return Poll::Ready(None);
                    }
                    let rest: Bytes = this.pending.split().freeze();
                    return Poll::Ready(Some(Ok(Frame::data(rest))));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.pending.is_empty() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        // Rewriting changes the length.
        SizeHint::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, StreamBody};

    const WITH_USAGE: &str = "data: {\"id\":\"c\",\"choices\":[{\"delta\":{\"content\":\"Hi\"}}],\"usage\":null}\n\n\
data: {\"id\":\"c\",\"usage\":null,\"choices\":[{\"delta\":{}}]}\n\n\
data: {\"id\":\"c\",\"choices\":[],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":2,\"total_tokens\":3}}\n\n\
data: [DONE]\n\n";
    const WITHOUT: &str = "data: {\"id\":\"c\",\"choices\":[{\"delta\":{\"content\":\"Hi\"}}]}\n\n\
data: {\"id\":\"c\",\"choices\":[{\"delta\":{}}]}\n\n\
data: [DONE]\n\n";

    async fn run(chunks: Vec<Vec<u8>>) -> Vec<u8> {
        let frames = chunks
            .into_iter()
            .map(|c| Ok::<_, BoxError>(Frame::data(Bytes::from(c))));
        let body = StripUsage::new(
            StreamBody::new(futures_util::stream::iter(frames)),
            WireFormat::OpenAi,
        );
        body.collect().await.expect("ok").to_bytes().to_vec()
    }

    #[tokio::test]
    async fn client_sees_the_stream_it_asked_for() {
        let out = run(vec![WITH_USAGE.as_bytes().to_vec()]).await;
        assert_eq!(String::from_utf8(out).expect("utf8"), WITHOUT);
    }

    #[tokio::test]
    async fn any_chunking_gives_the_same_output() {
        let bytes = WITH_USAGE.as_bytes();
        for size in [1, 2, 3, 7, 13, 64] {
            let out = run(bytes.chunks(size).map(<[u8]>::to_vec).collect()).await;
            assert_eq!(
                String::from_utf8(out).expect("utf8"),
                WITHOUT,
                "chunk size {size}"
            );
        }
    }

    #[tokio::test]
    async fn unterminated_tail_is_flushed_untouched() {
        let out = run(vec![b"data: {\"usage\":null,\"x\":1}".to_vec()]).await;
        assert_eq!(out, b"data: {\"usage\":null,\"x\":1}");
    }
}
