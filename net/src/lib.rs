//! Connection hygiene for Tally's two ports: what keeps clients that never finish a request from
//! using up the process.
//!
//! hyper's `header_read_timeout` starts once a request begins, so a connection that sends
//! nothing, or half an HTTP/2 preface, holds a file descriptor forever, and a graceful shutdown
//! waits for it forever. A thousand such connections under the common soft limit of 1,024
//! descriptors stop `accept` for everyone. This crate gives both ports the same rules:
//!
//! - [`WatchedIo`] notes every byte read or written on a connection, and [`Open`] guards (held
//!   by each request until its response body is done, through [`Tracked`]) count what is in
//!   flight. [`Activity::idle`] resolves once a connection with nothing in flight has moved no
//!   byte for `header_read_timeout` (before its first request) or `keep_alive_timeout` (after
//!   one); the caller then drops it. A request in flight is never cut by this: its own
//!   timeouts (body, upstream, idle stream) govern it.
//! - [`Gate`] caps open connections; a connection past the cap gets a `503` and is closed,
//!   counted in `tally_connections_refused_total{port}`.
//! - [`raise_fd_limit`] lifts the soft descriptor limit to the hard one at start.
//! - [`serve`] is the dashboard's accept loop with all of the above and a shutdown bounded by
//!   a grace period, whatever the clients do. (The proxy has its own loops, one per core, and
//!   uses the same pieces.)

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use pin_project_lite::pin_project;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

/// How long a connection may sit idle, and how many may be open.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// A connection that has not started a request this long after connecting is closed.
    pub header_read_timeout: Duration,
    /// A connection whose last request ended this long ago, with nothing in flight, is closed.
    pub keep_alive_timeout: Duration,
    /// Most connections open at once on the port.
    pub max_connections: usize,
}

/// Labels of a connection metric.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PortLabels {
    /// `proxy` or `dashboard`.
    pub port: &'static str,
}

/// What the rules did, per port.
#[derive(Clone, Default, Debug)]
pub struct ConnMetrics {
    /// Connections refused because the port had `max_connections` open.
    pub refused: Family<PortLabels, Counter>,
    /// Connections closed for sitting idle (or never finishing a request) past their limit.
    pub idle_closed: Family<PortLabels, Counter>,
}

impl ConnMetrics {
    /// Adds the metrics to `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "connections_refused",
            "Connections refused with 503 because the port had max_connections open",
            self.refused.clone(),
        );
        registry.register(
            "connections_idle_closed",
            "Connections closed after sitting idle, or never finishing a request, past their timeout",
            self.idle_closed.clone(),
        );
    }

    fn refuse(&self, port: &'static str) {
        self.refused.get_or_create(&PortLabels { port }).inc();
    }

    /// Counts one connection closed for idling.
    pub fn idle(&self, port: &'static str) {
        self.idle_closed.get_or_create(&PortLabels { port }).inc();
    }
}

/// One connection's activity: when it last moved a byte, and how many requests it has open.
#[derive(Debug)]
pub struct Activity {
    epoch: Instant,
    /// Milliseconds after `epoch` of the last byte read or written.
    last_ms: AtomicU64,
    open: AtomicUsize,
    /// A request has started on it: from then on the keep-alive timeout applies.
    served: AtomicBool,
}

impl Activity {
    /// A connection accepted now.
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            epoch: Instant::now(),
            last_ms: AtomicU64::new(0),
            open: AtomicUsize::new(0),
            served: AtomicBool::new(false),
        })
    }

    fn touch(&self) {
        let ms = self.epoch.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// A request has started; it counts as in flight until the guard (or the [`Tracked`]
    /// body holding it) is dropped.
    pub fn open_request(self: &Arc<Self>) -> Open {
        self.open.fetch_add(1, Ordering::Relaxed);
        self.served.store(true, Ordering::Relaxed);
        Open(self.clone())
    }

    /// Resolves once the connection has had nothing in flight and moved no byte for its
    /// timeout. Never resolves while a request is open.
    pub async fn idle(&self, limits: &Limits) {
        loop {
            let timeout = if self.served.load(Ordering::Relaxed) {
                limits.keep_alive_timeout
            } else {
                limits.header_read_timeout
            };
            let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
            let quiet = self.epoch.elapsed().saturating_sub(last);
            if self.open.load(Ordering::Relaxed) == 0 && quiet >= timeout {
                return;
            }
            // Check again when this quiet spell would reach the timeout (or, with a request
            // open, a full timeout later).
            let wait = timeout.saturating_sub(quiet).max(Duration::from_millis(50));
            tokio::time::sleep(wait).await;
        }
    }
}

/// A request in flight on a connection; see [`Activity::open_request`].
#[derive(Debug)]
pub struct Open(Arc<Activity>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
        self.0.touch();
    }
}

pin_project! {
    /// A connection's stream, noting every byte that moves (see [`Activity`]).
    #[derive(Debug)]
    pub struct WatchedIo<I> {
        #[pin]
        inner: I,
        activity: Arc<Activity>,
    }
}

impl<I> WatchedIo<I> {
    /// Watches `inner` on behalf of `activity`.
    pub fn new(inner: I, activity: Arc<Activity>) -> Self {
        Self { inner, activity }
    }
}

impl<I: AsyncRead> AsyncRead for WatchedIo<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let r = this.inner.poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.activity.touch();
        }
        r
    }
}

impl<I: AsyncWrite> AsyncWrite for WatchedIo<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        let r = this.inner.poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            this.activity.touch();
        }
        r
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        let r = this.inner.poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            this.activity.touch();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }
}

pin_project! {
    /// A response body that keeps its request in flight (an [`Open`]) until it is done.
    pub struct Tracked<B> {
        #[pin]
        inner: B,
        open: Option<Open>,
    }
}

impl<B: Body> Tracked<B> {
    /// Holds `open` for as long as `inner` is being sent (an empty body lets go at once).
    pub fn new(inner: B, open: Open) -> Self {
        let open = (!inner.is_end_stream()).then_some(open);
        Self { inner, open }
    }
}

impl<B: Body<Data = Bytes>> Body for Tracked<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.project();
        let r = this.inner.poll_frame(cx);
        if matches!(r, Poll::Ready(None) | Poll::Ready(Some(Err(_)))) {
            this.open.take();
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Caps the open connections of a port.
#[derive(Debug)]
pub struct Gate {
    open: AtomicUsize,
    max: usize,
}

/// One admitted connection; dropping it lets another in.
#[derive(Debug)]
pub struct Ticket(Arc<Gate>);

impl Drop for Ticket {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Gate {
    /// A gate admitting at most `max` connections at once.
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            open: AtomicUsize::new(0),
            max: max.max(1),
        })
    }

    /// The cap.
    pub fn max(&self) -> usize {
        self.max
    }

    /// Admits a connection, or refuses it (a 503, then closed) and counts the refusal.
    pub fn admit(
        self: &Arc<Self>,
        stream: TcpStream,
        metrics: &ConnMetrics,
        port: &'static str,
    ) -> Option<(TcpStream, Ticket)> {
        let before = self.open.fetch_add(1, Ordering::Relaxed);
        if before < self.max {
            return Some((stream, Ticket(self.clone())));
        }
        self.open.fetch_sub(1, Ordering::Relaxed);
        metrics.refuse(port);
        refuse(&stream, self.max);
        None
    }
}

/// Best effort: tells an HTTP/1 client why its connection closes, without waiting for it.
fn refuse(stream: &TcpStream, max: usize) {
    let body = format!(
        "{{\"error\":{{\"message\":\"Tally has {max} connections open, its limit; retry shortly\",\"type\":\"tally_too_many_connections\",\"code\":\"tally_too_many_connections\"}}}}"
    );
    let resp = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.try_write(resp.as_bytes());
}

/// Lifts the soft limit on open files to the hard limit, so the connection cap (not `accept`
/// failing with "Too many open files") is what bounds connections. Returns the limit now in
/// force.
pub fn raise_fd_limit() -> io::Result<u64> {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let limit = getrlimit(Resource::Nofile);
    let (soft, hard) = (limit.current, limit.maximum);
    if let Some(hard) = hard {
        if soft != Some(hard) {
            setrlimit(
                Resource::Nofile,
                Rlimit {
                    current: Some(hard),
                    maximum: Some(hard),
                },
            )?;
            return Ok(hard);
        }
    }
    Ok(soft.or(hard).unwrap_or(u64::MAX))
}

/// The soft limit on open files now in force.
pub fn fd_limit() -> u64 {
    let l = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    l.current.or(l.maximum).unwrap_or(u64::MAX)
}

/// The number of connections a port may hold given `fd_limit`: `share` of the descriptors
/// left after a reserve for the store, the spool, logs and the other port. A client
/// connection holds one descriptor; an upstream one is held only by a request in flight (and
/// the pool keeps few idle), so the rest of the limit is for those. Halving the limit for the
/// worst case, every connection busy at once, refused idle keep-alive clients long before
/// descriptors ran short.
pub fn connections_for(fd_limit: u64, share: f64) -> usize {
    const RESERVE: u64 = 256;
    let usable = fd_limit.saturating_sub(RESERVE) as f64 * share;
    (usable as usize).max(16)
}

/// Serves `service` on `listener` until `shutdown`, with the port's [`Limits`]: idle and
/// half-sent connections are dropped, a connection past the cap is refused, and at shutdown
/// in-flight requests get `grace` to finish before the rest are cut. Returns when every
/// connection has ended.
pub async fn serve<S, B>(
    listener: TcpListener,
    service: S,
    limits: Limits,
    grace: Duration,
    port: &'static str,
    metrics: ConnMetrics,
    shutdown: impl Future<Output = ()>,
) where
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true);
    let gate = Gate::new(limits.max_connections);
    let graceful = GracefulShutdown::new();
    let mut connections = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        while connections.try_join_next().is_some() {}
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(port, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Some((stream, ticket)) = gate.admit(stream, &metrics, port) else {
            continue;
        };
        let activity = Activity::new();
        let io = TokioIo::new(WatchedIo::new(stream, activity.clone()));
        let (svc, watch) = (service.clone(), activity.clone());
        let svc = hyper::service::service_fn(move |req| {
            let open = watch.open_request();
            let fut = svc.call(req);
            async move { fut.await.map(|r| r.map(|b| Tracked::new(b, open))) }
        });
        let conn = graceful.watch(builder.serve_connection(io, svc).into_owned());
        let metrics = metrics.clone();
        connections.spawn(async move {
            let _ticket = ticket;
            tokio::select! {
                r = conn => if let Err(e) = r {
                    tracing::debug!(port, %peer, error = %e, "connection ended with an error");
                },
                () = activity.idle(&limits) => metrics.idle(port),
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            port,
            grace_ms = grace.as_millis() as u64,
            "connections outlived the shutdown grace period; closing them"
        );
        connections.abort_all();
    }
    while connections.join_next().await.is_some() {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            header_read_timeout: Duration::from_millis(200),
            keep_alive_timeout: Duration::from_millis(400),
            max_connections: 2,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_connection_is_idle_after_the_header_timeout() {
        let a = Activity::new();
        let started = tokio::time::Instant::now();
        a.idle(&limits()).await;
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(200), "{waited:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn an_open_request_is_never_idle() {
        let a = Activity::new();
        let open = a.open_request();
        let idle = tokio::time::timeout(Duration::from_secs(30), a.idle(&limits())).await;
        assert!(idle.is_err(), "a request in flight keeps its connection");
        drop(open);
        let started = tokio::time::Instant::now();
        a.idle(&limits()).await;
        assert!(
            started.elapsed() >= Duration::from_millis(350),
            "keep-alive timeout after a request"
        );
    }

    #[tokio::test]
    async fn the_gate_refuses_past_its_cap_and_counts() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let gate = Gate::new(1);
        let metrics = ConnMetrics::default();
        let _c1 = TcpStream::connect(addr).await.expect("c1");
        let (s1, _) = listener.accept().await.expect("accept");
        let first = gate.admit(s1, &metrics, "proxy");
        assert!(first.is_some());
        let mut c2 = TcpStream::connect(addr).await.expect("c2");
        let (s2, _) = listener.accept().await.expect("accept");
        assert!(gate.admit(s2, &metrics, "proxy").is_none());
        let mut got = String::new();
        tokio::io::AsyncReadExt::read_to_string(&mut c2, &mut got)
            .await
            .expect("read");
        assert!(got.starts_with("HTTP/1.1 503"), "{got}");
        assert_eq!(
            metrics
                .refused
                .get_or_create(&PortLabels { port: "proxy" })
                .get(),
            1
        );
        drop(first);
        let _c3 = TcpStream::connect(addr).await.expect("c3");
        let (s3, _) = listener.accept().await.expect("accept");
        assert!(gate.admit(s3, &metrics, "proxy").is_some(), "room again");
    }

    #[test]
    fn connection_budget_from_the_descriptor_limit() {
        assert_eq!(connections_for(1024, 1.0), 768);
        assert_eq!(connections_for(20_000, 2.0 / 3.0), 13_162);
        assert_eq!(connections_for(100, 1.0), 16);
    }
}
