//! Concurrency: many streams at once, every one recorded.

use serde_json::json;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_streams_lose_no_record() {
    let up = FakeUpstream::start().await;
    let tally = TestTally::start(&up.url()).await;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..200 {
        let url = tally.url(if i % 2 == 0 {
            "/v1/chat/completions"
        } else {
            "/anthropic/v1/messages"
        });
        tasks.spawn(async move {
            let user = format!("user-{i}");
            let body = json!({"model": "gpt-4o-mini", "stream": true, "max_tokens": 5,
                              "messages": [{"role": "user", "content": "hi"}]});
            let (status, _, bytes) = post_json(
                &url,
                &[("Tally-User-Id", &user), ("x-fake-interval-ms", "5")],
                &body,
            )
            .await;
            assert_eq!(status, 200);
            assert!(!bytes.is_empty());
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.expect("request task");
    }
    tally.wait_for_rows(200).await;
    let conn = rusqlite::Connection::open(&tally.db).expect("db");
    let (n, users, with_tokens): (i64, i64, i64) = conn
        .query_row(
            "SELECT count(*), count(DISTINCT user_id), count(prompt_tokens) FROM requests WHERE tokens_estimated = 0",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .expect("query");
    assert_eq!((n, users, with_tokens), (200, 200, 200));
    assert_eq!(tally.metric("tally_records_dropped_total", "").await, 0.0);
    assert_eq!(tally.metric("tally_proxy_in_flight", "").await, 0.0);
    tally.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_right_after_estimated_streams_keeps_every_record() {
    let up = FakeUpstream::start().await;
    let tally = TestTally::start(&up.url()).await;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..20 {
        // `compat` is a passthrough provider: no usage arrives, so each record waits for a
        // token estimate on a blocking thread.
        let url = tally.url("/compat/v1/chat/completions");
        tasks.spawn(async move {
            let body = json!({"model": "gpt-4o-mini", "stream": true,
                              "messages": [{"role": "user", "content": "x ".repeat(5000)}]});
            post_json(&url, &[], &body).await.0
        });
    }
    while let Some(r) = tasks.join_next().await {
        assert_eq!(r.expect("task"), 200);
    }
    let db = tally.db.clone();
    let _dir = tally.stop().await;
    let conn = rusqlite::Connection::open(&db).expect("db");
    let (n, estimated): (i64, i64) = conn
        .query_row(
            "SELECT count(*), sum(tokens_estimated) FROM requests",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .expect("query");
    assert_eq!((n, estimated), (20, 20));
}

/// Every event loop accepts from one socket, and the one already awake wins nearly every
/// accept; each new connection must still end up on the loop with the fewest, and a
/// connection handed from one loop to another must be served like any other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_connections_are_spread_evenly_over_the_event_loops() {
    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};
    use hyper_util::rt::TokioIo;

    let up = FakeUpstream::start().await;
    let tally = TestTally::start_with(&up.url(), |c| c.proxy.threads = 3).await;
    let body = json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]});
    let mut held = Vec::new();
    for i in 0..9 {
        let stream = tokio::net::TcpStream::connect(tally.proxy)
            .await
            .expect("connect");
        let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("handshake");
        tokio::spawn(conn);
        // Two requests per connection: a handed-over connection keeps serving.
        for _ in 0..2 {
            let req = http::Request::post("/v1/chat/completions")
                .header("host", "tally")
                .header("content-type", "application/json")
                .header("Tally-User-Id", format!("conn-{i}"))
                .body(Full::new(Bytes::from(body.to_string())))
                .expect("request");
            tx.ready().await.expect("connection ready");
            let resp = tx.send_request(req).await.expect("response");
            assert_eq!(resp.status(), 200);
            resp.into_body().collect().await.expect("body");
        }
        held.push(tx);
    }
    // Each connection was accepted (and counted) before the next one connected.
    for l in 0..3 {
        let open = tally
            .metric("tally_proxy_connections", &format!("event_loop=\"{l}\""))
            .await;
        assert_eq!(open, 3.0, "event loop {l}");
    }
    drop(held);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while tally.metric("tally_proxy_connections", "").await != 0.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "closed connections still counted"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    tally.wait_for_rows(18).await;
    tally.stop().await;
}
