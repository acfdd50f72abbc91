//! Every failure gets a clear answer and a record; nothing panics.

use std::time::Duration;

use http::Method;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::*;

async fn latest(tally: &TestTally) -> Value {
    tally.wait_for_rows(1).await;
    let (_, _, body) = get(&tally.dashboard_url("/api/requests?limit=1")).await;
    let v: Value = serde_json::from_slice(&body).expect("json");
    let id = v["requests"][0]["request_id"]
        .as_str()
        .expect("id")
        .to_owned();
    tally.record(&id).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_provider_is_a_404_listing_providers() {
    let up = FakeUpstream::start().await;
    let tally = TestTally::start(&up.url()).await;
    let (status, h, body) =
        post_json(&tally.url("/nosuch/v1/chat/completions"), &[], &json!({})).await;
    assert_eq!(status, 404);
    let v: Value = serde_json::from_slice(&body).expect("json error");
    let providers = v["error"]["providers"]
        .as_array()
        .expect("providers listed");
    for p in ["openai", "anthropic", "groq", "compat"] {
        assert!(providers.iter().any(|x| x == p), "{p} missing from {v}");
    }
    let rec = tally.record(&request_id(&h)).await;
    assert_eq!(rec["status"], 0);
    assert_eq!(rec["refusal"], "tally_unknown_provider");
    assert!(rec["error"]
        .as_str()
        .expect("error")
        .contains("unknown provider"));
    assert!(up.received().is_empty());
    tally.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_tally_header_is_a_400_naming_it_and_never_reaches_upstream() {
    let up = FakeUpstream::start().await;
    let tally = TestTally::start(&up.url()).await;
    let (status, h, body) = post_json(
        &tally.url("/anthropic/v1/messages"),
        &[("Tally-Cache-Ttl", "soon")],
        &json!({}),
    )
    .await;
    assert_eq!(status, 400);
    let v: Value = serde_json::from_slice(&body).expect("json error");
    assert_eq!(v["type"], "error", "Anthropic's error shape: {v}");
    assert_eq!(v["error"]["header"], "tally-cache-ttl");
    assert!(v["error"]["message"]
        .as_str()
        .expect("msg")
        .contains("tally-cache-ttl"));
    let rec = tally.record(&request_id(&h)).await;
    assert_eq!(
        (rec["status"].as_u64(), rec["refusal"].as_str()),
        (Some(0), Some("tally_invalid_header"))
    );
    assert_eq!(
        tally
            .metric("tally_refusals_total", "code=\"tally_invalid_header\"")
            .await,
        1.0
    );
    assert!(rec["error"]
        .as_str()
        .expect("error")
        .contains("tally-cache-ttl"));
    assert!(up.received().is_empty());
    tally.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_upstream_is_a_502_in_the_provider_shape() {
    // A port that was free a moment ago: nothing listens there.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr");
    let tally = TestTally::start(&format!("http://{closed}")).await;
    let (status, h, body) = post_json(
        &tally.url("/v1/chat/completions"),
        &[],
        &json!({"model": "gpt-4o"}),
    )
    .await;
    assert_eq!(status, 502);
    let v: Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(v["error"]["type"], "tally_upstream_unreachable");
    let rec = tally.record(&request_id(&h)).await;
    assert_eq!(rec["status"], 0);
    assert_eq!(rec["refusal"], "tally_upstream_unreachable");
    assert!(rec["ttft_ms"].is_null());
    assert!(rec["error"]
        .as_str()
        .expect("error")
        .contains("unreachable"));
    assert_eq!(rec["model"], "gpt-4o");
    let (status, _, body) = post_json(&tally.url("/anthropic/v1/messages"), &[], &json!({})).await;
    assert_eq!(status, 502);
    assert_eq!(
        serde_json::from_slice::<Value>(&body).expect("json")["type"],
        "error"
    );
    assert_eq!(
        tally
            .metric("tally_upstream_errors_total", "kind=\"connect\"")
            .await,
        2.0
    );
    tally.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_errors_pass_through_and_are_recorded() {
    let up = FakeUpstream::start().await;
    let tally = TestTally::start(&up.url()).await;
    for (mode, status) in [("error500", 500), ("error429", 429)] {
        let h = [("x-fake-mode", mode)];
        let direct = post_json(
            &format!("{}/v1/chat/completions", up.url()),
            &h,
            &json!({"model": "gpt-4o"}),
        )
        .await;
        let (s, rh, body) = post_json(
            &tally.url("/v1/chat/completions"),
            &h,
            &json!({"model": "gpt-4o"}),
        )
        .await;
        assert_eq!(s, status);
        assert_eq!(body, direct.2);
        let rec = tally.record(&request_id(&rh)).await;
        assert_eq!(rec["status"], status);
        assert_eq!(rec["error"], "Fake failure");
        assert!(
            rec["prompt_tokens"].is_null(),
            "no tokens invented for an error"
        );
        assert!(rec["cost_usd"].is_null());
    }
    tally.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_upstream_hits_the_upstream_timeout() {
    let up = FakeUpstream::start().await;
    let tally = TestTally::start_with(&up.url(), |c| c.proxy.upstream_timeout_ms = 200).await;
    let (status, h, _) = post_json(
        &tally.url("/v1/chat/completions"),
        &[("x-fake-delay-ms", "3000")],
        &json!({"model": "gpt-4o"}),
    )
    .await;
    assert_eq!(status, 504);
    let rec = tally.record(&request_id(&h)).await;
    assert!(rec["error"]
        .as_str()
        .expect("error")
        .contains("did not answer within 200 ms"));
    tally.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_reset_mid_stream_reaches_the_client_and_is_recorded() {
    let up = FakeUpstream::start().await;
    let tally = TestTally::start(&up.url()).await;
    let body =
        json!({"model": "gpt-4o", "stream": true, "messages": [{"role": "user", "content": "hi"}]});
    let result = send_checked(
        Method::POST,
        &tally.url("/v1/chat/completions"),
        &[
            ("x-fake-mode", "reset"),
            ("x-fake-interval-ms", "50"),
            ("content-type", "application/json"),
        ],
        body.to_string(),
    )
    .await;
    assert!(
        result.is_err(),
        "the client must see the stream break, not a clean end"
    );
    let rec = latest(&tally).await;
    assert!(
        rec["error"]
            .as_str()
            .expect("error")
            .contains("upstream stream failed"),
        "{rec}"
    );
    assert_eq!(rec["status"], 200);
    assert!(!rec["ttft_ms"].is_null());
    assert_eq!(rec["tokens_estimated"], true, "partial stream is estimated");
    tally.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_stream_hits_the_idle_timeout() {
    let up = FakeUpstream::start().await;
    let tally = TestTally::start_with(&up.url(), |c| c.proxy.idle_timeout_ms = 300).await;
    let body =
        json!({"model": "claude-haiku-4-5", "stream": true, "max_tokens": 5, "messages": []});
    let result = send_checked(
        Method::POST,
        &tally.url("/anthropic/v1/messages"),
        &[
            ("x-fake-mode", "stall"),
            ("content-type", "application/json"),
        ],
        body.to_string(),
    )
    .await;
    assert!(result.is_err());
    let rec = latest(&tally).await;
    assert!(
        rec["error"]
            .as_str()
            .expect("error")
            .contains("sent nothing for 300 ms"),
        "{rec}"
    );
    // message_start arrived before the stall: its partial usage is kept.
    assert_eq!(
        rec["cache_read_tokens"],
        crate::support::fake_upstream::ANTHROPIC_USAGE.2
    );
    assert_eq!(
        tally
            .metric("tally_upstream_errors_total", "kind=\"idle\"")
            .await,
        1.0
    );
    tally.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_disconnecting_mid_stream_is_recorded() {
    let up = FakeUpstream::start().await;
    let tally = TestTally::start(&up.url()).await;
    let body = json!({"model": "gpt-4o-mini", "stream": true, "messages": [{"role": "user", "content": "hi"}]}).to_string();
    let mut sock = tokio::net::TcpStream::connect(tally.proxy)
        .await
        .expect("connect");
    let req = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
         x-fake-interval-ms: 300\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    sock.write_all(req.as_bytes()).await.expect("write");
    let mut buf = vec![0u8; 4096];
    let mut got = Vec::new();
    while !String::from_utf8_lossy(&got).contains("data: ") {
        let n = tokio::time::timeout(Duration::from_secs(10), sock.read(&mut buf))
            .await
            .expect("first event")
            .expect("read");
        assert!(n > 0, "closed early");
        got.extend_from_slice(&buf[..n]);
    }
    drop(sock);
    let rec = latest(&tally).await;
    assert_eq!(
        rec["error"],
        "client disconnected before the response ended"
    );
    assert_eq!(rec["status"], 200);
    assert_eq!(rec["tokens_estimated"], true);
    assert!(rec["completion_tokens"].as_u64().expect("partial estimate") < 5);
    assert_eq!(
        tally.metric("tally_client_disconnects_total", "").await,
        1.0
    );
    tally.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_binary_and_oversized_bodies_pass_through_untouched() {
    let up = FakeUpstream::start().await;
    let tally = TestTally::start_with(&up.url(), |c| c.proxy.max_body_bytes = 1024).await;

    // Malformed JSON: forwarded as is, logged as is.
    let (status, h, _) = send(
        Method::POST,
        &tally.url("/v1/chat/completions"),
        &[],
        "{not json",
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(&up.received()[0].body[..], b"{not json");
    let rec = tally.record(&request_id(&h)).await;
    assert!(rec["model"].is_null());
    assert_eq!(rec["request_body"], "{not json");

    // Binary both ways.
    let bin: Vec<u8> = (0..=255u8).cycle().take(3000).collect();
    let (status, h, body) = send(
        Method::POST,
        &tally.url("/v1/files"),
        &[("x-fake-mode", "binary")],
        bin.clone(),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(&body[..], b"\x00\xff\xfe binary \x89PNG");
    assert_eq!(
        up.received()[1].body,
        bin,
        "a body over the capture limit is forwarded whole"
    );
    let rec = tally.record(&request_id(&h)).await;
    assert_eq!(rec["request_bytes"], 3000);
    assert_eq!(rec["request_body_truncated"], true);
    assert!(rec["error"].is_null());

    // A large JSON upload (1 MB) streams through in full.
    let big = json!({"model": "gpt-4o", "input": "y".repeat(1_000_000)}).to_string();
    let (status, h, _) = send(Method::POST, &tally.url("/v1/embeddings"), &[], big.clone()).await;
    assert_eq!(status, 200);
    assert_eq!(up.received()[2].body.len(), big.len());
    let rec = tally.record(&request_id(&h)).await;
    assert_eq!(rec["request_bytes"], big.len());
    tally.stop().await;
}

/// Found by the `pricing` fuzz target: a non-ASCII model name used to panic in the price
/// matcher when the record was finished, killing the connection and losing the record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_ascii_model_name_is_answered_and_recorded() {
    let up = FakeUpstream::start().await;
    let tally = TestTally::start(&up.url()).await;
    for stream in [false, true] {
        let (status, h, body) = post_json(
            &tally.url("/v1/chat/completions"),
            &[],
            &json!({"model": "xé0123456789", "stream": stream, "messages": []}),
        )
        .await;
        assert_eq!(status, 200);
        assert!(!body.is_empty());
        let rec = tally.record(&request_id(&h)).await;
        assert_eq!(rec["model"], "xé0123456789");
        assert!(rec["cost_usd"].is_null(), "unknown model: {rec}");
        assert!(rec["error"].is_null(), "{rec}");
    }
    tally.stop().await;
}
