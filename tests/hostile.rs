//! Hostile requests on a raw socket: smuggling attempts, header injection, oversized and
//! invalid headers, absolute-form targets that try to pick their own upstream, slow headers.
//! Each gets a clear 4xx (or the connection is closed) and nothing ambiguous reaches the
//! upstream.

use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

/// Sends raw bytes and reads until the server closes or `wait` passes. Returns what came back.
async fn raw(addr: std::net::SocketAddr, bytes: &[u8], wait: Duration) -> String {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    // `Connection: close` after the request line, so the server closes after answering.
    let line_end = bytes
        .windows(2)
        .position(|w| w == b"\r\n")
        .map_or(bytes.len(), |i| i + 2);
    let mut req = bytes[..line_end].to_vec();
    req.extend_from_slice(b"Connection: close\r\n");
    req.extend_from_slice(&bytes[line_end..]);
    s.write_all(&req).await.expect("write");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(wait, s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

fn status_of(resp: &str) -> Option<u16> {
    resp.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

const BODY: &str = r#"{"model":"gpt-4o-mini","messages":[]}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ambiguous_framing_is_refused_and_never_forwarded() {
    let up = FakeUpstream::start().await;
    let t = TestTally::start(&up.url()).await;
    let wait = Duration::from_secs(3);
    // Both Content-Length and chunked: RFC 9112 §6.3 says the transfer coding wins, and hyper
    // drops the length. The upstream gets one framing, matching the bytes that were sent.
    let both = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\
         Transfer-Encoding: chunked\r\n\r\n{:x}\r\n{BODY}\r\n0\r\n\r\n",
        BODY.len()
    );
    let resp = raw(t.proxy, both.as_bytes(), wait).await;
    assert_eq!(status_of(&resp), Some(200), "{resp}");
    let got = up.received().pop().expect("forwarded once");
    assert_eq!(&got.body[..], BODY.as_bytes());
    assert!(!got.headers.contains_key("transfer-encoding"));
    let lengths: Vec<_> = got.headers.get_all("content-length").iter().collect();
    assert_eq!(lengths.len(), 1, "{:?}", got.headers);
    assert_eq!(
        lengths[0].to_str().ok(),
        Some(BODY.len().to_string().as_str())
    );

    let cases: Vec<(&str, String)> = vec![
        (
            "two different Content-Length values",
            format!(
                "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\
                 Content-Length: 4\r\n\r\n{BODY}",
                BODY.len()
            ),
        ),
        (
            "a Transfer-Encoding other than chunked",
            format!(
                "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n{:x}\r\n{BODY}\r\n0\r\n\r\n",
                BODY.len()
            ),
        ),
        (
            "an obs-folded header (CR LF inside a value)",
            format!(
                "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTally-User-Id: alice\r\n \
                 injected: 1\r\nContent-Length: {}\r\n\r\n{BODY}",
                BODY.len()
            ),
        ),
        (
            "a space before the colon",
            format!(
                "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length : 4\r\n\
                 Content-Length: {}\r\n\r\n{BODY}",
                BODY.len()
            ),
        ),
    ];
    for (what, req) in &cases {
        let before = up.received().len();
        let resp = raw(t.proxy, req.as_bytes(), wait).await;
        let status = status_of(&resp);
        // 501 is RFC 9112's answer to a transfer coding the server does not implement.
        assert!(
            status.is_some_and(|s| (400..500).contains(&s) || s == 501),
            "{what}: expected a 4xx, got {:?}",
            resp.lines().next()
        );
        assert_eq!(up.received().len(), before, "{what}: reached the upstream");
    }
    // A bare LF ends a header line (RFC 9112 §2.2 lets a recipient accept it): the upstream
    // gets two well-formed headers, re-serialized with CRLF, never the raw bytes.
    let bare_lf = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTally-User-Id: a\nX-Evil: 1\r\n\
         Content-Length: {}\r\n\r\n{BODY}",
        BODY.len()
    );
    let resp = raw(t.proxy, bare_lf.as_bytes(), wait).await;
    assert_eq!(status_of(&resp), Some(200), "{resp}");
    let got = up.received().pop().expect("forwarded");
    assert_eq!(
        got.headers.get("x-evil").map(|v| v.as_bytes()),
        Some(&b"1"[..])
    );
    assert!(
        !got.headers.contains_key("tally-user-id"),
        "Tally headers are stripped"
    );
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_invalid_headers_get_a_clear_4xx() {
    let up = FakeUpstream::start().await;
    let t = TestTally::start(&up.url()).await;
    let wait = Duration::from_secs(3);

    // 1 MiB of headers.
    let big = format!(
        "GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(1 << 20)
    );
    let resp = raw(t.proxy, big.as_bytes(), wait).await;
    assert_eq!(status_of(&resp), Some(431), "{:?}", resp.lines().next());

    // Invalid UTF-8 in a Tally header: 400 naming the header, upstream not called.
    let mut req =
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTally-User-Id: \xff\xfe\r\n".to_vec();
    req.extend_from_slice(format!("Content-Length: {}\r\n\r\n{BODY}", BODY.len()).as_bytes());
    let before = up.received().len();
    let resp = raw(t.proxy, &req, wait).await;
    assert_eq!(status_of(&resp), Some(400), "{resp}");
    assert!(resp.contains("tally-user-id"), "{resp}");
    assert_eq!(up.received().len(), before);

    // A NUL byte in a header value never parses.
    let resp = raw(
        t.proxy,
        b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n",
        wait,
    )
    .await;
    assert!(
        status_of(&resp).is_some_and(|s| (400..500).contains(&s)),
        "{resp}"
    );
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_cannot_choose_its_upstream() {
    let up = FakeUpstream::start().await;
    let t = TestTally::start(&up.url()).await;
    // Something that must never be called: a listener counting connections.
    let trap = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let trap_addr = trap.local_addr().expect("addr");
    let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let h = hits.clone();
    let trap_task = tokio::spawn(async move {
        while trap.accept().await.is_ok() {
            h.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    });
    let wait = Duration::from_secs(3);
    for req in [
        // Absolute-form target naming another host.
        format!(
            "POST http://{trap_addr}/v1/chat/completions HTTP/1.1\r\nHost: {trap_addr}\r\n\
             Content-Length: {}\r\n\r\n{BODY}",
            BODY.len()
        ),
        // A Host header naming another host.
        format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: {trap_addr}\r\nX-Forwarded-Host: {trap_addr}\r\n\
             Content-Length: {}\r\n\r\n{BODY}",
            BODY.len()
        ),
        // A path that tries to climb out of the provider prefix.
        format!(
            "POST /openai/../../v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{BODY}",
            BODY.len()
        ),
        // A provider name that is a URL.
        format!(
            "POST /http:%2F%2F{trap_addr}/v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{BODY}",
            BODY.len()
        ),
    ] {
        let resp = raw(t.proxy, req.as_bytes(), wait).await;
        assert!(status_of(&resp).is_some(), "an answer: {resp}");
    }
    // CONNECT tunnels are not a proxy feature.
    let resp = raw(
        t.proxy,
        format!("CONNECT {trap_addr} HTTP/1.1\r\nHost: {trap_addr}\r\n\r\n").as_bytes(),
        wait,
    )
    .await;
    assert!(
        status_of(&resp).is_some_and(|s| s >= 400),
        "CONNECT must be refused: {resp}"
    );
    assert_eq!(
        hits.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "no request may reach a host that is not a configured upstream"
    );
    trap_task.abort();
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_headers_are_cut_off_by_the_header_timeout() {
    let up = FakeUpstream::start().await;
    let t = TestTally::start_with(&up.url(), |c| c.proxy.header_read_timeout_ms = 500).await;
    let mut s = TcpStream::connect(t.proxy).await.expect("connect");
    s.write_all(b"GET /v1/models HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("write");
    let started = Instant::now();
    let mut closed = false;
    // One header byte every 100 ms: never finishes the head.
    for _ in 0..50 {
        if s.write_all(b"X").await.is_err() {
            closed = true;
            break;
        }
        let mut buf = [0u8; 256];
        if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(100), s.read(&mut buf)).await
        {
            // An answer (408) or EOF both end the attack.
            let _ = n;
            closed = true;
            break;
        }
    }
    assert!(
        closed,
        "the connection stayed open for 5 s of trickled headers"
    );
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "cut off after {:?}",
        started.elapsed()
    );
    // Normal requests are unaffected.
    let (status, _, body) = get(&t.url("/v1/models")).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let _: Value = serde_json::from_slice(&body).expect("json");
    t.stop().await;
}
