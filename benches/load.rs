//! The open-loop load harness: the same requests at fixed arrival rates, straight to a fast fake
//! upstream, through nginx (a plain reverse proxy, buffering off), through Tally (the real
//! release binary, full logging to SQLite, or with `tally-clickhouse` to the suite's ClickHouse
//! engine) and through LiteLLM when it is installed. What a proxy adds is proxied minus direct
//! at each percentile; nginx's figure says what any proxy hop costs on this machine.
//!
//! ```sh
//! apt-get install -y nginx-light tcpdump   # optional; nginx rows and --capture need them
//! cargo bench --bench load -- --rates 500,2000,5000 --seconds 20 --rounds 3
//! cargo bench --bench load -- --targets direct,tally,tally-clickhouse
//! cargo bench --bench load -- --stream --capture   # per-event delay of a 50-event stream
//! cargo bench --bench load -- --pin ...            # the proxy on its own core
//! cargo bench --bench load -- --connections 64     # oha, 64 client connections (cargo install oha)
//! cargo bench --bench load -- --targets direct,nginx,tally,tally-unified   # + the unified API
//! # #23's table: nginx upstream, 8/64/256 connections interleaved, the journal's cost beside it
//! cargo bench --bench load -- --upstream nginx --connections 8,64,256 --rates 2000 \
//!     --targets direct,nginx,tally,tally-nojournal --rounds 3
//! cargo bench --bench load -- --upstream nginx --connections 64 --rates 0 ...   # closed loop
//! cargo bench --bench load -- --targets direct,nginx,tally,tally-otel   # + a span per request
//! ```
//!
//! `--upstream nginx` serves the static JSON answer from nginx instead of the in-process fake
//! (whole answers only), so no proxy under test shares a process with the upstream.
//! `--rates 0` is closed loop (oha only): each connection sends its next request when the last
//! one is answered, and `achieved/s` is the maximum throughput.
//!
//! `--capture` records loopback with tcpdump while streams run and pairs each event's packet
//! from the upstream with the proxy's packet carrying it on to the client: that difference is
//! the time the proxy held the event, free of the load generator's own scheduling.
//!
//! Open loop: request `i` is due at `start + i / rate` whatever happened to the others, and its
//! latency is measured from that due time (so a stall is charged to every request it delays,
//! correcting for coordinated omission). The pacer is a plain thread sleeping to each due time;
//! its wake-up lateness (tens of µs) is in every target's figures alike. The fake upstream runs
//! in this process on its own thread, so stream events carry their send time on the same clock
//! the client reads them with.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use http::{Request, Response};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::service::service_fn;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioIo};

#[path = "../tests/support/clickhouse.rs"]
#[allow(dead_code)]
mod clickhouse_fixture;

const JSON: &str = r#"{"id":"chatcmpl-load","object":"chat.completion","created":1700000000,"model":"gpt-4o-mini-2024-07-18","choices":[{"index":0,"message":{"role":"assistant","content":"Hello from the load upstream."},"finish_reason":"stop"}],"usage":{"prompt_tokens":21,"completion_tokens":7,"total_tokens":28}}"#;
const BODY: &str = r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Say hello"}]}"#;
const STREAM_BODY: &str = r#"{"model":"gpt-4o-mini","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"Say hello"}]}"#;
/// The `tally-unified` target: the same request on the unified API, served by Claude, so
/// Tally translates the request and rewrites the answer (#19).
const UNIFIED_BODY: &str =
    r#"{"model":"anthropic/claude-haiku-4-5","messages":[{"role":"user","content":"Say hello"}]}"#;
const UNIFIED_STREAM_BODY: &str = r#"{"model":"anthropic/claude-haiku-4-5","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"Say hello"}]}"#;
/// Claude's answer to it, as the Messages API writes one.
const ANTHROPIC_JSON: &str = r#"{"id":"msg_load","type":"message","role":"assistant","model":"claude-haiku-4-5-20251001","content":[{"type":"text","text":"Hello from the load upstream."}],"stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":21,"cache_creation_input_tokens":0,"cache_read_input_tokens":0,"output_tokens":7}}"#;

/// The path and body a target is sent.
fn request_of(target: &str, stream: bool) -> (&'static str, &'static str) {
    match (target, stream) {
        ("tally-unified", false) => ("/unified/v1/chat/completions", UNIFIED_BODY),
        ("tally-unified", true) => ("/unified/v1/chat/completions", UNIFIED_STREAM_BODY),
        (_, false) => ("/v1/chat/completions", BODY),
        (_, true) => ("/v1/chat/completions", STREAM_BODY),
    }
}

/// The clock every timestamp in this process is relative to.
fn epoch() -> Instant {
    static E: OnceLock<Instant> = OnceLock::new();
    *E.get_or_init(Instant::now)
}

fn now_ns() -> u64 {
    epoch().elapsed().as_nanos() as u64
}

#[derive(Clone)]
struct Opts {
    rates: Vec<u64>,
    seconds: u64,
    rounds: usize,
    stream: bool,
    events: usize,
    event_interval_ms: u64,
    upstream_latency_ms: u64,
    targets: Vec<String>,
    pin: bool,
    capture: bool,
    /// With `--connections N[,M…]`, oha drives the load instead: N client connections, each
    /// its own virtual client, as a gateway sees them (the built-in generator pools a few).
    /// Several counts run interleaved, in one run. 0 is the built-in generator.
    connections: Vec<usize>,
    /// `--upstream nginx`: nginx serves the JSON answer.
    nginx_upstream: bool,
}

fn opts() -> Opts {
    let args: Vec<String> = std::env::args().collect();
    let get = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1).cloned())
    };
    let num = |name: &str, d: u64| get(name).and_then(|v| v.parse().ok()).unwrap_or(d);
    Opts {
        rates: get("--rates")
            .map(|v| v.split(',').filter_map(|r| r.parse().ok()).collect())
            .unwrap_or_else(|| vec![500, 2000, 5000]),
        seconds: num("--seconds", 20),
        rounds: num("--rounds", 1) as usize,
        stream: args.iter().any(|a| a == "--stream"),
        events: num("--events", 50) as usize,
        event_interval_ms: num("--event-interval-ms", 10),
        upstream_latency_ms: num("--upstream-latency-ms", 0),
        targets: get("--targets")
            .map(|v| v.split(',').map(str::to_owned).collect())
            .unwrap_or_else(|| vec!["direct".into(), "nginx".into(), "tally".into()]),
        pin: args.iter().any(|a| a == "--pin"),
        capture: args.iter().any(|a| a == "--capture"),
        connections: get("--connections")
            .map(|v| v.split(',').filter_map(|c| c.parse().ok()).collect())
            .unwrap_or_else(|| vec![0]),
        nginx_upstream: get("--upstream").is_some_and(|u| u == "nginx"),
    }
}

/// With `--pin`, the proxy under test gets the last core to itself and this process (the load
/// generator and the fake upstream) the others, so the figures show what the proxy's own work
/// adds, not how it shares two cores with the generator. `None` without `--pin`.
static PROXY_CPU: OnceLock<Option<String>> = OnceLock::new();

fn pin(enabled: bool) {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let cpu = (enabled && cores > 1).then(|| {
        let status = Command::new("taskset")
            .args(["-a", "-p", "-c", &format!("0-{}", cores - 2)])
            .arg(std::process::id().to_string())
            .stdout(Stdio::null())
            .status();
        assert!(
            status.is_ok_and(|s| s.success()),
            "taskset failed (util-linux)"
        );
        (cores - 1).to_string()
    });
    assert!(!enabled || cpu.is_some(), "--pin needs at least two cores");
    PROXY_CPU.set(cpu).expect("pinned once");
}

/// The proxy's CPU, when `--pin` gave it one.
fn proxy_cpu() -> Option<&'static str> {
    PROXY_CPU.get()?.as_deref()
}

/// `bin`, on the proxy's core when pinned.
fn proxy_command(bin: &str) -> Command {
    match proxy_cpu() {
        Some(cpu) => {
            let mut c = Command::new("taskset");
            c.args(["-c", cpu, bin]);
            c
        }
        None => Command::new(bin),
    }
}

/// The fake provider: a fixed JSON answer after `latency`, or, for `"stream":true`, `events`
/// SSE events `interval` apart, each carrying its send time (`"t":<ns>`). On `/v1/messages`
/// it answers as Claude does (Tally drops the send times when it translates the events).
fn start_upstream(latency: Duration, events: usize, interval: Duration) -> SocketAddr {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("upstream runtime");
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            tx.send(listener.local_addr().expect("addr")).expect("send addr");
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let _ = stream.set_nodelay(true);
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<hyper::body::Incoming>| async move {
                        let claude = req.uri().path().ends_with("/v1/messages");
                        let body = req.into_body().collect().await.map(|b| b.to_bytes());
                        let stream = body
                            .as_ref()
                            .is_ok_and(|b| memchr::memmem::find(b, b"\"stream\":true").is_some());
                        if !latency.is_zero() {
                            tokio::time::sleep(latency).await;
                        }
                        if !stream {
                            let answer = if claude { ANTHROPIC_JSON } else { JSON };
                            let mut r = Response::new(
                                Full::new(Bytes::from_static(answer.as_bytes()))
                                    .map_err(|n| match n {})
                                    .boxed_unsync(),
                            );
                            r.headers_mut()
                                .insert("content-type", "application/json".parse().expect("ct"));
                            return Ok::<_, Infallible>(r);
                        }
                        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(8);
                        tokio::spawn(async move {
                            let mut tick = tokio::time::interval(interval);
                            if claude {
                                let start = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_load\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"claude-haiku-4-5-20251001\",\"content\":[],\"stop_reason\":null,\"usage\":{\"input_tokens\":21,\"output_tokens\":1}}}\n\nevent: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n";
                                let _ = tx.send(Ok(Frame::data(Bytes::from_static(start.as_bytes())))).await;
                            }
                            for i in 0..events {
                                tick.tick().await;
                                let ev = if claude {
                                    format!(
                                        "event: content_block_delta\ndata: {{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{{\"type\":\"text_delta\",\"text\":\" t{i}\"}},\"t\":{}}}\n\n",
                                        now_ns()
                                    )
                                } else {
                                    format!(
                                        "data: {{\"id\":\"c\",\"model\":\"gpt-4o-mini\",\"choices\":[{{\"delta\":{{\"content\":\" t{i}\"}}}}],\"t\":{}}}\n\n",
                                        now_ns()
                                    )
                                };
                                if tx.send(Ok(Frame::data(Bytes::from(ev)))).await.is_err() {
                                    return;
                                }
                            }
                            let tail = if claude {
                                "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\nevent: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":50}}\n\nevent: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"
                            } else {
                                "data: {\"id\":\"c\",\"model\":\"gpt-4o-mini\",\"choices\":[],\"usage\":{\"prompt_tokens\":21,\"completion_tokens\":50,\"total_tokens\":71}}\n\ndata: [DONE]\n\n"
                            };
                            let _ = tx.send(Ok(Frame::data(Bytes::from_static(tail.as_bytes())))).await;
                        });
                        let body = StreamBody::new(tokio_stream(rx)).boxed_unsync();
                        let mut r = Response::new(body);
                        r.headers_mut()
                            .insert("content-type", "text/event-stream".parse().expect("ct"));
                        Ok(r)
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
    });
    rx.recv().expect("upstream address")
}

/// An mpsc receiver as a `Stream`, without pulling in tokio-stream.
fn tokio_stream<T>(mut rx: tokio::sync::mpsc::Receiver<T>) -> impl futures_util::Stream<Item = T> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

fn wait_port(port: u16) {
    wait_port_for(port, Duration::from_secs(15));
}

fn wait_port_for(port: u16, within: Duration) {
    let deadline = Instant::now() + within;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A proxy under test, as a child process.
struct Proc {
    child: Child,
    port: u16,
    dashboard: Option<u16>,
    store: Option<Store>,
    /// A process the target needs beside it (`tally-otel-py`'s OTLP receiver), stopped with it.
    sidecar: Option<Child>,
    /// `tally-otel`'s collector (an nginx that discards), stopped with it.
    sink: Option<Box<Proc>>,
    _dir: tempfile::TempDir,
}

/// Where a Tally under test logs.
enum Store {
    Sqlite(std::path::PathBuf),
    /// The suite's ClickHouse engine (chDB behind its HTTP server), one per Tally.
    ClickHouse(Box<clickhouse_fixture::ClickHouse>),
}

impl Store {
    /// `[store]` for Tally's config.
    fn config(&self, dir: &std::path::Path) -> String {
        let spool = dir.join("spool");
        match self {
            Store::Sqlite(db) => {
                format!("[store]\nkind = \"sqlite\"\npath = {db:?}\nspool_dir = {spool:?}\n")
            }
            Store::ClickHouse(ch) => format!(
                "[store]\nkind = \"clickhouse\"\nurl = \"{}\"\ndatabase = \"{}\"\n\
                 compression = \"none\"\nspool_dir = {spool:?}\n",
                ch.url, ch.database
            ),
        }
    }

    /// Records in the store, after Tally has stopped.
    fn rows(&self) -> i64 {
        match self {
            Store::Sqlite(db) => rusqlite::Connection::open(db)
                .and_then(|c| c.query_row("SELECT count(*) FROM requests", [], |r| r.get(0)))
                .unwrap_or(-1),
            Store::ClickHouse(ch) => tokio::runtime::Runtime::new()
                .expect("runtime")
                .block_on(
                    ch.client()
                        .query(&format!("SELECT count() FROM {}.requests", ch.database))
                        .fetch_one::<u64>(),
                )
                .map_or(-1, |n| n as i64),
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // SIGTERM first: nginx's master stops its workers on it, while a SIGKILL leaves them
        // running (and loading the machine) after the round.
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = Command::new("kill")
                .arg(self.child.id().to_string())
                .stderr(Stdio::null())
                .status();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(mut c) = self.sidecar.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn start_tally(upstream: SocketAddr, clickhouse: bool, journal: bool) -> Proc {
    start_tally_with(upstream, clickhouse, journal, String::new(), None)
}

/// `tally-otel`: Tally exporting a span per request (OTLP over HTTP, every request sampled) to
/// a collector that takes each export and discards it (nginx answering 200: an empty body is
/// an empty `ExportTraceServiceResponse`), so the figures are Tally's cost and not a
/// collector's sharing the cores. `tally-otel-py` exports to the suite's receiver instead
/// (`tests/otel/receiver.py`, which decodes every span with opentelemetry-proto in Python).
fn start_tally_otel(upstream: SocketAddr) -> Proc {
    let (bin, dir, port) =
        nginx_setup().expect("nginx for tally-otel (apt-get install nginx-light)");
    let d = dir.path().display();
    let conf = format!(
        "worker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
         events {{ worker_connections 1024; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  client_max_body_size 64m;\n\
           server {{\n    listen 127.0.0.1:{port};\n    location / {{ return 200; }}\n  }}\n}}\n"
    );
    let sink = spawn_nginx(Command::new(bin), dir, port, &conf).expect("the OTLP sink");
    let otel = format!("[otel]\nendpoint = \"http://127.0.0.1:{port}\"\n");
    let mut p = start_tally_with(upstream, false, true, otel, None);
    p.sink = Some(Box::new(sink));
    p
}

fn start_tally_otel_py(upstream: SocketAddr) -> Proc {
    use std::io::BufRead;
    let mut child = Command::new(clickhouse_fixture::python())
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/otel/receiver.py"
        ))
        // The spans themselves are not kept.
        .arg("/dev/null")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the OTLP receiver (scripts/test.sh makes .venv)");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("receiver ready");
    let http = line.split_whitespace().nth(1).expect("port").to_owned();
    let otel = format!("[otel]\nendpoint = \"http://127.0.0.1:{http}\"\n");
    start_tally_with(upstream, false, true, otel, Some(child))
}

fn start_tally_with(
    upstream: SocketAddr,
    clickhouse: bool,
    journal: bool,
    extra: String,
    sidecar: Option<Child>,
) -> Proc {
    let dir = tempfile::tempdir().expect("tempdir");
    let (port, dash) = (free_port(), free_port());
    let store = if clickhouse {
        Store::ClickHouse(Box::new(clickhouse_fixture::ClickHouse::start()))
    } else {
        Store::Sqlite(dir.path().join("load.db"))
    };
    let config = format!(
        "[proxy]\nlisten = \"127.0.0.1:{port}\"\n[dashboard]\nlisten = \"127.0.0.1:{dash}\"\n\
         {}journal = {journal}\n[providers.openai]\nbase_url = \"http://{upstream}\"\n\
         [providers.anthropic]\nbase_url = \"http://{upstream}\"\n{extra}",
        store.config(dir.path()),
    );
    let cfg = dir.path().join("tally.toml");
    std::fs::write(&cfg, config).expect("config");
    // TALLY_BENCH_BIN runs another build (say, of an older commit) under the same harness.
    let bin =
        std::env::var("TALLY_BENCH_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_tally").into());
    let child = proxy_command(&bin)
        .arg("--config")
        .arg(&cfg)
        .env("TALLY_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start tally");
    wait_port(port);
    wait_port(dash);
    Proc {
        child,
        port,
        dashboard: Some(dash),
        store: Some(store),
        sidecar,
        sink: None,
        _dir: dir,
    }
}

/// nginx's binary, its directory and its port, when nginx is installed.
fn nginx_setup() -> Option<(&'static str, tempfile::TempDir, u16)> {
    let bin = ["nginx", "/usr/sbin/nginx"]
        .into_iter()
        .find(|b| Command::new(b).arg("-v").output().is_ok())?;
    Some((bin, tempfile::tempdir().expect("tempdir"), free_port()))
}

fn start_nginx(upstream: SocketAddr) -> Option<Proc> {
    let (bin, dir, port) = nginx_setup()?;
    let d = dir.path().display();
    // One worker per core it may use: `auto` counts the machine's cores, not its affinity.
    let workers = if proxy_cpu().is_some() { "1" } else { "auto" };
    let conf = format!(
        "worker_processes {workers};\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
         events {{ worker_connections 8192; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
           upstream up {{ server {upstream}; keepalive 256; }}\n\
           server {{\n    listen 127.0.0.1:{port};\n    location / {{\n      proxy_pass http://up;\n\
               proxy_http_version 1.1;\n      proxy_set_header Connection \"\";\n\
               proxy_buffering off;\n      proxy_request_buffering off;\n    }}\n  }}\n}}\n"
    );
    spawn_nginx(proxy_command(bin), dir, port, &conf)
}

/// Runs nginx in the foreground with `conf`, written into `dir`, and waits for `port`.
fn spawn_nginx(
    mut command: Command,
    dir: tempfile::TempDir,
    port: u16,
    conf: &str,
) -> Option<Proc> {
    let path = dir.path().join("nginx.conf");
    std::fs::write(&path, conf).expect("nginx conf");
    let child = command
        .arg("-c")
        .arg(&path)
        .args(["-g", "daemon off;"])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .ok()?;
    wait_port(port);
    Some(Proc {
        child,
        port,
        dashboard: None,
        store: None,
        sidecar: None,
        sink: None,
        _dir: dir,
    })
}

/// nginx answering every request with the load upstream's JSON completion (`--upstream
/// nginx`), as the issue's outside measurement did: a static answer from a process of its own.
fn start_nginx_upstream() -> Option<Proc> {
    let (bin, dir, port) = nginx_setup()?;
    let d = dir.path().display();
    // nginx's `return` takes the text in single quotes; the JSON has none.
    assert!(!JSON.contains('\''));
    let conf = format!(
        "worker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
         events {{ worker_connections 8192; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  keepalive_requests 1000000;\n\
           server {{\n    listen 127.0.0.1:{port};\n    location / {{\n      default_type application/json;\n\
               return 200 '{JSON}';\n    }}\n  }}\n}}\n"
    );
    spawn_nginx(Command::new(bin), dir, port, &conf)
}

/// LiteLLM's proxy (from PyPI: `pip install 'litellm[proxy]'`), found through
/// `TALLY_BENCH_LITELLM` or `PATH`, routing `gpt-4o-mini` to the fake upstream.
fn start_litellm(upstream: SocketAddr) -> Option<Proc> {
    let bin = std::env::var("TALLY_BENCH_LITELLM").unwrap_or_else(|_| "litellm".into());
    Command::new(&bin).arg("--version").output().ok()?;
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let cfg = dir.path().join("litellm.yaml");
    std::fs::write(
        &cfg,
        format!(
            "model_list:\n  - model_name: gpt-4o-mini\n    litellm_params:\n      model: openai/gpt-4o-mini\n      api_base: http://{upstream}/v1\n      api_key: sk-fake\nlitellm_settings:\n  telemetry: false\n"
        ),
    )
    .expect("litellm config");
    let child = proxy_command(&bin)
        .arg("--config")
        .arg(&cfg)
        .args(["--port", &port.to_string(), "--host", "127.0.0.1"])
        .env("LITELLM_LOCAL_MODEL_COST_MAP", "True")
        .env("LITELLM_LOG", "ERROR")
        // A loopback benchmark: no master key, as for the other targets.
        .env(
            "LITELLM_DANGEROUSLY_PERMIT_WEAK_OR_UNSET_MASTER_KEY",
            "true",
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    wait_port_for(port, Duration::from_secs(120));
    Some(Proc {
        child,
        port,
        dashboard: None,
        store: None,
        sidecar: None,
        sink: None,
        _dir: dir,
    })
}

/// RSS in KiB and CPU ticks (user + system) of a process and its children's threads.
fn proc_stats(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches(" kB")
        .trim()
        .parse()
        .ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some((rss, ticks))
}

/// nginx's workers are its children: sum them.
fn tree_stats(pid: u32) -> Option<(u64, u64)> {
    let (mut rss, mut ticks) = proc_stats(pid)?;
    if let Ok(children) = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")) {
        for c in children.split_whitespace().filter_map(|c| c.parse().ok()) {
            if let Some((r, t)) = proc_stats(c) {
                rss += r;
                ticks += t;
            }
        }
    }
    Some((rss, ticks))
}

#[derive(Default, Clone)]
struct Outcome {
    latency: Option<Histogram<u64>>,
    events: Option<Histogram<u64>>,
    /// Per event, from a packet capture: time from the upstream's packet carrying it to the
    /// proxy's packet carrying it to the client, in µs.
    forwarding: Option<Histogram<u64>>,
    /// Answered requests, warm-up included (so they match the records stored).
    ok: u64,
    errors: u64,
    /// The seconds `ok` was counted over.
    seconds: f64,
    cpu_pct: Option<f64>,
    rss_max_kib: Option<u64>,
}

/// Runs one open-loop round against `addr` at `rate` for `seconds` (after a 2 s warm-up that is
/// not measured), sampling `pid`'s CPU and memory.
/// `tcpdump` on loopback, recording both sides of the proxy (`--capture`, stream mode).
struct Capture {
    child: Child,
    file: std::path::PathBuf,
    upstream: u16,
    proxy: u16,
    _dir: tempfile::TempDir,
}

impl Capture {
    fn start(upstream: u16, proxy: u16) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("events.pcap");
        let mut child = Command::new("tcpdump")
            .args(["-i", "lo", "-s", "0", "-B", "65536", "-U"])
            .args(["--time-stamp-precision=nano", "-w"])
            .arg(&file)
            .arg(format!("tcp src port {upstream} or tcp src port {proxy}"))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("tcpdump (apt-get install tcpdump) for --capture");
        // It says "listening on lo" once the capture runs.
        let mut err = std::io::BufReader::new(child.stderr.take().expect("stderr"));
        let mut line = String::new();
        while std::io::BufRead::read_line(&mut err, &mut line).unwrap_or(0) > 0 {
            if line.contains("listening on") {
                break;
            }
            line.clear();
        }
        std::thread::spawn(move || std::io::copy(&mut err, &mut std::io::sink()));
        Self {
            child,
            file,
            upstream,
            proxy,
            _dir: dir,
        }
    }

    /// Stops the capture and pairs each event's two packets by its send stamp. Only events
    /// sent at or after `from_ns` count.
    fn finish(mut self, from_ns: u64) -> Histogram<u64> {
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
        let mut reader = pcap_file::pcap::PcapReader::new(
            std::fs::File::open(&self.file).expect("capture file"),
        )
        .expect("pcap");
        let mut arrived: std::collections::HashMap<u64, Duration> = Default::default();
        let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram");
        while let Some(Ok(packet)) = reader.next_packet() {
            let Ok(p) = etherparse::SlicedPacket::from_ethernet(&packet.data) else {
                continue;
            };
            let Some(etherparse::TransportSlice::Tcp(tcp)) = p.transport else {
                continue;
            };
            let from_upstream = tcp.source_port() == self.upstream;
            if !from_upstream && tcp.source_port() != self.proxy {
                continue;
            }
            for t in stamps(tcp.payload()).filter(|t| *t >= from_ns) {
                if from_upstream {
                    arrived.entry(t).or_insert(packet.timestamp);
                } else if let Some(a) = arrived.remove(&t) {
                    let us = packet.timestamp.saturating_sub(a).as_micros() as u64;
                    let _ = hist.record(us.max(1));
                }
            }
        }
        hist
    }
}

/// The `"t":<ns>` send stamps in a piece of an event stream.
fn stamps(data: &[u8]) -> impl Iterator<Item = u64> + '_ {
    memchr::memmem::find_iter(data, b"\"t\":").filter_map(move |i| {
        let digits = &data[i + 4..];
        let n = digits.iter().take_while(|b| b.is_ascii_digit()).count();
        std::str::from_utf8(&digits[..n]).ok()?.parse().ok()
    })
}

fn run(
    addr: u16,
    (path, body): (&str, &'static str),
    rate: u64,
    seconds: u64,
    pid: Option<u32>,
    capture: Option<Capture>,
) -> Outcome {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("client runtime");
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(1024)
        .build(connector);
    let url: http::Uri = format!("http://127.0.0.1:{addr}{path}")
        .parse()
        .expect("uri");
    let body = Bytes::from_static(body.as_bytes());
    let hist = || Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram");
    let latency = Arc::new(Mutex::new(hist()));
    let events = Arc::new(Mutex::new(hist()));
    let (ok, errors) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let warmup = rate * 2;
    let total = warmup + rate * seconds;
    let interval = Duration::from_nanos(1_000_000_000 / rate.max(1));
    let start = Instant::now() + Duration::from_millis(50);
    let measure_from = start + interval * warmup as u32;
    let measure_from_ns = measure_from.duration_since(epoch()).as_nanos() as u64;
    let sampler_stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = pid.map(|pid| sample(pid, measure_from, sampler_stop.clone()));
    let handle = rt.handle().clone();
    let mut tasks = Vec::with_capacity(total as usize);
    for i in 0..total {
        let due = start + interval * i as u32;
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        let (client, url, body) = (client.clone(), url.clone(), body.clone());
        let (latency, events, ok, errors) =
            (latency.clone(), events.clone(), ok.clone(), errors.clone());
        let measured = due >= measure_from;
        tasks.push(handle.spawn(async move {
            let req = Request::post(url)
                .header("content-type", "application/json")
                .body(Full::new(body))
                .expect("request");
            let result = async {
                let resp = client.request(req).await.map_err(|e| e.to_string())?;
                if !resp.status().is_success() {
                    return Err(format!("status {}", resp.status()));
                }
                let mut body = resp.into_body();
                let mut delays = Vec::new();
                while let Some(frame) = body.frame().await {
                    let frame = frame.map_err(|e| e.to_string())?;
                    if let Some(data) = frame.data_ref() {
                        let arrived = now_ns();
                        delays.extend(stamps(data).map(|sent| arrived.saturating_sub(sent) / 1000));
                    }
                }
                Ok::<_, String>(delays)
            };
            // A request that takes longer than this is an error, so a drowning target ends.
            let result = tokio::time::timeout(Duration::from_secs(30), result)
                .await
                .unwrap_or_else(|_| Err("timed out".into()));
            match result {
                Ok(delays) => {
                    ok.fetch_add(1, Ordering::Relaxed);
                    if measured {
                        let us = due.elapsed().as_micros() as u64;
                        let _ = latency.lock().expect("lock").record(us.max(1));
                        let mut ev = events.lock().expect("lock");
                        for d in delays {
                            let _ = ev.record(d.max(1));
                        }
                    }
                }
                Err(_) => {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    rt.block_on(async {
        for t in tasks {
            let _ = t.await;
        }
    });
    sampler_stop.store(true, Ordering::Relaxed);
    let (cpu_pct, rss_max_kib) = match sampler.map(|s| s.join().expect("sampler")) {
        Some((c, r)) => (Some(c), Some(r)),
        None => (None, None),
    };
    let latency = latency.lock().expect("lock").clone();
    let events = events.lock().expect("lock").clone();
    Outcome {
        seconds: seconds as f64 + 2.0,
        ok: ok.load(Ordering::Relaxed),
        errors: errors.load(Ordering::Relaxed),
        latency: Some(latency),
        events: (!events.is_empty()).then_some(events),
        forwarding: capture.map(|c| c.finish(measure_from_ns)),
        cpu_pct,
        rss_max_kib,
    }
}

/// Samples `pid`'s process tree from `from` until `stop`: (CPU % of one core, max RSS KiB).
fn sample(
    pid: u32,
    from: Instant,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<(f64, u64)> {
    std::thread::spawn(move || {
        while Instant::now() < from {
            std::thread::sleep(Duration::from_millis(10));
        }
        let (_, t0) = tree_stats(pid).unwrap_or_default();
        let w0 = Instant::now();
        let mut rss_max = 0;
        let mut last = (t0, w0);
        while !stop.load(Ordering::Relaxed) {
            if let Some((rss, t)) = tree_stats(pid) {
                rss_max = rss_max.max(rss);
                last = (t, Instant::now());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let ticks_per_s = 100.0; // USER_HZ on Linux
        let cpu = (last.0 - t0) as f64 / ticks_per_s / last.1.duration_since(w0).as_secs_f64();
        (cpu * 100.0, rss_max)
    })
}

/// One round driven by oha (`cargo install oha`): `connections` client connections sharing
/// `rate` requests/s, latency corrected for coordinated omission, after a 2 s warm-up run
/// that is not measured. oha reports percentiles, not samples, so the round's histogram is
/// rebuilt from them (p50, p90, p99 and the slowest), which is all the tables read.
fn run_oha(
    addr: u16,
    (path, body): (&str, &'static str),
    rate: u64,
    seconds: u64,
    connections: usize,
    pid: Option<u32>,
) -> Outcome {
    let oha = |secs: u64| {
        let out = Command::new("oha")
            .args([
                "--no-tui",
                "--output-format",
                "json",
                "--latency-correction",
                // Requests still open at the deadline finish instead of counting as errors.
                "--wait-ongoing-requests-after-deadline",
            ])
            .args(["-c", &connections.to_string()])
            // No rate: closed loop, as fast as the target answers.
            .args(if rate > 0 {
                vec!["-q".to_owned(), rate.to_string()]
            } else {
                Vec::new()
            })
            .args(["-z", &format!("{secs}s"), "-m", "POST"])
            .args(["-H", "content-type: application/json", "-d", body])
            .arg(format!("http://127.0.0.1:{addr}{path}"))
            .output()
            .expect("oha is installed (cargo install oha)");
        assert!(
            out.status.success(),
            "oha: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout).expect("oha JSON")
    };
    let warmup = oha(2);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = pid.map(|pid| sample(pid, Instant::now(), stop.clone()));
    let report = oha(seconds);
    stop.store(true, Ordering::Relaxed);
    let (cpu_pct, rss_max_kib) = match sampler.map(|s| s.join().expect("sampler")) {
        Some((c, r)) => (Some(c), Some(r)),
        None => (None, None),
    };
    let us = |v: &serde_json::Value| (v.as_f64().unwrap_or(0.0) * 1e6).round().max(1.0) as u64;
    let p = &report["latencyPercentiles"];
    let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram");
    // 50 samples at p50, 40 at p90, 9 at p99 and one at the slowest keep each quantile.
    for (value, n) in [
        (us(&p["p50"]), 50),
        (us(&p["p90"]), 40),
        (us(&p["p99"]), 9),
        (us(&report["summary"]["slowest"]), 1),
    ] {
        let _ = h.record_n(value, n);
    }
    let count = |ok: bool| {
        [&warmup, &report]
            .iter()
            .flat_map(|r| {
                r["statusCodeDistribution"]
                    .as_object()
                    .cloned()
                    .unwrap_or_default()
            })
            .filter(|(code, _)| code.starts_with('2') == ok)
            .map(|(_, n)| n.as_u64().unwrap_or(0))
            .sum::<u64>()
    };
    let failed: u64 = [&warmup, &report]
        .iter()
        .filter_map(|r| r["errorDistribution"].as_object())
        .flat_map(|e| e.values().map(|n| n.as_u64().unwrap_or(0)))
        .sum();
    Outcome {
        seconds: seconds as f64 + 2.0,
        ok: count(true),
        errors: count(false) + failed,
        latency: Some(h),
        events: None,
        forwarding: None,
        cpu_pct,
        rss_max_kib,
    }
}

fn q(h: &Histogram<u64>, q: f64) -> u64 {
    h.value_at_quantile(q)
}

/// p50, p90, p99 and max: one row of every table.
fn percentiles(h: &Histogram<u64>) -> [u64; 4] {
    [q(h, 0.5), q(h, 0.9), q(h, 0.99), h.max()]
}

fn dropped_records(dashboard: u16) -> Option<f64> {
    metric_sum(dashboard, "tally_records_dropped_total")
}

/// The sum of every `/metrics` sample whose name starts with `name`.
fn metric_sum(dashboard: u16, name: &str) -> Option<f64> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", dashboard)).ok()?;
    use std::io::{Read, Write};
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
        .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    Some(
        text.lines()
            .filter(|l| l.starts_with(name))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>()
            // An empty sum is -0.
            + 0.0,
    )
}

fn main() {
    let o = opts();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    pin(o.pin);
    let _ = epoch();
    let upstream = start_upstream(
        Duration::from_millis(o.upstream_latency_ms),
        o.events,
        Duration::from_millis(o.event_interval_ms),
    );
    // Kept for the whole run: nginx as the upstream (whole answers only).
    let nginx_upstream = o.nginx_upstream.then(|| {
        assert!(!o.stream, "--upstream nginx serves whole answers only");
        start_nginx_upstream().expect("nginx for --upstream nginx (apt-get install nginx-light)")
    });
    let upstream = nginx_upstream
        .as_ref()
        .map_or(upstream, |p| SocketAddr::from(([127, 0, 0, 1], p.port)));
    let idle_tally = start_tally(upstream, false, true);
    std::thread::sleep(Duration::from_secs(1));
    let idle = proc_stats(idle_tally.child.id()).map(|s| s.0);
    drop(idle_tally);
    println!(
        "machine: {cores} cores; {}; Tally idle RSS {} MiB",
        match proxy_cpu() {
            Some(cpu) =>
                format!("proxy pinned to CPU {cpu}, load generator and fake upstream to the others"),
            None => "nothing pinned: generator, fake upstream and proxy share every core".into(),
        },
        idle.map_or("?".into(), |k| format!("{:.1}", k as f64 / 1024.0))
    );
    let mode = if o.stream {
        format!(
            "stream of {} events, {} ms apart",
            o.events, o.event_interval_ms
        )
    } else {
        "JSON".to_owned()
    };
    println!(
        "workload: {mode}; {} s per round after 2 s warm-up; {} round(s)\n",
        o.seconds, o.rounds
    );
    println!("| target | rate/s | round | achieved/s | errors | p50 µs | p90 µs | p99 µs | max µs | CPU % | RSS max MiB | event delay p50/p99 µs | forwarding p50/p99/max µs |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    // (target, rate) -> per-round forwarding (p50, p90, p99, max), from the capture
    let mut forwarding: BTreeMap<(u64, String), Vec<[u64; 4]>> = BTreeMap::new();
    // (target, rate) -> per-round event delay (p50, p90, p99, max), measured by the client
    let mut event_delay: BTreeMap<(u64, String), Vec<[u64; 4]>> = BTreeMap::new();
    // (target, rate) -> per-round (p50, p90, p99, max)
    let mut table: BTreeMap<(u64, String), Vec<[u64; 4]>> = BTreeMap::new();
    for &rate in &o.rates {
        for round in 1..=o.rounds {
            for (&conns, target) in o
                .connections
                .iter()
                .flat_map(|c| o.targets.iter().map(move |t| (c, t)))
            {
                assert!(
                    rate > 0 || conns > 0,
                    "--rates 0 (closed loop) needs --connections"
                );
                let label = label(target, conns);
                let proc = match target.as_str() {
                    "direct" => None,
                    "nginx" => match start_nginx(upstream) {
                        Some(p) => Some(p),
                        None => {
                            if round == 1 {
                                println!("| nginx | {rate} | - | not installed (apt-get install nginx-light) | | | | | | | | | |");
                            }
                            continue;
                        }
                    },
                    "tally" | "tally-unified" => Some(start_tally(upstream, false, true)),
                    "tally-nojournal" => Some(start_tally(upstream, false, false)),
                    "tally-otel" => Some(start_tally_otel(upstream)),
                    "tally-otel-py" => Some(start_tally_otel_py(upstream)),
                    "tally-clickhouse" => Some(start_tally(upstream, true, true)),
                    "litellm" => match start_litellm(upstream) {
                        Some(p) => Some(p),
                        None => {
                            if round == 1 {
                                println!("| litellm | {rate} | - | not installed (pip install 'litellm[proxy]'; TALLY_BENCH_LITELLM=<path>) | | | | | | | | | |");
                            }
                            continue;
                        }
                    },
                    other => panic!("unknown target {other}"),
                };
                let port = proc.as_ref().map_or(upstream.port(), |p| p.port);
                let capture = (o.capture && o.stream && proc.is_some())
                    .then(|| Capture::start(upstream.port(), port));
                let pid = proc.as_ref().map(|p| p.child.id());
                let out = match conns {
                    0 => run(
                        port,
                        request_of(target, o.stream),
                        rate,
                        o.seconds,
                        pid,
                        capture,
                    ),
                    n => run_oha(port, request_of(target, o.stream), rate, o.seconds, n, pid),
                };
                let h = out.latency.as_ref().expect("histogram");
                let row = percentiles(h);
                table.entry((rate, label.clone())).or_default().push(row);
                let ev = out.events.as_ref().map_or("–".to_owned(), |e| {
                    format!("{} / {}", q(e, 0.5), q(e, 0.99))
                });
                let fw = out.forwarding.as_ref().map_or("–".to_owned(), |f| {
                    format!(
                        "{} / {} / {} ({} events)",
                        q(f, 0.5),
                        q(f, 0.99),
                        f.max(),
                        f.len()
                    )
                });
                if let Some(e) = &out.events {
                    event_delay
                        .entry((rate, label.clone()))
                        .or_default()
                        .push(percentiles(e));
                }
                if let Some(f) = &out.forwarding {
                    forwarding
                        .entry((rate, label.clone()))
                        .or_default()
                        .push(percentiles(f));
                }
                println!(
                    "| {label} | {rate} | {round} | {:.0} | {} | {} | {} | {} | {} | {} | {} | {ev} | {fw} |",
                    out.ok as f64 / out.seconds,
                    out.errors,
                    row[0],
                    row[1],
                    row[2],
                    row[3],
                    out.cpu_pct.map_or("–".into(), |c| format!("{c:.0}")),
                    out.rss_max_kib.map_or("–".into(), |r| format!("{:.1}", r as f64 / 1024.0)),
                );
                if let Some(mut p) = proc {
                    if let (Some(dash), Some(store)) = (p.dashboard, p.store.take()) {
                        let dropped = dropped_records(dash).unwrap_or(-1.0);
                        let spans = target.starts_with("tally-otel").then(|| {
                            let m = |n| metric_sum(dash, n).unwrap_or(-1.0);
                            format!(
                                "; spans before shutdown: {} exported, {} dropped",
                                m("tally_otlp_spans_exported_total"),
                                m("tally_otlp_spans_dropped_total")
                            )
                        });
                        // SIGTERM drains every record; then count what the store has.
                        let _ = Command::new("kill").arg(p.child.id().to_string()).status();
                        let deadline = Instant::now() + Duration::from_secs(60);
                        while p.child.try_wait().ok().flatten().is_none()
                            && Instant::now() < deadline
                        {
                            std::thread::sleep(Duration::from_millis(50));
                        }
                        let stored = store.rows();
                        println!(
                            "|  | records: {} answered, {stored} stored, {dropped} dropped{} | | | | | | | | | | | |",
                            out.ok,
                            spans.unwrap_or_default()
                        );
                    }
                }
            }
        }
    }
    let what = if o.stream {
        "whole stream, from its due time to its last byte"
    } else {
        "request latency"
    };
    overhead(
        &format!(
            "Overhead, {what} (target minus direct, per round; min / median / max over rounds)"
        ),
        &o,
        &table,
    );
    if o.stream {
        overhead(
            "Added event delay, as the client sees it (target minus direct, per round; min / median / max over rounds)",
            &o,
            &event_delay,
        );
    }
    if !forwarding.is_empty() {
        println!("\nForwarding delay per event, from the packet capture (upstream's packet to the proxy's; min / median / max over rounds):\n");
        println!("| target | rate/s | p50 µs | p90 µs | p99 µs | max µs |");
        println!("|---|---|---|---|---|---|");
        for ((rate, target), rows) in &forwarding {
            let cols: Vec<String> = (0..4)
                .map(|c| spread(rows.iter().map(|r| r[c] as i64).collect()))
                .collect();
            println!("| {target} | {rate} | {} |", cols.join(" | "));
        }
    }
}

/// `min / median / max` of per-round values.
fn spread(mut v: Vec<i64>) -> String {
    v.sort_unstable();
    format!("{} / {} / {}", v[0], v[v.len() / 2], v[v.len() - 1])
}

/// A row's name: the target, and its client connections when oha drove it.
fn label(target: &str, conns: usize) -> String {
    match conns {
        0 => target.to_owned(),
        c => format!("{target} ×{c}"),
    }
}

/// Each target's per-round percentiles minus direct's in the same round, and, where nginx ran
/// too, that added time over nginx's (median of the per-round ratios).
fn overhead(title: &str, o: &Opts, table: &BTreeMap<(u64, String), Vec<[u64; 4]>>) {
    println!("\n{title}:\n");
    println!("| target | rate/s | p50 µs | p90 µs | p99 µs | max µs | added p50 / p99 ÷ nginx's |");
    println!("|---|---|---|---|---|---|---|");
    for &rate in &o.rates {
        for &conns in &o.connections {
            let Some(direct) = table.get(&(rate, label("direct", conns))) else {
                continue;
            };
            let added = |rows: &[[u64; 4]], c: usize| -> Vec<i64> {
                rows.iter()
                    .zip(direct)
                    .map(|(r, d)| r[c] as i64 - d[c] as i64)
                    .collect()
            };
            let nginx = table.get(&(rate, label("nginx", conns)));
            for target in o.targets.iter().filter(|t| *t != "direct") {
                let name = label(target, conns);
                let Some(rows) = table.get(&(rate, name.clone())) else {
                    continue;
                };
                let cols: Vec<String> = (0..4).map(|c| spread(added(rows, c))).collect();
                let ratio = match nginx {
                    Some(n) if target != "nginx" => {
                        let r = |c: usize| {
                            let mut v: Vec<f64> = added(rows, c)
                                .iter()
                                .zip(added(n, c))
                                .map(|(t, n)| *t as f64 / n.max(1) as f64)
                                .collect();
                            v.sort_by(f64::total_cmp);
                            v[v.len() / 2]
                        };
                        format!("{:.2} / {:.2}", r(0), r(2))
                    }
                    _ => "–".to_owned(),
                };
                println!("| {name} | {rate} | {} | {ratio} |", cols.join(" | "));
            }
        }
    }
}
