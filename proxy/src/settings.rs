//! The `[proxy]` config table.

use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;

/// Where the proxy listens when unset.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8787";
/// Bytes of each body kept for parsing and logging when unset (1 MiB).
pub const DEFAULT_MAX_BODY_BYTES: usize = 1024 * 1024;
/// TCP+TLS connect timeout when unset.
pub const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 10_000;
/// Time from sending a request to the upstream's response head when unset. Long, because
/// non-streamed reasoning requests can think for minutes before answering.
pub const DEFAULT_UPSTREAM_TIMEOUT_MS: u64 = 600_000;
/// Longest silence inside a response body before the stream is aborted when unset.
pub const DEFAULT_IDLE_TIMEOUT_MS: u64 = 300_000;
/// Time the client has to send its request body when unset.
pub const DEFAULT_REQUEST_BODY_TIMEOUT_MS: u64 = 60_000;
/// Time in-flight requests get to finish at shutdown when unset.
pub const DEFAULT_SHUTDOWN_GRACE_MS: u64 = 30_000;
/// Time a client has to send its request headers when unset (slowloris guard). It also bounds
/// a connection that sends nothing, or half an HTTP/2 preface.
pub const DEFAULT_HEADER_READ_TIMEOUT_MS: u64 = 30_000;
/// How long a kept-alive connection may sit idle between requests when unset.
pub const DEFAULT_KEEP_ALIVE_TIMEOUT_MS: u64 = 60_000;

/// `[proxy]` as written in the config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProxyConfig {
    /// Address to listen on; `127.0.0.1:8787` when unset.
    pub listen: String,
    /// Bytes of each request and response body captured for parsing and logging; beyond it the
    /// logged body is truncated and flagged, and the passthrough is unaffected. 1 MiB when unset.
    pub max_body_bytes: usize,
    /// Upstream connect timeout (TCP and TLS), milliseconds.
    pub connect_timeout_ms: u64,
    /// Upstream time to response headers, milliseconds.
    pub upstream_timeout_ms: u64,
    /// Longest gap between response body chunks before the stream is aborted, milliseconds.
    pub idle_timeout_ms: u64,
    /// Time a client has to send its request body, milliseconds.
    pub request_body_timeout_ms: u64,
    /// Time a client has to send its request headers, milliseconds. A connection that has
    /// sent no complete request this long after connecting is closed.
    pub header_read_timeout_ms: u64,
    /// A connection with nothing in flight that has moved no byte this long since its last
    /// request is closed, milliseconds.
    pub keep_alive_timeout_ms: u64,
    /// Most client connections open at once; past it, a new connection gets a 503 and is
    /// closed (counted in `tally_connections_refused_total`). 0 (default): what the open-file
    /// limit allows, two descriptors per connection.
    pub max_connections: usize,
    /// Time in-flight requests get to finish on shutdown, milliseconds.
    pub shutdown_grace_ms: u64,
    /// Load the token-estimate tokenizers at start instead of at the first estimate; false
    /// when unset. They take about 65 MiB and 0.3 s to load, and are needed only for
    /// responses without usage.
    pub preload_tokenizers: bool,
    /// Event-loop threads serving proxy connections. Each thread owns the connections it
    /// accepts and its own upstream connection pool, so a request never crosses threads.
    /// One per core when unset (or 0).
    pub threads: usize,
    /// Also store a translated request's bodies as the provider saw them
    /// (`upstream_request_body`, `upstream_response_body`), next to what the client sent and
    /// got. Off when unset: it doubles what a translated request stores.
    pub keep_translated_bodies: bool,
    /// Answer with a `Server-Timing` header (`tally;dur=…, upstream;dur=…`, milliseconds to
    /// the response head), which browsers' developer tools and load tools read. Off when unset.
    pub server_timing: bool,
    /// Model names the price table does not know that keep a label of their own on
    /// `/metrics`; past it they count as `other`. 100 when unset.
    pub metrics_max_models: usize,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        Self {
            listen: DEFAULT_LISTEN.to_owned(),
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            connect_timeout_ms: DEFAULT_CONNECT_TIMEOUT_MS,
            upstream_timeout_ms: DEFAULT_UPSTREAM_TIMEOUT_MS,
            idle_timeout_ms: DEFAULT_IDLE_TIMEOUT_MS,
            request_body_timeout_ms: DEFAULT_REQUEST_BODY_TIMEOUT_MS,
            header_read_timeout_ms: DEFAULT_HEADER_READ_TIMEOUT_MS,
            keep_alive_timeout_ms: DEFAULT_KEEP_ALIVE_TIMEOUT_MS,
            max_connections: 0,
            shutdown_grace_ms: DEFAULT_SHUTDOWN_GRACE_MS,
            preload_tokenizers: false,
            threads: 0,
            keep_translated_bodies: false,
            server_timing: false,
            metrics_max_models: crate::metrics::usage::DEFAULT_MAX_MODELS,
        }
    }
}

/// A `[proxy]` value that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SettingsError {
    /// `listen` is not `host:port`.
    #[error("proxy.listen {0:?} is not an address like 127.0.0.1:8787")]
    Listen(String),
    /// A zero that would make every request fail.
    #[error("proxy.{0} must be greater than zero")]
    Zero(&'static str),
}

/// Validated proxy settings, in the units the code uses.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Listen address.
    pub listen: SocketAddr,
    /// Capture limit per body.
    pub max_body_bytes: usize,
    /// Upstream connect timeout.
    pub connect_timeout: Duration,
    /// Upstream time to response head.
    pub upstream_timeout: Duration,
    /// Longest silence inside a response body.
    pub idle_timeout: Duration,
    /// Time to receive the request body.
    pub request_body_timeout: Duration,
    /// Time to receive the request headers.
    pub header_read_timeout: Duration,
    /// Idle time allowed between requests on a connection.
    pub keep_alive_timeout: Duration,
    /// Most client connections; 0 means what the open-file limit allows, decided at serve.
    pub max_connections: usize,
    /// Shutdown grace period.
    pub shutdown_grace: Duration,
    /// Load the tokenizers at start.
    pub preload_tokenizers: bool,
    /// Event-loop threads, at least 1.
    pub threads: usize,
    /// Store translated requests' upstream bodies too.
    pub keep_translated_bodies: bool,
    /// Answer with `Server-Timing`.
    pub server_timing: bool,
    /// Unpriced model names with a label of their own.
    pub metrics_max_models: usize,
}

impl ProxyConfig {
    /// Checks the values and converts them to [`Settings`].
    pub fn validate(&self) -> Result<Settings, SettingsError> {
        let listen = self
            .listen
            .parse()
            .map_err(|_| SettingsError::Listen(self.listen.clone()))?;
        let ms = |name: &'static str, v: u64| {
            if v == 0 {
                Err(SettingsError::Zero(name))
            } else {
                Ok(Duration::from_millis(v))
            }
        };
        if self.max_body_bytes == 0 {
            return Err(SettingsError::Zero("max_body_bytes"));
        }
        Ok(Settings {
            listen,
            max_body_bytes: self.max_body_bytes,
            connect_timeout: ms("connect_timeout_ms", self.connect_timeout_ms)?,
            upstream_timeout: ms("upstream_timeout_ms", self.upstream_timeout_ms)?,
            idle_timeout: ms("idle_timeout_ms", self.idle_timeout_ms)?,
            request_body_timeout: ms("request_body_timeout_ms", self.request_body_timeout_ms)?,
            header_read_timeout: ms("header_read_timeout_ms", self.header_read_timeout_ms)?,
            keep_alive_timeout: ms("keep_alive_timeout_ms", self.keep_alive_timeout_ms)?,
            max_connections: self.max_connections,
            shutdown_grace: Duration::from_millis(self.shutdown_grace_ms),
            preload_tokenizers: self.preload_tokenizers,
            threads: match self.threads {
                0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
                n => n,
            },
            keep_translated_bodies: self.keep_translated_bodies,
            server_timing: self.server_timing,
            metrics_max_models: self.metrics_max_models,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_bad_values_are_named() {
        let s = ProxyConfig::default().validate().expect("defaults");
        assert_eq!(s.listen.to_string(), DEFAULT_LISTEN);
        let bad = ProxyConfig {
            listen: "nowhere".into(),
            ..ProxyConfig::default()
        };
        assert_eq!(
            bad.validate().expect_err("listen"),
            SettingsError::Listen("nowhere".into())
        );
        let zero = ProxyConfig {
            idle_timeout_ms: 0,
            ..ProxyConfig::default()
        };
        assert_eq!(
            zero.validate().expect_err("zero"),
            SettingsError::Zero("idle_timeout_ms")
        );
    }
}
