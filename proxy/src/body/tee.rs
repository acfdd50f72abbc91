use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};

use super::BoxError;

/// How a body stream ended, as seen by the tee.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamEnd {
    /// The last frame was delivered.
    Complete,
    /// The inner body failed (upstream reset, protocol error…).
    Error(String),
    /// No byte arrived within the idle timeout; the stream was aborted.
    IdleTimeout,
    /// The body was dropped before its end: the client went away.
    Cancelled,
}

/// Watches a body go by, and may rewrite it (a translated answer). `on_data` runs on the hot
/// path: it must be cheap and never block.
pub trait BodyObserver: Send + 'static {
    /// Called with every data frame, before the frame is forwarded; returns what is forwarded
    /// in its place (the chunk itself, unless the observer rewrites the body). An empty
    /// return forwards nothing for that frame.
    fn on_data(&mut self, chunk: Bytes) -> Bytes;
    /// Called once when the inner body has ended, before [`BodyObserver::on_end`]: the last
    /// bytes a rewriting observer still owes the client.
    fn on_last(&mut self) -> Option<Bytes> {
        None
    }
    /// Whether `on_data` may return other bytes than it got; then the inner body's size
    /// says nothing about the forwarded one.
    fn rewrites(&self) -> bool {
        false
    }
    /// Called exactly once, when the stream ends in any way.
    fn on_end(self, end: StreamEnd);
}

/// The idle timer fired.
#[derive(Debug, thiserror::Error)]
#[error("no data from upstream for {0:?}")]
pub struct IdleTimeout(pub Duration);

pin_project! {
    /// Forwards `inner` frame by frame, showing each data frame to an observer and aborting the
    /// stream when the upstream goes quiet for longer than the idle timeout.
    pub struct TeeBody<B, O: BodyObserver> {
        #[pin]
        inner: B,
        #[pin]
        idle: Sleep,
        idle_timeout: Duration,
        observer: Option<O>,
        // The observer's last bytes, forwarded after the inner body ended.
        last: Option<Bytes>,
        rewrites: bool,
    }

    impl<B, O: BodyObserver> PinnedDrop for TeeBody<B, O> {
        fn drop(this: Pin<&mut Self>) {
            if let Some(o) = this.project().observer.take() {
                o.on_end(StreamEnd::Cancelled);
            }
        }
    }
}

impl<B: Body, O: BodyObserver> TeeBody<B, O> {
    /// Wraps `inner`. Must be created inside a Tokio runtime (the idle timer needs one).
    ///
    /// A body that is empty from the start (a 204, a `Content-Length: 0`) is complete at once:
    /// hyper never polls such a body, it only drops it, which would otherwise read as a client
    /// that went away.
    pub fn new(inner: B, observer: O, idle_timeout: Duration) -> Self {
        let rewrites = observer.rewrites();
        let mut observer = Some(observer);
        let mut last = None;
        if inner.is_end_stream() {
            last = observer.as_mut().and_then(O::on_last);
            finish(&mut observer, StreamEnd::Complete);
        }
        Self {
            inner,
            idle: tokio::time::sleep(idle_timeout),
            idle_timeout,
            observer,
            last,
            rewrites,
        }
    }
}

/// The inner body ended: takes the observer's last bytes, then finishes it as complete.
fn end<O: BodyObserver>(observer: &mut Option<O>, last: &mut Option<Bytes>) {
    if let Some(o) = observer.as_mut() {
        *last = o.on_last().filter(|b| !b.is_empty());
    }
    finish(observer, StreamEnd::Complete);
}

fn finish<O: BodyObserver>(observer: &mut Option<O>, end: StreamEnd) {
    if let Some(o) = observer.take() {
        o.on_end(end);
    }
}

impl<B, O> Body for TeeBody<B, O>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
    O: BodyObserver,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        loop {
            if this.inner.is_end_stream() || this.observer.is_none() {
                if let Some(last) = this.last.take() {
                    return Poll::Ready(Some(Ok(Frame::data(last))));
                }
            }
            match this.inner.as_mut().poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    let frame = match (frame.into_data(), this.observer.as_mut()) {
                        (Ok(data), Some(o)) => {
                            let deadline = Instant::now() + *this.idle_timeout;
                            this.idle.as_mut().reset(deadline);
                            Frame::data(o.on_data(data))
                        }
                        (Ok(data), None) => Frame::data(data),
                        (Err(frame), _) => frame,
                    };
                    if this.inner.is_end_stream() {
                        end(this.observer, this.last);
                    }
                    // A rewriting observer may have nothing to forward yet (a whole answer
                    // still arriving): poll on rather than send an empty frame.
                    if frame.data_ref().is_some_and(|d| d.is_empty()) {
                        continue;
                    }
                    return Poll::Ready(Some(Ok(frame)));
                }
                Poll::Ready(Some(Err(e))) => {
                    let e: BoxError = e.into();
                    finish(this.observer, StreamEnd::Error(error_chain(&*e)));
                    return Poll::Ready(Some(Err(e)));
                }
                Poll::Ready(None) => {
                    end(this.observer, this.last);
                    return Poll::Ready(this.last.take().map(|b| Ok(Frame::data(b))));
                }
                Poll::Pending => {
                    if this.observer.is_some() {
                        ready!(this.idle.poll(cx));
                        finish(this.observer, StreamEnd::IdleTimeout);
                        return Poll::Ready(Some(Err(Box::new(IdleTimeout(*this.idle_timeout)))));
                    }
                    return Poll::Pending;
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
            && self.last.is_none()
            && !(self.rewrites && self.observer.is_some())
    }

    fn size_hint(&self) -> SizeHint {
        if self.rewrites {
            return SizeHint::default();
        }
        self.inner.size_hint()
    }
}

/// An error and its sources on one line: hyper's top-level messages alone are too vague
/// ("error reading a body from connection").
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        cur = inner.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, StreamBody};
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Log(Arc<Mutex<(Vec<u8>, Vec<StreamEnd>)>>);

    impl BodyObserver for Log {
        fn on_data(&mut self, chunk: Bytes) -> Bytes {
            self.0.lock().expect("lock").0.extend_from_slice(&chunk);
            chunk
        }
        fn on_end(self, end: StreamEnd) {
            self.0.lock().expect("lock").1.push(end);
        }
    }

    fn chunks(
        parts: Vec<Result<&'static [u8], &'static str>>,
    ) -> impl Body<Data = Bytes, Error = BoxError> {
        let frames = parts.into_iter().map(|p| {
            p.map(|b| Frame::data(Bytes::from_static(b)))
                .map_err(|e| -> BoxError { e.into() })
        });
        StreamBody::new(futures_util::stream::iter(frames))
    }

    #[tokio::test]
    async fn forwards_everything_and_ends_once() {
        let log = Log::default();
        let body = TeeBody::new(
            chunks(vec![Ok(b"ab"), Ok(b"cd")]),
            log.clone(),
            Duration::from_secs(5),
        );
        let out = body.collect().await.expect("ok").to_bytes();
        assert_eq!(&out[..], b"abcd");
        let l = log.0.lock().expect("lock");
        assert_eq!(l.0, b"abcd");
        assert_eq!(l.1, vec![StreamEnd::Complete]);
    }

    #[tokio::test]
    async fn error_is_reported_and_forwarded() {
        let log = Log::default();
        let body = TeeBody::new(
            chunks(vec![Ok(b"ab"), Err("reset")]),
            log.clone(),
            Duration::from_secs(5),
        );
        assert!(body.collect().await.is_err());
        assert_eq!(
            log.0.lock().expect("lock").1,
            vec![StreamEnd::Error("reset".into())]
        );
    }

    #[tokio::test]
    async fn drop_before_end_is_cancelled() {
        let log = Log::default();
        let mut body = Box::pin(TeeBody::new(
            chunks(vec![Ok(b"ab"), Ok(b"cd")]),
            log.clone(),
            Duration::from_secs(5),
        ));
        let first = body.frame().await.expect("frame").expect("ok");
        assert_eq!(first.into_data().expect("data"), Bytes::from_static(b"ab"));
        drop(body);
        assert_eq!(log.0.lock().expect("lock").1, vec![StreamEnd::Cancelled]);
    }

    #[tokio::test]
    async fn an_empty_body_is_complete_without_being_polled() {
        let log = Log::default();
        let body = TeeBody::new(
            http_body_util::Empty::<Bytes>::new(),
            log.clone(),
            Duration::from_secs(5),
        );
        drop(body);
        assert_eq!(log.0.lock().expect("lock").1, vec![StreamEnd::Complete]);
    }

    #[tokio::test(start_paused = true)]
    async fn quiet_upstream_hits_the_idle_timeout() {
        let log = Log::default();
        let body = TeeBody::new(
            StreamBody::new(futures_util::stream::pending::<
                Result<Frame<Bytes>, BoxError>,
            >()),
            log.clone(),
            Duration::from_secs(3),
        );
        let err = body.collect().await.expect_err("times out");
        assert!(err.to_string().contains("no data from upstream"), "{err}");
        assert_eq!(log.0.lock().expect("lock").1, vec![StreamEnd::IdleTimeout]);
    }
}
