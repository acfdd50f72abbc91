//! Regressions of the named-phases issue (#16): what the client sees and what the record says
//! when a stream ends, and usage read as each provider means it. Each failed before its fix.

use std::time::Duration;

use serde_json::{json, Value};
use tally_ingest::Tokens;
use tally_proxy::PricingTable;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::fake_upstream::{
    ANTHROPIC_USAGE, OPENAI_USAGE, RESPONSES_USAGE, WORDS, XAI_USAGE,
};
use crate::support::*;

/// Sends a raw HTTP/1.1 POST of `body` to `path` on Tally's proxy port.
async fn open(tally: &TestTally, path: &str, headers: &[(&str, &str)], body: &Value) -> TcpStream {
    let body = body.to_string();
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(&body);
    let mut sock = TcpStream::connect(tally.proxy).await.expect("connect");
    sock.write_all(req.as_bytes()).await.expect("write");
    sock
}

/// Reads until the event containing `marker` has arrived whole (its blank line included).
async fn read_event(sock: &mut TcpStream, marker: &str) -> String {
    let mut got = Vec::new();
    let mut buf = vec![0u8; 8192];
    loop {
        let text = String::from_utf8_lossy(&got);
        if let Some(i) = text.find(marker) {
            if text[i..].contains("\n\n") {
                return text.into_owned();
            }
        }
        let n = tokio::time::timeout(Duration::from_secs(10), sock.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("{marker:?} never arrived; got {text}"))
            .expect("read");
        assert!(n > 0, "closed before {marker:?}: {text}");
        got.extend_from_slice(&buf[..n]);
    }
}

/// The only record in the store.
async fn only_record(tally: &TestTally) -> Value {
    tally.wait_for_rows(1).await;
    let (_, _, body) = get(&tally.dashboard_url("/api/requests?limit=5")).await;
    let v: Value = serde_json::from_slice(&body).expect("json");
    let rows = v["requests"].as_array().expect("requests");
    assert_eq!(rows.len(), 1, "{v}");
    let id = rows[0]["request_id"].as_str().expect("id").to_owned();
    tally.record(&id).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_usage_stays_hidden_whatever_the_upstreams_json_spacing() {
    let up = FakeUpstream::start().await;
    let tally = TestTally::start(&up.url()).await;
    let body = json!({"model": "gpt-4o-mini", "stream": true,
                      "messages": [{"role": "user", "content": "hi"}]});
    let headers = [("x-fake-mode", "spaced")];
    // What the client gets without Tally: the upstream, asked for no usage.
    let direct = post_json(
        &format!("{}/v1/chat/completions", up.url()),
        &headers,
        &body,
    )
    .await;
    let direct = String::from_utf8(direct.2.to_vec()).expect("utf8");
    assert!(
        direct.contains("\"choices\": [{"),
        "the fake spaces its JSON: {direct}"
    );
    let (status, h, proxied) = post_json(&tally.url("/v1/chat/completions"), &headers, &body).await;
    assert_eq!(status, 200);
    assert_eq!(String::from_utf8(proxied.to_vec()).expect("utf8"), direct);
    // Tally did ask for usage, and read it.
    let sent: Value = serde_json::from_slice(&up.received()[1].body).expect("json");
    assert_eq!(sent["stream_options"]["include_usage"], true);
    let rec = tally.record(&request_id(&h)).await;
    assert_eq!(rec["prompt_tokens"], OPENAI_USAGE.0);
    assert_eq!(rec["completion_tokens"], OPENAI_USAGE.1);
    assert_eq!(rec["tokens_estimated"], false);
    tally.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_read_to_its_end_event_is_complete_though_the_client_closes_first() {
    let anthropic_prompt = ANTHROPIC_USAGE.0 + ANTHROPIC_USAGE.1 + ANTHROPIC_USAGE.2;
    for (path, body, end, prompt) in [
        (
            "/v1/chat/completions",
            json!({"model": "gpt-4o-mini", "stream": true, "messages": []}),
            "data: [DONE]",
            OPENAI_USAGE.0,
        ),
        (
            "/v1/responses",
            json!({"model": "gpt-4.1", "stream": true, "input": "hi"}),
            "event: response.completed",
            RESPONSES_USAGE.0,
        ),
        (
            "/anthropic/v1/messages",
            json!({"model": "claude-haiku-4-5", "stream": true, "max_tokens": 9, "messages": []}),
            "event: message_stop",
            anthropic_prompt,
        ),
    ] {
        let up = FakeUpstream::start().await;
        let tally = TestTally::start(&up.url()).await;
        // The upstream keeps the body open after its end event; the client leaves at once.
        let mut sock = open(&tally, path, &[("x-fake-mode", "linger")], &body).await;
        read_event(&mut sock, end).await;
        drop(sock);
        let rec = only_record(&tally).await;
        assert!(rec["error"].is_null(), "{path}: {rec}");
        assert_eq!(rec["status"], 200, "{path}");
        assert_eq!(rec["prompt_tokens"], prompt, "{path}: {rec}");
        assert_eq!(rec["tokens_estimated"], false, "{path}");
        assert_eq!(
            tally.metric("tally_client_disconnects_total", "").await,
            0.0,
            "{path}"
        );
        tally.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_anthropic_stream_keeps_its_input_and_estimates_its_output() {
    let up = FakeUpstream::start().await;
    let tally = TestTally::start(&up.url()).await;
    let model = "claude-haiku-4-5";
    let body = json!({"model": model, "stream": true, "max_tokens": 64,
                      "messages": [{"role": "user", "content": "hi"}]});
    // message_start, content_block_start, ping, then the five text deltas; then silence.
    let mut sock = open(
        &tally,
        "/anthropic/v1/messages",
        &[("x-fake-mode", "stall8")],
        &body,
    )
    .await;
    read_event(&mut sock, WORDS[4]).await;
    drop(sock);
    let rec = only_record(&tally).await;
    assert_eq!(
        rec["error"],
        "client disconnected before the response ended"
    );
    assert_eq!(
        rec["tokens_estimated"], true,
        "message_start's output_tokens is a placeholder, not a count: {rec}"
    );
    let (input, cache_write, cache_read, _) = ANTHROPIC_USAGE;
    assert_eq!(rec["prompt_tokens"], input + cache_write + cache_read);
    assert_eq!(rec["cache_read_tokens"], cache_read);
    assert_eq!(rec["cache_write_tokens"], cache_write);
    let forwarded = tally_proxy::estimate::count(model, &WORDS.concat());
    assert!(forwarded > 1);
    assert_eq!(rec["completion_tokens"], forwarded, "{rec}");
    tally.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reasoning_reported_outside_completion_is_billed_as_output() {
    let up = FakeUpstream::start().await;
    let tally = TestTally::start_with(&up.url(), |c| {
        c.providers.insert(
            "xai".into(),
            tally_proxy::ProviderConfig {
                base_url: Some(up.url()),
                ..Default::default()
            },
        );
    })
    .await;
    let (prompt, completion, reasoning, total) = XAI_USAGE;
    let billed = Tokens {
        prompt,
        completion: total - prompt,
        reasoning,
        ..Tokens::default()
    };
    assert_eq!(billed.completion, completion + reasoning);
    let cost = PricingTable::builtin()
        .expect("prices")
        .cost("xai", "grok-3-mini", &billed)
        .expect("grok-3-mini is priced");
    for body in [
        json!({"model": "grok-3-mini", "messages": []}),
        json!({"model": "grok-3-mini", "messages": [], "stream": true,
               "stream_options": {"include_usage": true}}),
    ] {
        let (status, h, _) = post_json(
            &tally.url("/xai/v1/chat/completions"),
            &[("x-fake-mode", "xai")],
            &body,
        )
        .await;
        assert_eq!(status, 200);
        let rec = tally.record(&request_id(&h)).await;
        assert_eq!(rec["prompt_tokens"], prompt, "{rec}");
        assert_eq!(rec["completion_tokens"], billed.completion, "{rec}");
        assert_eq!(rec["reasoning_tokens"], reasoning);
        assert_eq!(rec["total_tokens"], total);
        let got = rec["cost_usd"].as_f64().expect("cost");
        assert!((got - cost).abs() < 1e-12, "cost {got} != {cost}");
    }
    tally.stop().await;
}
