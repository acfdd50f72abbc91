//! Faults around the proxy: a huge stream and a slow reader (memory stays bounded), TLS
//! failure upstream, a locked SQLite file, SIGTERM and `kill -9` under load, clients that
//! leave at every point of a stream, and thousands of idle connections. Memory is read from
//! `/proc` of the real binary, so these run Tally as a subprocess where memory matters.

use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::bin::{minimal_config, Bin, Options};
use crate::support::*;

fn client() -> Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

fn chat_request(url: &str, headers: &[(&str, &str)], stream: bool) -> Request<Full<Bytes>> {
    let mut b = Request::builder()
        .method(Method::POST)
        .uri(url)
        .header("content-type", "application/json");
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let body = json!({"model": "gpt-4o-mini", "stream": stream, "messages": []});
    b.body(Full::new(Bytes::from(body.to_string())))
        .expect("request")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_100_mib_stream_and_a_slow_reader_keep_memory_bounded() {
    const TOTAL: usize = 100 * 1024 * 1024;
    let up = FakeUpstream::start().await;
    let tally = Bin::start(&up.url()).await;
    // Let start-up settle (the tokenizers load only at the first estimate, which these
    // streams, carrying usage, never need).
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (idle, _) = tally.rss_mib();
    let size = TOTAL.to_string();
    let headers = [("x-fake-mode", "big"), ("x-fake-bytes", size.as_str())];

    // A fast reader: everything passes through.
    let resp = client()
        .request(chat_request(
            &tally.url("/v1/chat/completions"),
            &headers,
            true,
        ))
        .await
        .expect("response");
    assert_eq!(resp.status(), StatusCode::OK);
    let id = request_id(resp.headers());
    let mut body = resp.into_body();
    let mut received = 0usize;
    let mut last = Bytes::new();
    while let Some(frame) = body.frame().await {
        if let Ok(d) = frame.expect("frame").into_data() {
            received += d.len();
            last = d;
        }
    }
    // The fake sends whole 16 KiB events, so a little under TOTAL.
    assert!(received > TOTAL * 99 / 100, "{received} bytes");
    assert!(String::from_utf8_lossy(&last).ends_with("data: [DONE]\n\n"));
    let (_, peak_fast) = tally.rss_mib();

    // A slow reader: takes 1 MiB, then reads nothing for 2 s while the upstream keeps sending.
    let resp = client()
        .request(chat_request(
            &tally.url("/v1/chat/completions"),
            &headers,
            true,
        ))
        .await
        .expect("response");
    let mut body = resp.into_body();
    let mut got = 0usize;
    while got < 1 << 20 {
        got += body
            .frame()
            .await
            .expect("frame")
            .expect("ok")
            .into_data()
            .map_or(0, |d| d.len());
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (stalled, _) = tally.rss_mib();
    while let Some(f) = body.frame().await {
        got += f.expect("frame").into_data().map_or(0, |d| d.len());
    }
    assert_eq!(got, received, "the slow reader got every byte too");
    let (_, peak) = tally.rss_mib();
    eprintln!(
        "memory: idle {idle:.1} MiB, peak after a 100 MiB stream {peak_fast:.1} MiB, \
         while a reader stalls {stalled:.1} MiB, peak {peak:.1} MiB"
    );
    assert!(
        peak - idle < 32.0,
        "two 100 MiB streams raised the peak from {idle:.1} to {peak:.1} MiB"
    );

    // The record is whole: every byte counted, usage found in the stream's tail.
    let deadline = Instant::now() + Duration::from_secs(20);
    let rec: Value = loop {
        let (s, _, b) = get(&format!(
            "http://127.0.0.1:{}/api/requests/{id}",
            tally.dash
        ))
        .await;
        if s == 200 {
            break serde_json::from_slice(&b).expect("json");
        }
        assert!(Instant::now() < deadline, "record missing");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // The upstream's bytes; the client got slightly fewer, because the usage injection's
    // `"usage":null` members are stripped from its copy.
    let upstream_bytes = rec["response_bytes"].as_u64().expect("bytes");
    assert!(
        upstream_bytes >= received as u64 && upstream_bytes <= TOTAL as u64,
        "{rec}"
    );
    assert_eq!(rec["prompt_tokens"], 21, "{}", rec["error"]);
    assert_eq!(rec["response_body_truncated"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_failure_upstream_is_a_502_and_recorded() {
    let up = FakeUpstream::start().await;
    // The fake speaks plain HTTP; asking it for TLS fails the handshake.
    let tls_url = format!("https://{}", up.addr);
    let t = TestTally::start_with(&up.url(), |c| {
        c.providers.insert(
            "tlsfail".into(),
            tally_proxy::ProviderConfig {
                base_url: Some(tls_url),
                ..Default::default()
            },
        );
    })
    .await;
    let (status, h, body) = post_json(
        &t.url("/tlsfail/v1/chat/completions"),
        &[],
        &json!({"model": "gpt-4o-mini"}),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    let v: Value = serde_json::from_slice(&body).expect("json");
    let msg = v["error"]["message"].as_str().expect("message");
    assert!(msg.contains("unreachable"), "{msg}");
    let rec = t.record(&request_id(&h)).await;
    assert_eq!(rec["status"], 0);
    assert!(rec["error"]
        .as_str()
        .is_some_and(|e| e.contains("unreachable")));
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_locked_sqlite_file_delays_writes_but_never_requests_or_records() {
    let up = FakeUpstream::start().await;
    let t = TestTally::start(&up.url()).await;
    let chat = json!({"model": "gpt-4o-mini", "messages": []});
    let burst = |n: usize| {
        let url = t.url("/v1/chat/completions");
        let chat = chat.clone();
        async move {
            let started = Instant::now();
            for _ in 0..n {
                let (s, _, _) = post_json(&url, &[], &chat).await;
                assert_eq!(s, 200);
            }
            started.elapsed()
        }
    };
    // An external reader holding a read transaction: WAL lets writes go on.
    let reader = rusqlite::Connection::open(&t.db).expect("open");
    reader.execute_batch("BEGIN").expect("begin");
    let _: i64 = reader
        .query_row("SELECT count(*) FROM requests", [], |r| r.get(0))
        .expect("read");
    burst(50).await;
    t.wait_for_rows(50).await;
    reader.execute_batch("COMMIT").expect("end read");

    // An external writer holding the write lock for 3 s: Tally's writes wait (busy timeout,
    // then retry), requests do not.
    let writer = rusqlite::Connection::open(&t.db).expect("open");
    writer.execute_batch("BEGIN IMMEDIATE").expect("lock");
    let took = burst(50).await;
    assert_eq!(t.count(), 50, "nothing could be written while locked");
    tokio::time::sleep(Duration::from_secs(3)).await;
    writer.execute_batch("COMMIT").expect("unlock");
    t.wait_for_rows(100).await;
    eprintln!("50 requests while SQLite was write-locked took {took:?}");
    assert_eq!(
        t.metric("tally_records_dropped_total", "").await,
        0.0,
        "nothing dropped"
    );
    t.stop().await;
}

/// Requests in a loop on `workers` connections until `stop`; counts complete 200s.
fn load(
    url: String,
    workers: usize,
    stop: Arc<AtomicBool>,
) -> (Arc<AtomicUsize>, Vec<tokio::task::JoinHandle<()>>) {
    let ok = Arc::new(AtomicUsize::new(0));
    let tasks = (0..workers)
        .map(|_| {
            let (url, stop, ok) = (url.clone(), stop.clone(), ok.clone());
            tokio::spawn(async move {
                let c = client();
                let mut stream = false;
                while !stop.load(Ordering::SeqCst) {
                    // Both endings: a streamed (chunked) answer and a whole (sized) one.
                    stream = !stream;
                    let Ok(resp) = c.request(chat_request(&url, &[], stream)).await else {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                        continue;
                    };
                    let complete = resp.status() == 200 && resp.into_body().collect().await.is_ok();
                    if complete {
                        ok.fetch_add(1, Ordering::SeqCst);
                    }
                }
            })
        })
        .collect();
    (ok, tasks)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_loses_no_answered_request() {
    let up = FakeUpstream::start().await;
    let mut tally = Bin::start(&up.url()).await;
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, tasks) = load(tally.url("/v1/chat/completions"), 16, stop.clone());
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    tally.signal("-TERM");
    let status = tally.wait().await;
    stop.store(true, Ordering::SeqCst);
    for t in tasks {
        let _ = t.await;
    }
    assert!(status.success(), "{status:?}");
    let answered = ok.load(Ordering::SeqCst) as i64;
    let stored = tally.rows("SELECT count(*) FROM requests WHERE status = 200");
    eprintln!("SIGTERM under load: {answered} answered, {stored} stored");
    assert!(answered > 100, "the load ran ({answered})");
    assert_eq!(stored, answered, "every answered request is recorded");
    assert_eq!(
        journal_segments(tally.dir.path()),
        0,
        "a clean stop leaves no journal"
    );
}

/// Waits until the store holds `n` answered requests (a restart writes what the journal
/// kept), and returns what it holds then.
async fn wait_for_answered(tally: &Bin, n: i64) -> i64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let stored = tally.rows("SELECT count(*) FROM requests WHERE status = 200");
        if stored >= n || Instant::now() > deadline {
            return stored;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn journal_segments(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir.join("spool/journal"))
        .map(|d| {
            d.filter(|e| {
                e.as_ref()
                    .is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".log"))
            })
            .count()
        })
        .unwrap_or(0)
}

/// Loads `tally` on 16 connections, kills it with `-9` after `after`, and returns how many
/// requests were answered completely.
pub(crate) async fn kill_under_load(tally: &mut Bin, after: Duration) -> i64 {
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, tasks) = load(tally.url("/v1/chat/completions"), 16, stop.clone());
    tokio::time::sleep(after).await;
    tally.signal("-KILL");
    tally.wait().await;
    stop.store(true, Ordering::SeqCst);
    for t in tasks {
        let _ = t.await;
    }
    ok.load(Ordering::SeqCst) as i64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_load_loses_no_record_of_an_answered_request() {
    let up = FakeUpstream::start().await;
    let mut tally = Bin::start(&up.url()).await;
    let answered = kill_under_load(&mut tally, Duration::from_millis(1_500)).await;
    let before = tally.rows("SELECT count(*) FROM requests WHERE status = 200");
    assert!(answered > 100, "the load ran ({answered})");
    assert_eq!(
        tally.rows("SELECT count(*) FROM pragma_integrity_check WHERE integrity_check = 'ok'"),
        1,
        "the store is intact"
    );
    assert!(
        journal_segments(tally.dir.path()) > 0,
        "the crash left a journal"
    );
    // It starts again on the same store and writes what the journal kept.
    let dir = std::mem::replace(&mut tally.dir, tempfile::tempdir().expect("tempdir"));
    let again = Bin::start_in(&up.url(), dir).await;
    // The store may already hold every answered record (the kill fell after a flush), so
    // the count alone does not say the recovery ran: wait for the recovery itself.
    again
        .wait_for_log("journal recovery done", Duration::from_secs(30))
        .await;
    let stored = wait_for_answered(&again, answered).await;
    eprintln!(
        "kill -9 under load: {answered} answered, {before} stored at the crash, {stored} after the restart"
    );
    // A request can be stored and not counted as answered (the kill came between the
    // record and the client's last byte), never the other way round.
    assert!(
        stored >= answered,
        "lost {} of {answered} answered requests",
        answered - stored
    );
    assert!(
        stored <= answered + 16,
        "{stored} stored: more than one in flight per connection beyond {answered}"
    );
    assert_eq!(
        get(&again.url("/v1/models")).await.0,
        StatusCode::OK,
        "serves after the crash"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_during_journal_recovery_loses_nothing() {
    let up = FakeUpstream::start().await;
    // Nothing reaches the store while it runs: every record is in the journal alone.
    let options = Options {
        rest: "[ingest]\nflush_interval_ms = 600000\nbatch_max_rows = 1000000\n".into(),
        ..Options::default()
    };
    let mut tally =
        Bin::start_with(&up.url(), tempfile::tempdir().expect("tempdir"), &options).await;
    let answered = kill_under_load(&mut tally, Duration::from_millis(1_000)).await;
    assert!(answered > 100, "the load ran ({answered})");
    assert_eq!(
        tally.rows("SELECT count(*) FROM requests"),
        0,
        "the store got nothing"
    );

    // Second run: the store is write-locked, so the recovery is stuck in its first batch
    // when it is killed.
    let dir = std::mem::replace(&mut tally.dir, tempfile::tempdir().expect("tempdir"));
    let lock = rusqlite::Connection::open(dir.path().join("tally.db")).expect("open");
    lock.execute_batch("BEGIN IMMEDIATE").expect("lock");
    let mut second = Bin::start_with(&up.url(), dir, &options).await;
    second
        .wait_for_log("the journal holds records", Duration::from_secs(20))
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !second.log().contains("journal recovery done"),
        "the recovery finished before the kill"
    );
    second.signal("-KILL");
    second.wait().await;
    lock.execute_batch("COMMIT").expect("unlock");
    drop(lock);
    assert!(
        journal_segments(second.dir.path()) > 0,
        "the interrupted recovery left the journal"
    );

    // Third run: everything, once.
    let dir = std::mem::replace(&mut second.dir, tempfile::tempdir().expect("tempdir"));
    let third = Bin::start_with(&up.url(), dir, &options).await;
    let stored = wait_for_answered(&third, answered).await;
    eprintln!("kill -9 during recovery: {answered} answered, {stored} stored after the next start");
    assert!(stored >= answered, "lost {}", answered - stored);
    assert!(stored <= answered + 16, "{stored} stored of {answered}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !third.log().contains("journal recovery done") || journal_segments(third.dir.path()) > 0 {
        assert!(
            Instant::now() < deadline,
            "recovery did not finish: {}",
            third.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_leaving_at_any_point_of_a_stream_leaves_one_record() {
    let up = FakeUpstream::start().await;
    let t = TestTally::start(&up.url()).await;
    let body = json!({"model": "gpt-4o-mini", "stream": true, "messages": []}).to_string();
    let req = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         x-fake-interval-ms: 30\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    // Leave after sending half the request, after the whole request, then after 1, 200, 400,
    // 600 and 800 bytes of the answer (head and events), and after reading it all.
    let cuts: [Option<usize>; 8] = [
        None,
        Some(0),
        Some(1),
        Some(200),
        Some(400),
        Some(600),
        Some(800),
        Some(usize::MAX),
    ];
    let (mut expected, mut unhandled) = (0i64, 0);
    for (i, cut) in cuts.iter().enumerate() {
        let forwarded_before = up.received().len();
        let mut s = TcpStream::connect(t.proxy).await.expect("connect");
        match cut {
            None => {
                s.write_all(&req.as_bytes()[..req.len() - body.len() / 2])
                    .await
                    .expect("write");
            }
            Some(n) => {
                s.write_all(req.as_bytes()).await.expect("write");
                let mut got = 0;
                let mut buf = [0u8; 64];
                while got < *n {
                    match tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await {
                        Ok(Ok(0)) | Err(_) => break,
                        Ok(Ok(k)) => {
                            got += k;
                            if String::from_utf8_lossy(&buf[..k]).contains("[DONE]") {
                                break;
                            }
                        }
                        Ok(Err(_)) => break,
                    }
                }
            }
        }
        drop(s);
        // Each attempt is recorded exactly once, before the next starts. The one exception:
        // a client that sends a request and hangs up at once can be gone before hyper hands
        // the request to Tally; then nothing was forwarded, and there is nothing to record.
        let deadline = Instant::now() + Duration::from_secs(3);
        while t.count() < expected + 1 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if t.count() == expected + 1 {
            expected += 1;
        } else {
            assert_eq!(*cut, Some(0), "attempt {i} left no record");
            assert_eq!(
                up.received().len(),
                forwarded_before,
                "forwarded without a record"
            );
            unhandled += 1;
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(t.count(), expected, "one record per handled attempt");
    assert!(unhandled <= 1);
    let (_, _, b) = get(&t.dashboard_url("/api/requests?limit=100")).await;
    let v: Value = serde_json::from_slice(&b).expect("json");
    let errors: Vec<String> = v["requests"]
        .as_array()
        .expect("rows")
        .iter()
        .map(|r| r["error"].as_str().unwrap_or("").to_owned())
        .collect();
    let disconnected = errors
        .iter()
        .filter(|e| e.contains("disconnect") || e.contains("body"))
        .count();
    assert!(disconnected >= 5, "{errors:?}");
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_idle_connections_do_not_stop_service() {
    let up = FakeUpstream::start().await;
    let tally = Bin::start(&up.url()).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (before, _) = tally.rss_mib();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{}", tally.proxy).parse().expect("addr");
    let mut idle = Vec::with_capacity(10_000);
    for _ in 0..10_000 {
        idle.push(TcpStream::connect(addr).await.expect("connect"));
    }
    // Give the accept loop time to take them all.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    let (status, _, _) = post_json(
        &tally.url("/v1/chat/completions"),
        &[],
        &json!({"model": "gpt-4o-mini", "messages": []}),
    )
    .await;
    let took = started.elapsed();
    assert_eq!(status, 200);
    let (with, _) = tally.rss_mib();
    eprintln!("10,000 idle connections: RSS {before:.1} -> {with:.1} MiB, a request took {took:?}");
    assert!(with - before < 128.0, "{before:.1} -> {with:.1} MiB");
    drop(idle);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unusable_spool_directory_stops_startup_with_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A directory under a regular file can never be created, even by root.
    let blocker = dir.path().join("a-file");
    std::fs::write(&blocker, b"").expect("file");
    let cfg = minimal_config(dir.path(), &blocker.join("spool"));
    let out = tokio::task::spawn_blocking(move || {
        Command::new(TALLY_BIN)
            .args(["--config", cfg.to_str().expect("utf8")])
            .env_remove("TALLY_CLICKHOUSE_URL")
            .output()
    })
    .await
    .expect("join")
    .expect("run");
    assert!(!out.status.success(), "must not run without its spool");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("spool"), "{err}");
}
