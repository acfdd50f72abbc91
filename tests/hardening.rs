//! Hardening, round two (#25): each hole an outside attack found in "nothing is lost", as a
//! regression test. Process-level faults (signals, descriptor limits, deleted files, idle
//! connections) run the real binary; the store faults run Tally in-process against the real
//! ClickHouse engine, as the other store tests do.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::bin::{minimal_config, Bin, Options};
use crate::support::clickhouse::ClickHouse;
use crate::support::fake_upstream::{EMBEDDING_TOKENS, OPENAI_USAGE};
use crate::support::*;

fn chat(stream: bool) -> Value {
    json!({"model": "gpt-4o-mini", "stream": stream, "messages": [{"role": "user", "content": "hi"}]})
}

/// Waits (bounded) until `f` holds, polling.
async fn eventually(what: &str, within: Duration, mut f: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A metric of a binary's `/metrics` (summed over label sets containing `labels`).
async fn metric(dashboard: &str, name: &str, labels: &str) -> f64 {
    let (_, _, body) = get(&format!("{dashboard}/metrics")).await;
    String::from_utf8_lossy(&body)
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.split([' ', '{']).next() == Some(name) && l.contains(labels))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

// ---- Data loss ----

/// Items 1 and 3: a spooled segment deleted from disk, and a ClickHouse that refuses with
/// "authentication failed" while its password rotates. Neither stalls the spool or loses
/// more than the deleted segment's records.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotating_password_and_a_vanished_segment_lose_only_that_segment() {
    let up = FakeUpstream::start().await;
    let ch = tokio::task::spawn_blocking(|| ClickHouse::start_rotatable("tally", "old-secret"))
        .await
        .expect("engine");
    let tally = TestTally::start_with(&up.url(), |c| {
        ch.configure(c);
        c.ingest.max_attempts = 1;
        c.ingest.batch_max_rows = Some(1);
    })
    .await;
    // The password rotates on the server before Tally learns it: Code 516 on every insert.
    ch.set_password("new-secret");
    for i in 0..6 {
        let (status, _, _) = post_json(
            &tally.url("/v1/chat/completions"),
            &[("Tally-User-Id", &format!("u{i}"))],
            &chat(false),
        )
        .await;
        assert_eq!(status, 200);
    }
    eventually("6 records spooled", Duration::from_secs(20), async || {
        tally.metric("tally_records_spooled_total", "").await == 6.0
    })
    .await;
    assert_eq!(
        tally
            .metric("tally_records_dropped_total", "reason=\"store_error\"")
            .await,
        0.0,
        "an authentication failure is not a reason to drop records"
    );
    // One segment is lost from disk.
    let spool = tally.db.with_file_name("spool");
    let mut segments: Vec<_> = std::fs::read_dir(&spool)
        .expect("spool dir")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect();
    segments.sort();
    assert_eq!(segments.len(), 6);
    std::fs::remove_file(&segments[0]).expect("delete a segment");
    // The password comes back (the operator restored it): the replay goes on.
    ch.set_password("old-secret");
    eventually("5 replayed", Duration::from_secs(40), async || {
        tally.metric("tally_records_replayed_total", "").await == 5.0
    })
    .await;
    assert_eq!(tally.metric("tally_spool_quarantined_total", "").await, 0.0);
    assert_eq!(
        tally.metric("tally_spool_segments_lost_total", "").await,
        1.0
    );
    assert_eq!(
        tally
            .metric("tally_records_dropped_total", "reason=\"spool_lost\"")
            .await,
        1.0
    );
    let started = Instant::now();
    tally.stop().await;
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "shutdown completes"
    );
    let stored: u64 = ch
        .client()
        .query("SELECT count() FROM requests")
        .fetch_one()
        .await
        .expect("count");
    assert_eq!(stored, 5);
}

/// Item 2: two processes on one spool directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_process_cannot_share_a_spool_directory() {
    let up = FakeUpstream::start().await;
    let shared = tempfile::tempdir().expect("shared spool");
    let options = Options {
        spool_dir: Some(shared.path().to_owned()),
        ..Default::default()
    };
    let first = Bin::start_with(&up.url(), tempfile::tempdir().expect("dir"), &options).await;
    let dir = tempfile::tempdir().expect("dir");
    let cfg = minimal_config(dir.path(), shared.path());
    let mut second = std::process::Command::new(TALLY_BIN)
        .args(["--config", cfg.to_str().expect("utf8")])
        .env_remove("TALLY_CLICKHOUSE_URL")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run");
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(status) = second.try_wait().expect("wait") {
            break status;
        }
        if started.elapsed() > Duration::from_secs(15) {
            let _ = second.kill();
            panic!("the second process is still running on the shared spool after 15 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(!status.success());
    let mut err = String::new();
    std::io::Read::read_to_string(&mut second.stderr.take().expect("stderr"), &mut err)
        .expect("read stderr");
    assert!(
        err.contains("in use by another Tally process") && err.contains("spool_dir"),
        "{err}"
    );
    drop(first);
}

/// Item 4: SIGHUP drains like SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_drains_every_answered_request() {
    let up = FakeUpstream::start().await;
    let mut tally = Bin::start(&up.url()).await;
    let url = tally.url("/v1/chat/completions");
    // Streams in flight when the signal arrives: each takes about 300 ms.
    let streams: Vec<_> = (0..20)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move {
                send_checked(
                    Method::POST,
                    &url,
                    &[
                        ("content-type", "application/json"),
                        ("x-fake-interval-ms", "40"),
                    ],
                    chat(true).to_string(),
                )
                .await
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    tally.signal("-HUP");
    let mut answered = 0;
    for s in streams {
        if let Ok((StatusCode::OK, _, body)) = s.await.expect("join") {
            if String::from_utf8_lossy(&body).contains("[DONE]") {
                answered += 1;
            }
        }
    }
    let status = tally.wait().await;
    assert!(status.success(), "{status}: SIGHUP drained and exited 0");
    assert_eq!(answered, 20, "in-flight streams were finished, not cut");
    assert_eq!(tally.rows("SELECT count(*) FROM requests"), 20);
    assert!(tally.log().contains("SIGHUP"), "{}", tally.log());
}

/// Item 5: the SQLite file deleted under a running Tally.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_sqlite_file_is_noticed_and_reopened() {
    let up = FakeUpstream::start().await;
    let tally = TestTally::start(&up.url()).await;
    post_json(&tally.url("/v1/chat/completions"), &[], &chat(false)).await;
    tally.wait_for_rows(1).await;
    for suffix in ["", "-wal", "-shm"] {
        let mut p = tally.db.as_os_str().to_owned();
        p.push(suffix);
        let _ = std::fs::remove_file(p);
    }
    for _ in 0..5 {
        let (status, _, _) = post_json(&tally.url("/v1/chat/completions"), &[], &chat(false)).await;
        assert_eq!(status, 200);
    }
    eventually("the store reopened", Duration::from_secs(10), async || {
        tally.metric("tally_store_reopened_total", "").await == 1.0
    })
    .await;
    let dir = tally.stop().await;
    let conn = rusqlite::Connection::open(dir.path().join("tally.db")).expect("the new store");
    let n: i64 = conn
        .query_row("SELECT count(*) FROM requests", [], |r| r.get(0))
        .expect("count");
    assert_eq!(n, 5, "the records after the deletion survive a restart");
}

/// A ClickHouse stand-in that answers INSERTs with `200 OK` and an error body, as some gateways
/// in front of ClickHouse do, while `lying`; everything else is relayed to the engine.
async fn lying_proxy(target: String, lying: Arc<AtomicBool>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let (client, target, lying) = (client.clone(), target.clone(), lying.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let (client, target, lying) = (client.clone(), target.clone(), lying.clone());
                    async move {
                        let (parts, body) = req.into_parts();
                        let body = body
                            .collect()
                            .await
                            .map(|b| b.to_bytes())
                            .unwrap_or_default();
                        let query = parts.uri.query().unwrap_or("").to_owned();
                        // The statement itself, not a setting such as
                        // `insert_deduplication_token` that other queries carry too.
                        let insert = query.split('&').any(|kv| kv.starts_with("query=INSERT"));
                        if insert && lying.load(Ordering::SeqCst) {
                            // Not ClickHouse's `Code: …` exception text, which the client
                            // library already detects: a gateway's own error page.
                            let mut r = Response::new(Full::new(Bytes::from_static(
                                b"{\"error\":\"upstream authentication failed\"}",
                            )));
                            *r.status_mut() = StatusCode::OK;
                            return Ok::<_, Infallible>(r);
                        }
                        let uri = format!(
                            "{target}{}",
                            parts.uri.path_and_query().map_or("/", |p| p.as_str())
                        );
                        let mut fwd = Request::new(Full::new(body));
                        *fwd.method_mut() = parts.method;
                        *fwd.uri_mut() = uri.parse().expect("uri");
                        *fwd.headers_mut() = parts.headers;
                        fwd.headers_mut().remove("host");
                        let resp = client.request(fwd).await.expect("engine answers");
                        let (p, b) = resp.into_parts();
                        let b = b.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                        Ok(Response::from_parts(p, Full::new(b)))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    format!("http://{addr}")
}

/// Item 6: a ClickHouse endpoint answering 200 with an error body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_insert_answered_200_with_an_error_is_not_counted_written() {
    let up = FakeUpstream::start().await;
    let ch = ClickHouse::started().await;
    let lying = Arc::new(AtomicBool::new(false));
    let front = lying_proxy(ch.url.clone(), lying.clone()).await;
    let tally = TestTally::start_with(&up.url(), |c| {
        ch.configure_via(c, &front);
        // What a gateway in front of ClickHouse needs: with LZ4 the client library would
        // fail to decode the gateway's page and so notice by luck.
        c.store.compression = tally_ingest::clickhouse::Compression::None;
        c.ingest.max_attempts = 2;
    })
    .await;
    lying.store(true, Ordering::SeqCst);
    for _ in 0..5 {
        post_json(&tally.url("/v1/chat/completions"), &[], &chat(false)).await;
    }
    eventually(
        "spooled, not written",
        Duration::from_secs(20),
        async || tally.metric("tally_records_spooled_total", "").await == 5.0,
    )
    .await;
    assert_eq!(tally.metric("tally_records_written_total", "").await, 0.0);
    lying.store(false, Ordering::SeqCst);
    eventually("replayed", Duration::from_secs(30), async || {
        tally.metric("tally_records_replayed_total", "").await == 5.0
    })
    .await;
    tally.stop().await;
    let stored: u64 = ch
        .client()
        .query("SELECT count() FROM requests")
        .fetch_one()
        .await
        .expect("count");
    assert_eq!(stored, 5);
}

// ---- Security and availability ----

/// Reads until the peer closes; `Err` on a timeout.
async fn closed_within(s: &mut TcpStream, within: Duration) -> Result<Vec<u8>, String> {
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Ok(got),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => return Err(format!("still open after {within:?}")),
        }
    }
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Item 7: silent, half-sent and idle connections are closed on both ports; the soft
/// descriptor limit is raised; a flood past the cap is refused and counted, and shutdown is
/// bounded whatever the clients do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_partial_connections_cannot_exhaust_descriptors() {
    let up = FakeUpstream::start().await;
    let options = Options {
        proxy: "header_read_timeout_ms = 600\nkeep_alive_timeout_ms = 1000".into(),
        dashboard: "header_read_timeout_ms = 600\nkeep_alive_timeout_ms = 1000".into(),
        soft_nofile: Some(1024),
        ..Default::default()
    };
    let mut tally = Bin::start_with(&up.url(), tempfile::tempdir().expect("dir"), &options).await;
    let dash = tally.dashboard_url("");
    // 1,100 silent connections to each port: past the 1,024 it was started with.
    let mut silent = Vec::new();
    for port in [tally.proxy, tally.dash] {
        for _ in 0..1100 {
            silent.push(
                TcpStream::connect(("127.0.0.1", port))
                    .await
                    .expect("connect"),
            );
        }
    }
    let (status, _, _) = post_json(&tally.url("/v1/chat/completions"), &[], &chat(false)).await;
    assert_eq!(
        status, 200,
        "real requests are served beside 2,200 silent connections"
    );
    // Half an HTTP/2 preface, a whole preface then nothing, half a request head.
    let mut partial = Vec::new();
    for (port, bytes) in [
        (tally.proxy, &H2_PREFACE[..10]),
        (tally.proxy, H2_PREFACE),
        (
            tally.proxy,
            &b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n"[..],
        ),
        (tally.dash, H2_PREFACE),
        (tally.dash, &b"GET / HTTP/1.1\r\nhost:"[..]),
    ] {
        let mut s = TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect");
        s.write_all(bytes).await.expect("write");
        partial.push(s);
    }
    // A kept-alive connection after a request.
    let mut kept = TcpStream::connect(("127.0.0.1", tally.proxy))
        .await
        .expect("connect");
    let body = chat(false).to_string();
    kept.write_all(
        format!(
            "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
    .await
    .expect("request");
    for s in partial.iter_mut().chain(silent.iter_mut().take(3)) {
        closed_within(s, Duration::from_secs(5))
            .await
            .expect("closed");
    }
    let answer = closed_within(&mut kept, Duration::from_secs(5))
        .await
        .expect("closed after keep-alive");
    assert!(String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200"));
    // Every one was closed for its silence (or, past the dashboard's cap of 1,024 open at
    // once, refused with a 503).
    eventually(
        "every silent connection closed or refused",
        Duration::from_secs(10),
        async || {
            let closed = metric(&dash, "tally_connections_idle_closed_total", "").await;
            let refused = metric(&dash, "tally_connections_refused_total", "").await;
            closed + refused >= 2200.0 + 3.0
        },
    )
    .await;

    // A dashboard connection that never finishes its request does not hold up shutdown.
    let mut hanging = TcpStream::connect(("127.0.0.1", tally.dash))
        .await
        .expect("connect");
    hanging
        .write_all(b"GET /api/overview HTTP/1.1\r\n")
        .await
        .expect("write");
    let started = Instant::now();
    tally.signal("-TERM");
    let status = tally.wait().await;
    assert!(status.success());
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "shutdown took {:?}",
        started.elapsed()
    );
    drop(silent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_cap_get_a_503_and_are_counted() {
    let up = FakeUpstream::start().await;
    let options = Options {
        proxy: "max_connections = 20".into(),
        ..Default::default()
    };
    let tally = Bin::start_with(&up.url(), tempfile::tempdir().expect("dir"), &options).await;
    let mut held = Vec::new();
    for _ in 0..20 {
        held.push(
            TcpStream::connect(("127.0.0.1", tally.proxy))
                .await
                .expect("connect"),
        );
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut extra = TcpStream::connect(("127.0.0.1", tally.proxy))
        .await
        .expect("connect");
    let got = closed_within(&mut extra, Duration::from_secs(5))
        .await
        .expect("refused");
    let got = String::from_utf8_lossy(&got);
    assert!(
        got.starts_with("HTTP/1.1 503") && got.contains("tally_too_many_connections"),
        "{got}"
    );
    let dash = tally.dashboard_url("");
    assert_eq!(
        metric(&dash, "tally_connections_refused_total", "port=\"proxy\"").await,
        1.0
    );
    drop(held);
    // Until the proxy has seen the held connections close, a new one may still be refused
    // and closed before its answer is read: that is "not yet", not a failure.
    eventually("room again", Duration::from_secs(5), async || {
        send_checked(
            http::Method::POST,
            &tally.url("/v1/chat/completions"),
            &[("content-type", "application/json")],
            chat(false).to_string(),
        )
        .await
        .is_ok_and(|(status, _, _)| status == 200)
    })
    .await;
}

/// Item 8: duplicate keys, a BOM, NaN and a wrong type are read as the upstream reads them,
/// so an enforcing budget sees the model and the cost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_keys_and_odd_json_are_priced_and_budgeted() {
    let up = FakeUpstream::start().await;
    let budgets: Vec<tally_budgets::BudgetConfig> = serde_json::from_value(json!([
        {"name": "tiny", "scope": "per_user", "limit_usd": 0.000001, "window": "day", "enforce": true}
    ]))
    .expect("budgets");
    let tally = TestTally::start_with(&up.url(), |c| c.budgets = budgets).await;
    let bodies = [
        br#"{"model":"gpt-4o-mini","stream":true,"stream":true,"messages":[]}"#.to_vec(),
        b"\xEF\xBB\xBF{\"model\":\"gpt-4o-mini\",\"messages\":[]}".to_vec(),
        br#"{"model":"gpt-4o-mini","temperature":NaN,"messages":[]}"#.to_vec(),
        br#"{"model":"gpt-4o-mini","stream":"yes","messages":[]}"#.to_vec(),
    ];
    for (i, body) in bodies.iter().enumerate() {
        let user = format!("user-{i}");
        let headers = [
            ("content-type", "application/json"),
            ("Tally-User-Id", user.as_str()),
        ];
        let (status, h, _) = send(
            Method::POST,
            &tally.url("/v1/chat/completions"),
            &headers,
            body.clone(),
        )
        .await;
        assert_eq!(status, 200, "body {i}");
        let rec = tally.record(&request_id(&h)).await;
        assert_eq!(rec["model"], "gpt-4o-mini", "body {i}: {rec}");
        assert!(
            rec["cost_usd"].as_f64().is_some_and(|c| c > 0.0),
            "body {i}: {rec}"
        );
        // The spend was counted: the next request of the same user is refused.
        let (status, _, _) = send(
            Method::POST,
            &tally.url("/v1/chat/completions"),
            &headers,
            body.clone(),
        )
        .await;
        assert_eq!(status, 429, "body {i}: the budget is exhausted, not free");
    }
    // Tally asked for stream usage on the duplicate-key stream, as for any other.
    assert!(String::from_utf8_lossy(&up.received()[0].body).contains("include_usage"));
    // A body that is no JSON at all cannot be priced: refused while budgets enforce.
    let (status, _, body) = send(
        Method::POST,
        &tally.url("/v1/chat/completions"),
        &[
            ("content-type", "application/json"),
            ("Tally-User-Id", "someone"),
        ],
        &b"{not json"[..],
    )
    .await;
    assert_eq!(status, 400);
    assert!(String::from_utf8_lossy(&body).contains("tally_unreadable_body"));
    tally.stop().await;
}

/// Item 9: a key the upstream echoes is masked in everything stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_echoed_by_the_upstream_are_never_stored() {
    const KEY: &str = "sk-proj-echoedsecretEchoedSecret0123456789";
    let up = FakeUpstream::start().await;
    let tally = TestTally::start(&up.url()).await;
    let auth = format!("Bearer {KEY}");
    for (path, mode, stream) in [
        ("/v1/chat/completions", "echo-key", false),
        (
            "/v1/chat/completions?key=AIzaSyQueryKeyQueryKey0123456789abcdefg",
            "echo-key",
            false,
        ),
        ("/v1/chat/completions", "echo-key-stream", true),
    ] {
        let (_, h, body) = post_json(
            &tally.url(path),
            &[("authorization", &auth), ("x-fake-mode", mode)],
            &chat(stream),
        )
        .await;
        assert!(
            String::from_utf8_lossy(&body).contains("echoedsecret"),
            "the client sees its own answer"
        );
        let rec = tally.record(&request_id(&h)).await;
        let text = rec.to_string();
        assert!(
            !text.contains("echoedsecret") && !text.contains("QueryKeyQueryKey"),
            "{text}"
        );
        assert!(
            rec["error"]
                .as_str()
                .is_some_and(|e| e.contains("sk-…6789")),
            "{rec}"
        );
        let page = get(&tally.dashboard_url(&format!("/requests/{}", request_id(&h)))).await;
        assert!(!String::from_utf8_lossy(&page.2).contains("echoedsecret"));
    }
    let dir = tally.stop().await;
    let holding = files_holding(dir.path(), "echoedsecret");
    assert!(holding.is_empty(), "the key is in {holding:?}");
}

/// Item 10: a compressed answer's usage is read from its decoded end, however large.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compressed_answers_keep_their_usage() {
    let up = FakeUpstream::start().await;
    let tally = TestTally::start(&up.url()).await;
    let (status, h, _) = post_json(
        &tally.url("/v1/embeddings"),
        &[("x-fake-mode", "gzip-big")],
        &json!({"model": "text-embedding-3-small", "input": "x"}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        h.get("content-encoding").map(|v| v.as_bytes()),
        Some(&b"gzip"[..])
    );
    let rec = tally.record(&request_id(&h)).await;
    assert_eq!(
        rec["prompt_tokens"],
        EMBEDDING_TOKENS * 1000,
        "{}",
        rec["error"]
    );
    assert_eq!(rec["tokens_estimated"], false);
    assert!(
        rec["response_body_truncated"].as_bool().expect("flag"),
        "the logged copy is bounded"
    );
    assert!(rec["response_bytes"].as_u64().expect("bytes") > 0);
    // A gzip event stream: usage from its last event. (The client asks for usage itself:
    // Tally does not ask for it on a stream it could not strip again, see the note below.)
    let (status, h, _) = post_json(
        &tally.url("/v1/chat/completions"),
        &[("x-fake-mode", "gzip")],
        &json!({"model": "gpt-4o-mini", "stream": true, "stream_options": {"include_usage": true}, "messages": []}),
    )
    .await;
    assert_eq!(status, 200);
    let rec = tally.record(&request_id(&h)).await;
    assert_eq!(rec["prompt_tokens"], OPENAI_USAGE.0, "{rec}");
    assert_eq!(rec["tokens_estimated"], false);
    tally.stop().await;
}

/// Item 11: header rate-limit policies can be switched off; memory stays bounded (see the
/// `ratelimit` unit test `memory_is_bounded_whatever_the_keys`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_rate_limit_policies_can_be_switched_off() {
    let up = FakeUpstream::start().await;
    let tally =
        TestTally::start_with(&up.url(), |c| c.rate_limits.header_policies = Some(false)).await;
    for _ in 0..3 {
        let (status, _, _) = post_json(
            &tally.url("/v1/chat/completions"),
            &[
                ("Tally-RateLimit-Policy", "1;w=31536000;s=user"),
                ("Tally-User-Id", "u"),
            ],
            &chat(false),
        )
        .await;
        assert_eq!(status, 200);
    }
    tally.stop().await;
}

/// Item 12: dot segments never leave the provider's base path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dot_segments_are_refused() {
    let up = FakeUpstream::start().await;
    let tally = TestTally::start(&up.url()).await;
    for path in [
        "/openai/v1/../../admin",
        "/openai/v1/%2e%2e/%2E%2E/admin",
        "/openai/v1/chat%2f..%2f..%2fadmin",
    ] {
        let (status, h, body) = post_json(&tally.url(path), &[], &chat(false)).await;
        assert_eq!(status, 400, "{path}");
        assert!(
            String::from_utf8_lossy(&body).contains("tally_bad_path"),
            "{path}"
        );
        let rec = tally.record(&request_id(&h)).await;
        assert_eq!(rec["refusal"], "tally_bad_path");
    }
    assert!(up.received().is_empty(), "nothing was forwarded");
    tally.stop().await;
}

// ---- Wrong numbers ----

/// Item 13: an empty answer is a complete answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_answers_are_not_errors() {
    let up = FakeUpstream::start().await;
    let tally = TestTally::start(&up.url()).await;
    for mode in ["empty204", "empty200"] {
        let (status, h, _) = post_json(
            &tally.url("/v1/chat/completions"),
            &[("x-fake-mode", mode)],
            &chat(false),
        )
        .await;
        assert!(status == 204 || status == 200);
        let rec = tally.record(&request_id(&h)).await;
        assert!(rec["error"].is_null(), "{mode}: {rec}");
    }
    assert_eq!(
        tally.metric("tally_client_disconnects_total", "").await,
        0.0
    );
    tally.stop().await;
}

/// Item 14: absurd usage is flagged, not stored as a wrapped number beside an absurd cost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absurd_usage_is_flagged_and_not_priced() {
    let up = FakeUpstream::start().await;
    let tally = TestTally::start(&up.url()).await;
    let (status, h, _) = post_json(
        &tally.url("/v1/chat/completions"),
        &[("x-fake-mode", "absurd")],
        &chat(false),
    )
    .await;
    assert_eq!(status, 200);
    let rec = tally.record(&request_id(&h)).await;
    assert!(
        rec["prompt_tokens"].is_null() && rec["cost_usd"].is_null(),
        "{rec}"
    );
    assert!(
        rec["error"]
            .as_str()
            .is_some_and(|e| e.contains("implausible usage")),
        "{rec}"
    );
    assert_eq!(tally.metric("tally_implausible_usage_total", "").await, 1.0);
    tally.stop().await;
}

// ---- Smaller ----

/// Item 15: a tag with two values is refused, naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_sent_twice_with_two_values_is_refused() {
    let up = FakeUpstream::start().await;
    let tally = TestTally::start(&up.url()).await;
    let (status, _, body) = post_json(
        &tally.url("/v1/chat/completions"),
        &[("Tally-User-Id", "alice"), ("Tally-User-Id", "bob")],
        &chat(false),
    )
    .await;
    assert_eq!(status, 400);
    let v: Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(v["error"]["header"], "tally-user-id");
    assert!(up.received().is_empty());
    tally.stop().await;
}
