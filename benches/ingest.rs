//! Sustained ingest into each store, through the path the proxy uses: records go into the
//! bounded channel, the ingest worker batches them with the binary's defaults, and the store's
//! writer commits them. Rows are counted in the store at the end.
//!
//! ```sh
//! cargo bench --bench ingest                     # SQLite and ClickHouse, small and 1 KiB bodies
//! cargo bench --bench ingest -- --store sqlite --body 1024 --records 300000 --rate 50000 --seconds 20
//! cargo bench --bench ingest -- --store sqlite,clickhouse --body 0,1024 --records 1000000   # sizing
//! ```
//!
//! Two figures per store and record size:
//!
//! - **capacity**: `--records` records offered as fast as the channel takes them (the producer
//!   waits while the channel is full, so nothing is dropped); records/s is their number over the
//!   time until the last one is committed.
//! - **fixed rate**: records offered at `--rate` per second for `--seconds` with the proxy's
//!   non-blocking send; any record the channel could not take is a drop. It passes when nothing
//!   is dropped and every record is in the store.
//!
//! Bodies are text of the requested size drawn from a small vocabulary, so they compress about
//! as well as prompts do (ClickHouse compresses its columns; a run of one repeated letter would
//! flatter it). ClickHouse is the suite's engine (chDB behind `tests/clickhouse/chdb_server.py`,
//! one query at a time, no HTTP compression), or the server named by
//! `TALLY_TEST_CLICKHOUSE_URL`.

#[path = "../tests/support/clickhouse.rs"]
#[allow(dead_code)]
mod clickhouse_fixture;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use tally_ingest::clickhouse::ClickHouseWriter;
use tally_ingest::sqlite::{self, SqliteWriter};
use tally_ingest::{BatchConfig, IngestMetrics, IngestWorker, Record, Tokens};

const WORDS: &[&str] = &[
    "the",
    "model",
    "answer",
    "user",
    "question",
    "please",
    "explain",
    "function",
    "return",
    "value",
    "error",
    "stream",
    "token",
    "context",
    "system",
    "assistant",
    "you",
    "are",
    "a",
    "helpful",
    "code",
    "rust",
    "python",
    "data",
    "table",
    "query",
    "result",
    "list",
    "of",
    "and",
    "with",
    "for",
    "in",
    "to",
    "is",
    "this",
    "that",
    "it",
    "on",
    "summary",
    "step",
    "plan",
    "tool",
    "call",
    "json",
    "output",
    "input",
    "message",
    "content",
    "role",
];

/// Pseudo-random text bodies of one size (a fixed seed: every run stores the same bytes).
struct Bodies(Vec<String>);

impl Bodies {
    fn new(size: usize) -> Self {
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        Self(
            // Enough distinct bodies that repeats fall outside LZ4's 64 KiB window, so the
            // store's size per record is not flattered by whole repeated bodies.
            (0..4096)
                .map(|_| {
                    let mut s = String::with_capacity(size + 16);
                    while s.len() < size {
                        s.push_str(WORDS[(next() % WORDS.len() as u64) as usize]);
                        s.push(' ');
                    }
                    s.truncate(size);
                    s
                })
                .collect(),
        )
    }

    fn get(&self, i: usize) -> Option<String> {
        (!self.0[0].is_empty()).then(|| self.0[i % self.0.len()].clone())
    }
}

/// One record as the proxy leaves it for a streamed chat completion.
fn record(i: usize, ts: i64, bodies: &Bodies) -> Record {
    Record {
        provider: "openai".into(),
        endpoint: "/v1/chat/completions".into(),
        method: "POST".into(),
        model: Some("gpt-4o-mini".into()),
        response_model: Some("gpt-4o-mini-2024-07-18".into()),
        status: 200,
        stream: true,
        latency_ms: 812,
        ttft_ms: Some(210),
        tokens: Some(Tokens {
            prompt: 120,
            completion: 300,
            cache_read: 0,
            cache_write: 0,
            cache_write_1h: 0,
            reasoning: 0,
        }),
        cost_usd: Some(0.000198),
        user_id: Some(format!("user-{}", i % 100)),
        session_id: Some(format!("s-{}", i % 1000)),
        session_path: Some("/plan/step-1".into()),
        properties: BTreeMap::from([("env".into(), "prod".into())]),
        request_bytes: 1024,
        response_bytes: 4096,
        api_key_hint: Some("sk-…abcd".into()),
        provider_request_id: Some("req_123".into()),
        request_body: bodies.get(i),
        response_body: bodies.get(i + 7),
        ..Record::new(uuid::Uuid::now_v7(), ts)
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

struct Opts {
    stores: Vec<String>,
    bodies: Vec<usize>,
    records: usize,
    rate: Option<u64>,
    seconds: u64,
}

fn opts() -> Opts {
    let args: Vec<String> = std::env::args().collect();
    let get = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1).cloned())
    };
    let list = |name: &str, d: &str| -> Vec<String> {
        get(name)
            .unwrap_or_else(|| d.to_owned())
            .split(',')
            .map(str::to_owned)
            .collect()
    };
    Opts {
        stores: list("--store", "sqlite,clickhouse"),
        bodies: list("--body", "200,1024")
            .iter()
            .filter_map(|b| b.parse().ok())
            .collect(),
        records: get("--records")
            .and_then(|v| v.parse().ok())
            .unwrap_or(300_000),
        rate: get("--rate").and_then(|v| v.parse().ok()),
        seconds: get("--seconds").and_then(|v| v.parse().ok()).unwrap_or(20),
    }
}

/// A store to write into, and a way to count what it holds.
enum Target {
    Sqlite {
        path: std::path::PathBuf,
        _dir: tempfile::TempDir,
    },
    ClickHouse(Box<clickhouse_fixture::ClickHouse>, tokio::runtime::Runtime),
    /// An HTTP endpoint that reads every insert to its end and answers 200: what Tally's
    /// ClickHouse writer (RowBinary encoding, LZ4, HTTP) can send, without an engine's cost.
    Sink {
        url: String,
        database: String,
        rows: std::sync::Arc<std::sync::atomic::AtomicU64>,
        _engine: Box<clickhouse_fixture::ClickHouse>,
        _rt: tokio::runtime::Runtime,
    },
}

/// The sink: counts the rows of each insert by the `tally-<first>-<last>-<n>` deduplication
/// token the writer sends with it, and hands every other query (the client's schema lookup
/// for validation) to a real engine that has the schema.
fn start_sink() -> Target {
    use http_body_util::BodyExt;
    use std::sync::atomic::Ordering;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let engine = clickhouse_fixture::ClickHouse::start();
    rt.block_on(tally_ingest::clickhouse::migrate(&engine.settings()))
        .expect("migrate");
    let engine_url: http::Uri = engine.url.parse().expect("engine url");
    let rows = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let counted = rows.clone();
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Full<bytes::Bytes>>();
    rt.spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let (counted, client, engine_url) =
                (counted.clone(), client.clone(), engine_url.clone());
            tokio::spawn(async move {
                let svc =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let (counted, client, engine_url) =
                            (counted.clone(), client.clone(), engine_url.clone());
                        async move {
                            let token_rows = req
                                .uri()
                                .query()
                                .filter(|q| q.contains("query=INSERT"))
                                .and_then(|q| {
                                    q.split('&').find_map(|kv| {
                                        kv.strip_prefix("insert_deduplication_token=")
                                    })
                                })
                                .and_then(|t| t.rsplit('-').next())
                                .and_then(|n| n.parse::<u64>().ok());
                            let (parts, body) = req.into_parts();
                            let body = body.collect().await.map(|b| b.to_bytes());
                            let empty = || http_body_util::Full::new(bytes::Bytes::new());
                            let Ok(body) = body else {
                                return Ok::<_, std::convert::Infallible>(http::Response::new(
                                    empty(),
                                ));
                            };
                            if let Some(n) = token_rows {
                                counted.fetch_add(n, Ordering::Relaxed);
                                return Ok(http::Response::new(empty()));
                            }
                            let mut fwd = http::Request::new(http_body_util::Full::new(body));
                            *fwd.method_mut() = parts.method;
                            *fwd.headers_mut() = parts.headers;
                            *fwd.uri_mut() = format!(
                                "{}{}",
                                engine_url.to_string().trim_end_matches('/'),
                                parts.uri.path_and_query().map_or("/", |p| p.as_str())
                            )
                            .parse()
                            .expect("uri");
                            let resp = match client.request(fwd).await {
                                Ok(r) => r,
                                Err(_) => return Ok(http::Response::new(empty())),
                            };
                            let (parts, body) = resp.into_parts();
                            let body = body
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            Ok(http::Response::from_parts(
                                parts,
                                http_body_util::Full::new(body),
                            ))
                        }
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Target::Sink {
        url,
        database: engine.database.clone(),
        rows,
        _engine: Box::new(engine),
        _rt: rt,
    }
}

impl Target {
    fn new(kind: &str) -> Self {
        match kind {
            "sqlite" | "sqlite-after-a-purge" => {
                // On the disk the project builds on, not a tmpfs.
                let base = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target");
                std::fs::create_dir_all(&base).expect("target dir");
                let dir = tempfile::tempdir_in(base).expect("tempdir");
                let path = dir.path().join("ingest.db");
                let mut conn = sqlite::open_rw(&path).expect("open");
                sqlite::migrate(&mut conn).expect("migrate");
                drop(conn);
                // What the trigger the first purge creates costs every insert after it.
                if kind == "sqlite-after-a-purge" {
                    let spool = dir.path().join("spool");
                    tally_ingest::purge::sqlite(
                        &path,
                        &tally_ingest::purge::Scope::User("nobody".into()),
                        (&spool, u64::MAX),
                    )
                    .expect("purge");
                }
                Self::Sqlite { path, _dir: dir }
            }
            "clickhouse" => {
                let rt = tokio::runtime::Runtime::new().expect("runtime");
                let ch = clickhouse_fixture::ClickHouse::start();
                rt.block_on(tally_ingest::clickhouse::migrate(&ch.settings()))
                    .expect("migrate");
                Self::ClickHouse(Box::new(ch), rt)
            }
            "clickhouse-sink" => start_sink(),
            other => panic!(
                "unknown store {other} (sqlite, sqlite-after-a-purge, clickhouse, clickhouse-sink)"
            ),
        }
    }

    /// The binary's batching defaults for this store.
    fn batch_config(&self) -> BatchConfig {
        match self {
            Self::Sqlite { .. } => BatchConfig::default(),
            Self::ClickHouse(..) | Self::Sink { .. } => BatchConfig {
                flush_interval: Duration::from_millis(tally::config::CLICKHOUSE_FLUSH_INTERVAL_MS),
                ..BatchConfig::default()
            },
        }
    }

    /// Bytes the store takes on disk, settled: SQLite's file after a checkpoint (the WAL
    /// folded in), ClickHouse's active parts of `requests` after a final merge.
    fn bytes_on_disk(&self) -> Option<u64> {
        match self {
            Self::Sqlite { path, .. } => {
                let c = rusqlite::Connection::open(path).ok()?;
                c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
                    .ok()?;
                drop(c);
                std::fs::metadata(path).ok().map(|m| m.len())
            }
            Self::ClickHouse(ch, rt) => rt.block_on(async {
                let c = ch.client();
                c.query(&format!("OPTIMIZE TABLE {}.requests FINAL", ch.database))
                    .execute()
                    .await
                    .ok()?;
                c.query(&format!(
                    "SELECT sum(bytes_on_disk) FROM system.parts \
                     WHERE database = '{}' AND table = 'requests' AND active",
                    ch.database
                ))
                .fetch_one::<u64>()
                .await
                .ok()
            }),
            Self::Sink { .. } => None,
        }
    }

    fn rows(&self) -> u64 {
        match self {
            Self::Sqlite { path, .. } => rusqlite::Connection::open(path)
                .and_then(|c| {
                    c.query_row("SELECT count(*) FROM requests", [], |r| r.get::<_, i64>(0))
                })
                .map(|n| n as u64)
                .expect("count"),
            Self::ClickHouse(ch, rt) => rt
                .block_on(
                    ch.client()
                        .query(&format!("SELECT count() FROM {}.requests", ch.database))
                        .fetch_one::<u64>(),
                )
                .expect("count"),
            Self::Sink { rows, .. } => rows.load(std::sync::atomic::Ordering::Relaxed),
        }
    }

    fn spawn(&self, rx: tally_ingest::RecordReceiver, m: IngestMetrics) -> IngestWorker {
        let config = self.batch_config();
        match self {
            Self::Sqlite { path, .. } => {
                let conn = sqlite::open_writer(path).expect("open");
                IngestWorker::spawn(rx, SqliteWriter::new(conn), config, m)
            }
            Self::ClickHouse(ch, _) => {
                let w = ClickHouseWriter::new(&ch.settings()).expect("writer");
                IngestWorker::spawn(rx, w, config, m)
            }
            Self::Sink { url, database, .. } => {
                let settings = tally_ingest::clickhouse::ClickHouseConfig {
                    url: url.clone(),
                    database: Some(database.clone()),
                    compression: tally_ingest::clickhouse::Compression::Lz4,
                    ..Default::default()
                }
                .validate()
                .expect("sink settings");
                let w = ClickHouseWriter::new(&settings).expect("writer");
                IngestWorker::spawn(rx, w, config, m)
            }
        }
        .expect("worker")
    }
}

fn dropped(m: &IngestMetrics) -> u64 {
    tally_ingest::metrics::DROP_REASONS
        .iter()
        .map(|&reason| {
            m.dropped
                .get_or_create(&tally_ingest::DropLabels { reason })
                .get()
        })
        .sum()
}

/// Offers `n` records as fast as the channel takes them; returns records/s committed.
fn capacity(store: &str, body: usize, n: usize) {
    let target = Target::new(store);
    let bodies = Bodies::new(body);
    let metrics = IngestMetrics::default();
    let (tx, rx) = tally_ingest::channel(tally_ingest::DEFAULT_CHANNEL_CAPACITY, metrics.clone());
    let worker = target.spawn(rx, metrics.clone());
    let start = Instant::now();
    let ts = now_ms();
    let mut waits = 0u64;
    for i in 0..n {
        let r = record(i, ts + (i / 50) as i64, &bodies);
        // Wait for room instead of dropping: this measures what the store can take.
        while tx.len() >= tally_ingest::DEFAULT_CHANNEL_CAPACITY - 1 {
            waits += 1;
            std::thread::sleep(Duration::from_micros(200));
        }
        assert!(tx.send(r), "the channel refused a record");
    }
    drop(tx);
    worker.shutdown();
    let secs = start.elapsed().as_secs_f64();
    let rows = target.rows();
    let per_million = target
        .bytes_on_disk()
        .filter(|_| rows > 0)
        .map_or("-".to_owned(), |b| {
            format!("{:.0} MiB", b as f64 / rows as f64 * 1e6 / 1048576.0)
        });
    println!(
        "| {store} | {body} B | capacity | {n} offered, producer waited {waits}× | {:.0} records/s | {} | {} | {rows} | {per_million} |",
        n as f64 / secs,
        metrics.write_errors.get(),
        dropped(&metrics),
    );
    assert_eq!(rows, n as u64, "every record is in the store");
}

/// Offers records at `rate` per second for `seconds`, never waiting, as the proxy does.
fn fixed_rate(store: &str, body: usize, rate: u64, seconds: u64) {
    let target = Target::new(store);
    let bodies = Bodies::new(body);
    let metrics = IngestMetrics::default();
    let (tx, rx) = tally_ingest::channel(tally_ingest::DEFAULT_CHANNEL_CAPACITY, metrics.clone());
    let worker = target.spawn(rx, metrics.clone());
    let total = (rate * seconds) as usize;
    let start = Instant::now();
    let ts = now_ms();
    let mut max_depth = 0;
    // One millisecond's worth at a time.
    let per_tick = (rate / 1000).max(1) as usize;
    let mut i = 0;
    while i < total {
        let due = start + Duration::from_nanos((i as u64) * 1_000_000_000 / rate);
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        for _ in 0..per_tick.min(total - i) {
            tx.send(record(i, ts + (i as u64 * 1000 / rate) as i64, &bodies));
            i += 1;
        }
        max_depth = max_depth.max(tx.len());
    }
    let offered_for = start.elapsed().as_secs_f64();
    let drain_start = Instant::now();
    drop(tx);
    worker.shutdown();
    let drain = drain_start.elapsed();
    let rows = target.rows();
    let lost = dropped(&metrics);
    println!(
        "| {store} | {body} B | {rate}/s for {seconds} s | {total} offered in {offered_for:.1} s, deepest queue {max_depth}, drained {:.2} s after the last | {:.0} records/s | {} | {lost} | {rows} | |",
        drain.as_secs_f64(),
        rows as f64 / (offered_for + drain.as_secs_f64()),
        metrics.write_errors.get(),
    );
}

fn main() {
    // The worker's warnings (failed batches and why) on stderr, as in the binary.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("TALLY_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let o = opts();
    // `cargo bench` passes `--bench`; any other run (cargo test --benches) is a smoke test.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    println!("| store | bodies (each) | run | offered | committed | failed batch writes (retried) | dropped | rows in store | disk per 1M records |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for store in &o.stores {
        for &body in &o.bodies {
            capacity(store, body, o.records);
            if let Some(rate) = o.rate {
                fixed_rate(store, body, rate, o.seconds);
            }
        }
    }
}
