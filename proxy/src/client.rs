//! The pooled upstream client: HTTP/1.1 and HTTP/2 (negotiated by ALPN) over rustls with the
//! Mozilla root store, plain HTTP for local upstreams such as Ollama.

use std::sync::Arc;
use std::time::Duration;

use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::body::ResponseBody;

/// The client type the proxy uses.
pub type UpstreamClient = Client<Connector, ResponseBody>;

/// TCP + TLS connector, built once and shared (its TLS config is immutable).
pub type Connector = HttpsConnector<HttpConnector>;

/// Idle pooled connections are closed after this long.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// Idle connections each event loop keeps per upstream host. A burst of N concurrent requests
/// opens N upstream connections; unbounded, all N stay pooled (with their buffers, tens of KiB
/// each) until the idle timeout: 2,000 concurrent requests left ~130 MiB of RSS behind
/// (BENCHMARKS.md, "Memory after a burst"). Past this many, a finished connection is closed
/// instead of pooled.
const POOL_MAX_IDLE_PER_HOST: usize = 64;

/// Builds the connector. Fails only if the TLS provider cannot be set up.
pub fn connector(connect_timeout: Duration) -> Result<Connector, rustls::Error> {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(connect_timeout));
    http.set_keepalive(Some(Duration::from_secs(60)));
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_provider_and_webpki_roots(Arc::new(rustls::crypto::ring::default_provider()))?
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);
    Ok(https)
}

/// A client with a pool of its own. Each event loop builds one: a pooled connection's task runs
/// on the runtime that opened it, so sharing a pool across event loops would send requests
/// across threads.
pub fn build(connector: Connector) -> UpstreamClient {
    Client::builder(TokioExecutor::new())
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        .pool_max_idle_per_host(POOL_MAX_IDLE_PER_HOST)
        .build(connector)
}
