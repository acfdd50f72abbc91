//! Tally's proxy: a hyper server that forwards LLM API calls to their providers byte for byte
//! and leaves one [`tally_ingest::Record`] per request behind.
//!
//! The life of one request is a list of named phases (`phases/mod.rs`): route the path to a
//! [`Provider`] or router, read the tagging headers ([`headers::parse`]), read a bounded head of
//! the request body, pick the destination, authenticate, enforce budgets, admit rate limits,
//! look up the cache, send, respond. Each may refuse with one error type, recorded at one exit.
//! What a provider API looks like (where the model is, how usage is read, how errors are
//! shaped) is its wire format's module in [`formats`]; optional stages live in [`stages`].
//! The upstream's response body goes through a [`body::TeeBody`], which passes every frame
//! through unchanged and shows it to an `Exchange`: it keeps a bounded copy, follows event
//! streams with a [`formats::StreamObserver`], and when the body ends (or the client leaves)
//! turns all that into a record: usage from the provider (or an [`estimate`]), cost from the
//! [`PricingTable`], and a non-blocking send into the ingest channel.
//!
//! ```no_run
//! # async fn run(tx: tally_ingest::RecordSender) -> Result<(), Box<dyn std::error::Error>> {
//! use tally_proxy::{Proxy, ProxyConfig, Providers, PricingTable};
//! let settings = ProxyConfig::default().validate()?;
//! let providers = Providers::new(&Default::default())?;
//! let proxy = Proxy::new(settings, providers, PricingTable::builtin()?, tx)?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8787").await?;
//! proxy.serve(listener, std::future::pending()).await?;
//! # Ok(()) }
//! ```
#![deny(missing_docs)]

pub mod body;
mod capture;
mod client;
pub mod credentials;
pub mod estimate;
pub mod eventstream;
mod exchange;
pub mod formats;
pub mod headers;
mod metrics;
mod phases;
pub mod pricing;
pub mod providers;
mod secrets;
mod settings;
pub mod sse;
pub mod stages;
mod translation;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tally_ingest::RecordSender;
use tally_net::{Activity, Gate, Limits, Ticket, Tracked, WatchedIo};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use metrics::LoopLabels;
pub use metrics::ProxyMetrics;
pub use phases::authenticate::Auth;
pub use phases::REQUEST_ID_HEADER;
pub use pricing::{Price, PricingTable, UnitPrice};
pub use providers::{Provider, ProviderConfig, Providers, SecretSource, StreamUsage};
pub use settings::{ProxyConfig, Settings, SettingsError};
pub use stages::{StageError, Stages, StagesConfig};

/// State shared by every request.
pub(crate) struct Shared {
    pub(crate) settings: Settings,
    pub(crate) providers: Providers,
    pub(crate) pricing: PricingTable,
    pub(crate) sender: RecordSender,
    pub(crate) metrics: ProxyMetrics,
    /// Shared by every event loop's client; each loop has its own pool.
    pub(crate) connector: client::Connector,
    /// Token estimates running on blocking threads; each will still send a record.
    pub(crate) pending_estimates: AtomicUsize,
    pub(crate) stages: Stages,
    /// Responses-API background responses created and not yet seen finished: the first
    /// retrieval that sees one finished is what its usage is billed on.
    pub(crate) background: moka::sync::Cache<String, ()>,
}

/// Longest `serve` waits, after the last connection ended, for running token estimates to
/// send their records.
const ESTIMATE_DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Building the proxy failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProxyError {
    /// The TLS client could not be set up.
    #[error("TLS setup failed: {0}")]
    Tls(#[from] rustls::Error),
}

/// The proxy, ready to serve.
#[derive(Clone)]
pub struct Proxy {
    shared: Arc<Shared>,
}

impl Proxy {
    /// Builds the proxy and its upstream client.
    pub fn new(
        settings: Settings,
        providers: Providers,
        pricing: PricingTable,
        sender: RecordSender,
    ) -> Result<Self, ProxyError> {
        Self::with_stages(settings, providers, pricing, sender, Stages::default())
    }

    /// As [`Proxy::new`], with optional stages switched on.
    pub fn with_stages(
        settings: Settings,
        providers: Providers,
        pricing: PricingTable,
        sender: RecordSender,
        stages: Stages,
    ) -> Result<Self, ProxyError> {
        let connector = client::connector(settings.connect_timeout)?;
        // Estimates run off the request path, so loading the tokenizers at the first one
        // delays only that record (about 0.3 s); loading them here costs ~65 MiB of idle RSS
        // for deployments whose providers always report usage.
        if settings.preload_tokenizers {
            if let Ok(h) = tokio::runtime::Handle::try_current() {
                h.spawn_blocking(estimate::warm_up);
            }
        }
        let mut metrics = ProxyMetrics::default();
        metrics.usage.set_max_models(settings.metrics_max_models);
        if let Some(limiter) = &stages.rate_limits {
            metrics.rate_limit_evictions = limiter.evictions.clone();
        }
        Ok(Self {
            shared: Arc::new(Shared {
                settings,
                providers,
                pricing,
                sender,
                metrics,
                connector,
                pending_estimates: AtomicUsize::new(0),
                background: moka::sync::Cache::builder()
                    .max_capacity(100_000)
                    .time_to_live(Duration::from_secs(24 * 3600))
                    .build(),
                stages,
            }),
        })
    }

    /// Adds the proxy's metrics to `registry`.
    pub fn register_metrics(&self, registry: &mut Registry) {
        self.shared.metrics.register(registry);
        if let Some(g) = &self.shared.stages.guardrails {
            g.register(registry);
        }
        if let Some(t) = &self.shared.stages.tracing {
            t.register(registry);
        }
    }

    /// The proxy's metrics.
    pub fn metrics(&self) -> &ProxyMetrics {
        &self.shared.metrics
    }

    /// Serves connections from `listener` until `shutdown` resolves, then stops accepting, gives
    /// in-flight requests the configured grace period, and cancels what is left (each cancelled
    /// request is still recorded). Returns when every connection has ended and every record is
    /// on its way.
    ///
    /// Connections are served by `proxy.threads` event loops, each a single-threaded runtime on
    /// its own OS thread with its own upstream pool. A connection, its requests and their
    /// upstream connections stay on the thread that accepted it, so forwarding a request
    /// never wakes another thread: on a multi-threaded runtime, the hand-offs between the
    /// client's and the upstream's connection tasks cost two futex calls and a context switch
    /// per request, which measured as most of Tally's added latency (BENCHMARKS.md, "Load").
    /// Every loop accepts from the same socket, and whichever wakes first takes the connection;
    /// the loop already awake nearly always wins, so a loop that has more open connections
    /// than another hands each new one to the emptiest (see [`Loops`]).
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> std::io::Result<()> {
        let listener = listener.into_std()?;
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        // Stops the loops already started if a later one cannot start.
        let stop_all = StopOnDrop(Some(stop_tx));
        let threads = self.shared.settings.threads;
        let mut finished = Vec::with_capacity(threads);
        let (loops, handoffs) = Loops::new(threads, &self.shared.metrics);
        let max_connections = match self.shared.settings.max_connections {
            0 => tally_net::connections_for(tally_net::fd_limit(), 2.0 / 3.0),
            n => n,
        };
        tracing::info!(max_connections, "proxy connection cap");
        let gate = Gate::new(max_connections);
        for (i, handoff) in handoffs.into_iter().enumerate() {
            let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
            let (done_tx, done_rx) = tokio::sync::oneshot::channel();
            let (shared, stop, listener) =
                (self.shared.clone(), stop_rx.clone(), listener.try_clone()?);
            let me = LoopSeat {
                index: i,
                loops: loops.clone(),
                handoff,
                gate: gate.clone(),
            };
            std::thread::Builder::new()
                .name(format!("tally-proxy-{i}"))
                .spawn(move || {
                    event_loop(shared, listener, me, stop, ready_tx);
                    let _ = done_tx.send(());
                })?;
            ready_rx
                .await
                .map_err(|_| std::io::Error::other("a proxy event loop died while starting"))??;
            finished.push(done_rx);
        }
        drop(listener);
        shutdown.await;
        drop(stop_all);
        for done in finished {
            if done.await.is_err() {
                tracing::error!("a proxy event loop panicked");
            }
        }
        // Each loop kept its runtime until the token estimates had sent their records.
        Ok(())
    }
}

/// Sends the stop signal when dropped.
struct StopOnDrop(Option<tokio::sync::watch::Sender<bool>>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(true);
        }
    }
}

/// A connection accepted (and admitted) by one loop for another to serve.
type Handoff = (std::net::TcpStream, SocketAddr, Ticket);

/// The event loops' open-connection counts, and the queue each takes handed-over connections
/// from. A connection's count is raised by the loop that picks its server and lowered when it
/// closes, so two accepts in a row see each other's choice.
struct Loops {
    open: Vec<Gauge>,
    queues: Vec<mpsc::UnboundedSender<Handoff>>,
}

impl Loops {
    fn new(n: usize, metrics: &ProxyMetrics) -> (Arc<Self>, Vec<mpsc::UnboundedReceiver<Handoff>>) {
        let (queues, handoffs) = (0..n).map(|_| mpsc::unbounded_channel()).unzip();
        let open = (0..n)
            .map(|i| {
                metrics
                    .connections
                    .get_or_create(&LoopLabels {
                        event_loop: i as u32,
                    })
                    .clone()
            })
            .collect();
        (Arc::new(Self { open, queues }), handoffs)
    }

    /// The loop that should serve a connection `me` accepted: `me` unless another has fewer
    /// open connections. Counts it as open there.
    fn assign(&self, me: usize) -> usize {
        let mut best = me;
        for (i, g) in self.open.iter().enumerate() {
            if g.get() < self.open[best].get() {
                best = i;
            }
        }
        self.open[best].inc();
        best
    }
}

/// A connection to serve, with its place under the connection cap.
type Accepted = (TcpStream, SocketAddr, Ticket);

/// One loop's place among the others.
struct LoopSeat {
    index: usize,
    loops: Arc<Loops>,
    handoff: mpsc::UnboundedReceiver<Handoff>,
    /// The connection cap, shared by every loop.
    gate: Arc<Gate>,
}

impl LoopSeat {
    fn gate_max(&self) -> usize {
        self.gate.max()
    }

    /// Decides which loop serves a connection this one accepted: returns it if this one does,
    /// or hands it over and returns `None`.
    fn place(&self, stream: TcpStream, peer: SocketAddr, ticket: Ticket) -> Option<Accepted> {
        let (me, loops) = (self.index, &self.loops);
        let to = loops.assign(me);
        if to == me {
            return Some((stream, peer, ticket));
        }
        // `into_std` takes it out of this loop's driver; the other loop registers it.
        let handed = stream
            .into_std()
            .map_err(|e| tracing::warn!(%peer, error = %e, "could not hand a connection over"))
            .ok()
            .map(|s| loops.queues[to].send((s, peer, ticket)));
        match handed {
            Some(Ok(())) => None,
            // That loop has stopped already: serve it here.
            Some(Err(mpsc::error::SendError((s, peer, ticket)))) => {
                loops.open[to].dec();
                match TcpStream::from_std(s) {
                    Ok(s) => {
                        loops.open[me].inc();
                        Some((s, peer, ticket))
                    }
                    Err(_) => None,
                }
            }
            None => {
                loops.open[to].dec();
                None
            }
        }
    }
}

/// Lowers a loop's open-connection count when its connection ends.
struct OpenConnection(Gauge);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// One event loop: a current-thread runtime that accepts and serves connections until `stop`,
/// then drains them. Reports on `ready` once it accepts (or why it cannot).
fn event_loop(
    shared: Arc<Shared>,
    listener: std::net::TcpListener,
    seat: LoopSeat,
    stop: tokio::sync::watch::Receiver<bool>,
    ready: tokio::sync::oneshot::Sender<std::io::Result<()>>,
) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let drain = shared.clone();
    rt.block_on(async move {
        let listener = match TcpListener::from_std(listener) {
            Ok(l) => l,
            Err(e) => {
                let _ = ready.send(Err(e));
                return;
            }
        };
        let _ = ready.send(Ok(()));
        let client = Arc::new(client::build(shared.connector.clone()));
        let mut stop = stop;
        accept_loop(shared, client, listener, seat, async move {
            let _ = stop.wait_for(|s| *s).await;
        })
        .await;
    });
    // Token estimates run on this runtime's blocking threads, and a runtime that shuts down
    // drops the blocking tasks that have not started yet (tokio schedules `spawn_blocking` as
    // non-mandatory): their records would be lost. So the runtime lives until every estimate
    // has sent its record (those of the other loops too, which costs nothing: they all wait
    // together), within a bound.
    rt.block_on(async move {
        let started = tokio::time::Instant::now();
        while drain.pending_estimates.load(Ordering::Acquire) > 0 {
            if started.elapsed() > ESTIMATE_DRAIN_TIMEOUT {
                tracing::warn!(
                    pending = drain.pending_estimates.load(Ordering::Acquire),
                    "token estimates still running at shutdown; their records are left to the crash journal (lost when it is off)"
                );
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    rt.shutdown_timeout(Duration::from_secs(1));
}

/// Accepts and serves connections until `shutdown`, then drains them within the grace period.
async fn accept_loop(
    shared: Arc<Shared>,
    client: Arc<client::UpstreamClient>,
    listener: TcpListener,
    mut seat: LoopSeat,
    shutdown: impl Future<Output = ()>,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(shared.settings.header_read_timeout)
        .keep_alive(true);
    let limits = Limits {
        header_read_timeout: shared.settings.header_read_timeout,
        keep_alive_timeout: shared.settings.keep_alive_timeout,
        max_connections: seat.gate_max(),
    };
    let graceful = GracefulShutdown::new();
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        // Reap finished connection tasks so the set does not grow.
        while connections.try_join_next().is_some() {}
        let (stream, peer, ticket) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let Some((stream, ticket)) = seat.gate.admit(stream, &shared.metrics.conns, "proxy") else {
                        continue;
                    };
                    match seat.place(stream, peer, ticket) {
                        Some(here) => here,
                        None => continue,
                    }
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            Some((s, peer, ticket)) = seat.handoff.recv() => match TcpStream::from_std(s) {
                Ok(s) => (s, peer, ticket),
                Err(e) => {
                    seat.loops.open[seat.index].dec();
                    tracing::warn!(%peer, error = %e, "could not take a handed-over connection");
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let open = OpenConnection(seat.loops.open[seat.index].clone());
        let _ = stream.set_nodelay(true);
        let activity = Activity::new();
        let metrics = shared.metrics.conns.clone();
        let (shared, client, watch) = (shared.clone(), client.clone(), activity.clone());
        let svc = service_fn(move |req| {
            let (shared, client) = (shared.clone(), client.clone());
            let open = watch.open_request();
            async move {
                let resp = phases::handle(shared, client, peer.ip(), req).await;
                Ok::<_, Infallible>(resp.map(|b| Tracked::new(b, open)))
            }
        });
        let io = TokioIo::new(WatchedIo::new(stream, activity.clone()));
        let conn = builder.serve_connection(io, svc).into_owned();
        let conn = graceful.watch(conn);
        connections.spawn(async move {
            let (_open, _ticket) = (open, ticket);
            tokio::select! {
                r = conn => if let Err(e) = r {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                },
                // Nothing in flight and nothing moving: a client that never sent a request,
                // sent half an HTTP/2 preface, or kept an idle connection past the limit.
                () = activity.idle(&limits) => metrics.idle("proxy"),
            }
        });
    }
    drop(listener);
    // Connections handed over but not yet taken are closed unanswered, like those still in
    // the listener's backlog.
    seat.handoff.close();
    while let Some(_dropped) = seat.handoff.recv().await {
        seat.loops.open[seat.index].dec();
    }
    let in_flight = graceful.count();
    tracing::info!(
        in_flight,
        "proxy stopped accepting; draining in-flight requests"
    );
    let grace = shared.settings.shutdown_grace;
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            grace_ms = grace.as_millis() as u64,
            "in-flight requests outlived the shutdown grace period; cancelling them"
        );
        connections.abort_all();
    }
    while connections.join_next().await.is_some() {}
}
