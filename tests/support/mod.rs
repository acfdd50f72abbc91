//! Fixtures the suite starts itself: the fake upstream and an in-process Tally on free ports
//! with its own SQLite file.

pub mod bin;
pub mod clickhouse;
pub mod fake_admin;
pub mod fake_bedrock;
pub mod fake_google_auth;
pub mod fake_upstream;
pub mod redis;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use tally::{Config, Server};
use tally_proxy::{ProviderConfig, StreamUsage};
use tokio::task::JoinHandle;

pub use fake_upstream::FakeUpstream;

pub struct TestTally {
    pub proxy: SocketAddr,
    pub dashboard: SocketAddr,
    pub db: PathBuf,
    pub dir: tempfile::TempDir,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

/// A config pointing the built-in `openai`, `anthropic` and `google` providers, and a
/// passthrough OpenAI-compatible `compat` provider, at `upstream`.
pub fn test_config(upstream: &str, db: PathBuf) -> Config {
    let mut c = Config::default();
    c.proxy.listen = "127.0.0.1:0".into();
    c.dashboard.listen = "127.0.0.1:0".into();
    c.store.spool_dir = db.with_file_name("spool");
    c.store.path = db;
    c.ingest.flush_interval_ms = Some(20);
    for name in ["openai", "anthropic", "google"] {
        c.providers.insert(
            name.into(),
            ProviderConfig {
                base_url: Some(upstream.to_owned()),
                ..Default::default()
            },
        );
    }
    c.providers.insert(
        "compat".into(),
        ProviderConfig {
            base_url: Some(upstream.to_owned()),
            stream_usage: Some(StreamUsage::Passthrough),
            ..Default::default()
        },
    );
    c
}

impl TestTally {
    pub async fn start(upstream: &str) -> Self {
        Self::start_with(upstream, |_| {}).await
    }

    pub async fn start_with(upstream: &str, customize: impl FnOnce(&mut Config)) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = dir.path().join("tally.db");
        let mut config = test_config(upstream, db.clone());
        customize(&mut config);
        let server = Server::bind(config.validate().expect("valid config"))
            .await
            .expect("bind");
        let proxy = server.proxy_addr().expect("proxy addr");
        let dashboard = server.dashboard_addr().expect("dashboard addr");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(server.run(async move {
            let _ = stopped.await;
        }));
        let t = Self {
            proxy,
            dashboard,
            db,
            dir,
            stop: Some(stop),
            task: Some(task),
        };
        // Ready once the dashboard answers (the store is migrated before it listens).
        wait_healthy(t.dashboard.port(), Duration::from_secs(10)).await;
        t
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.proxy, path)
    }

    pub fn dashboard_url(&self, path: &str) -> String {
        format!("http://{}{}", self.dashboard, path)
    }

    /// Stops Tally the way SIGTERM does and waits until every record is written. The store
    /// file stays until the returned directory is dropped.
    pub async fn stop(mut self) -> tempfile::TempDir {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            t.await.expect("join").expect("tally ran cleanly");
        }
        let placeholder = tempfile::tempdir().expect("tempdir");
        std::mem::replace(&mut self.dir, placeholder)
    }

    /// Rows in the store right now.
    pub fn count(&self) -> i64 {
        let conn = rusqlite::Connection::open(&self.db).expect("open db");
        conn.query_row("SELECT count(*) FROM requests", [], |r| r.get(0))
            .expect("count")
    }

    /// Waits (bounded) until the store has at least `n` rows.
    pub async fn wait_for_rows(&self, n: i64) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let c = self.count();
            if c >= n {
                return;
            }
            assert!(Instant::now() < deadline, "only {c} of {n} records arrived");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The record of `request_id` from the JSON API, waiting (bounded) for it to be written.
    pub async fn record(&self, request_id: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (status, _, body) =
                get(&self.dashboard_url(&format!("/api/requests/{request_id}"))).await;
            if status == StatusCode::OK {
                return serde_json::from_slice(&body).expect("record JSON");
            }
            assert!(
                Instant::now() < deadline,
                "record {request_id} never arrived ({status})"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A metric's value from `/metrics` (sum over label sets that contain `labels`).
    pub async fn metric(&self, name: &str, labels: &str) -> f64 {
        let (_, _, body) = get(&self.dashboard_url("/metrics")).await;
        let text = String::from_utf8_lossy(&body).into_owned();
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .filter(|l| l.split([' ', '{']).next() == Some(name) && l.contains(labels))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
}

/// The `tally` binary, for tests that run it as a process.
pub const TALLY_BIN: &str = env!("CARGO_BIN_EXE_tally");

/// A loopback port nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// Waits until the dashboard on `port` answers `/healthz` (the store is migrated before it
/// listens); fails the test after `within`.
pub async fn wait_healthy(port: u16, within: Duration) {
    let deadline = Instant::now() + within;
    while get(&format!("http://127.0.0.1:{port}/healthz")).await.0 != StatusCode::OK {
        assert!(Instant::now() < deadline, "tally did not become healthy");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub type Response = (StatusCode, HeaderMap, Bytes);

fn client() -> Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

pub async fn send(
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Response {
    let mut req = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(body.into())).expect("request");
    let resp = client().request(req).await.expect("response head");
    let (parts, body) = resp.into_parts();
    let bytes = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    (parts.status, parts.headers, bytes)
}

/// Like `send`, but a body that fails mid-way is returned as an error instead of empty bytes.
pub async fn send_checked(
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Result<Response, String> {
    let mut req = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(body.into())).expect("request");
    let resp = client().request(req).await.map_err(|e| e.to_string())?;
    let (parts, body) = resp.into_parts();
    let bytes = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
    Ok((parts.status, parts.headers, bytes))
}

pub async fn post_json(url: &str, headers: &[(&str, &str)], body: &Value) -> Response {
    let mut h = vec![("content-type", "application/json")];
    h.extend_from_slice(headers);
    send(Method::POST, url, &h, body.to_string()).await
}

pub async fn get(url: &str) -> Response {
    match send_checked(Method::GET, url, &[], Bytes::new()).await {
        Ok(r) => r,
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            HeaderMap::new(),
            Bytes::new(),
        ),
    }
}

pub fn request_id(headers: &HeaderMap) -> String {
    headers
        .get("tally-request-id")
        .expect("Tally-Request-Id header")
        .to_str()
        .expect("ascii")
        .to_owned()
}

/// Runs `tests/sdk/<script>` with the project's Python (a real provider SDK) and `args`, and
/// returns the one JSON object the script prints.
pub async fn run_sdk_script(script: &str, args: &[&str]) -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/sdk")
        .join(script);
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(clickhouse::python())
            .arg(path)
            .args(args)
            .output()
    })
    .await
    .expect("join")
    .expect("run python");
    assert!(
        output.status.success(),
        "{script} failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("script prints JSON")
}

/// Whether `needle` occurs in `haystack`.
pub fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

/// Every file under `dir`, subdirectories included.
pub fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).expect("read dir").flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// The files under `dir` (a store, its WAL, the spool) that hold `secret`.
pub fn files_holding(dir: &Path, secret: &str) -> Vec<PathBuf> {
    walk(dir)
        .into_iter()
        .filter(|f| contains(&std::fs::read(f).expect("read"), secret))
        .collect()
}
