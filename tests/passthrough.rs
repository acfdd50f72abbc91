//! Bytes in, bytes out: what the client and the upstream see through Tally is what they would
//! see without it.

use http::Method;
use serde_json::{json, Value};

use crate::support::*;

fn chat(stream: bool) -> Value {
    json!({"model": "gpt-4o", "stream": stream, "messages": [{"role": "user", "content": "Say hello"}]})
}

/// Headers the upstream saw, minus those that legitimately differ per connection.
fn comparable(r: &fake_upstream::Received) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = r
        .headers
        .iter()
        .filter(|(k, _)| !matches!(k.as_str(), "host" | "content-length"))
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("?").to_owned()))
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_streaming_response_and_forwarded_headers_are_unchanged() {
    let up = FakeUpstream::start().await;
    let tally = TestTally::start(&up.url()).await;
    let common = [
        ("authorization", "Bearer sk-test-0123456789abcdef"),
        ("x-custom", "kept"),
        ("openai-organization", "org-1"),
    ];
    let direct = post_json(
        &format!("{}/v1/chat/completions", up.url()),
        &common,
        &chat(false),
    )
    .await;
    let mut tagged = common.to_vec();
    tagged.extend([
        ("Tally-User-Id", "alice"),
        ("Tally-Property-Env", "prod"),
        ("Helicone-Session-Id", "s-9"),
    ]);
    let proxied = post_json(&tally.url("/v1/chat/completions"), &tagged, &chat(false)).await;

    assert_eq!(proxied.0, direct.0);
    assert_eq!(proxied.2, direct.2, "body bytes differ");
    assert_eq!(
        proxied.1.get("x-fake-upstream"),
        direct.1.get("x-fake-upstream")
    );
    assert!(proxied.1.contains_key("tally-request-id"));

    let received = up.received();
    assert_eq!(received.len(), 2);
    assert_eq!(
        received[0].body, received[1].body,
        "request body was altered"
    );
    assert_eq!(received[1].path_and_query, "/v1/chat/completions");
    assert_eq!(
        comparable(&received[0]),
        comparable(&received[1]),
        "forwarded headers differ"
    );
    assert!(!received[1]
        .headers
        .keys()
        .any(|k| k.as_str().starts_with("tally-") || k.as_str().starts_with("helicone-")));
    tally.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_string_and_prefix_routing_reach_the_upstream() {
    let up = FakeUpstream::start().await;
    let tally = TestTally::start(&up.url()).await;
    let (status, _, _) = send(
        Method::GET,
        &tally.url("/openai/v1/models?limit=2&after=x"),
        &[],
        "",
    )
    .await;
    assert_eq!(status, 200);
    let (status, _, _) = send(Method::GET, &tally.url("/v1/models"), &[], "").await;
    assert_eq!(status, 200);
    let paths: Vec<String> = up
        .received()
        .iter()
        .map(|r| r.path_and_query.clone())
        .collect();
    assert_eq!(paths, vec!["/v1/models?limit=2&after=x", "/v1/models"]);
    tally.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_stream_usage_is_invisible_to_the_client() {
    let up = FakeUpstream::start().await;
    let tally = TestTally::start(&up.url()).await;
    let direct = post_json(
        &format!("{}/v1/chat/completions", up.url()),
        &[],
        &chat(true),
    )
    .await;
    let proxied = post_json(&tally.url("/v1/chat/completions"), &[], &chat(true)).await;
    assert_eq!(
        String::from_utf8_lossy(&proxied.2),
        String::from_utf8_lossy(&direct.2),
        "client saw a different stream"
    );
    assert!(!String::from_utf8_lossy(&proxied.2).contains("usage"));

    // The upstream was asked for usage, and nothing else about the body changed.
    let received = up.received();
    let sent: Value = serde_json::from_slice(&received[1].body).expect("json");
    assert_eq!(sent["stream_options"]["include_usage"], true);
    let mut without = sent.clone();
    without
        .as_object_mut()
        .expect("object")
        .remove("stream_options");
    assert_eq!(without, chat(true));

    let rec = tally.record(&request_id(&proxied.1)).await;
    assert_eq!(rec["prompt_tokens"], fake_upstream::OPENAI_USAGE.0);
    assert_eq!(rec["tokens_estimated"], false);
    tally.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_that_asks_for_usage_gets_the_upstream_stream_verbatim() {
    let up = FakeUpstream::start().await;
    let tally = TestTally::start(&up.url()).await;
    let mut body = chat(true);
    body["stream_options"] = json!({"include_usage": true});
    let direct = post_json(&format!("{}/v1/chat/completions", up.url()), &[], &body).await;
    let proxied = post_json(&tally.url("/v1/chat/completions"), &[], &body).await;
    assert_eq!(proxied.2, direct.2);
    assert!(String::from_utf8_lossy(&proxied.2).contains("\"usage\":{"));
    assert_eq!(up.received()[1].body, up.received()[0].body);
    tally.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_and_responses_streams_are_byte_identical() {
    let up = FakeUpstream::start().await;
    let tally = TestTally::start(&up.url()).await;
    let msg = json!({"model": "claude-sonnet-4-5", "max_tokens": 64, "stream": true,
                     "messages": [{"role": "user", "content": "hi"}]});
    let h = [
        ("x-api-key", "sk-ant-api03-0123456789-wxyz"),
        ("anthropic-version", "2023-06-01"),
    ];
    let direct = post_json(&format!("{}/v1/messages", up.url()), &h, &msg).await;
    let proxied = post_json(&tally.url("/anthropic/v1/messages"), &h, &msg).await;
    assert_eq!(proxied.2, direct.2);
    assert_eq!(up.received()[1].path_and_query, "/v1/messages");

    let resp = json!({"model": "gpt-4.1", "stream": true, "input": "hi"});
    let direct = post_json(&format!("{}/v1/responses", up.url()), &[], &resp).await;
    let proxied = post_json(&tally.url("/v1/responses"), &[], &resp).await;
    assert_eq!(proxied.2, direct.2);
    assert_eq!(
        up.received()[3].body,
        up.received()[2].body,
        "Responses API bodies are not rewritten"
    );
    tally.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compressed_response_passes_through_compressed_and_is_still_parsed() {
    let up = FakeUpstream::start().await;
    let tally = TestTally::start(&up.url()).await;
    let h = [("x-fake-mode", "gzip"), ("accept-encoding", "gzip")];
    let direct = post_json(
        &format!("{}/v1/chat/completions", up.url()),
        &h,
        &chat(false),
    )
    .await;
    let proxied = post_json(&tally.url("/v1/chat/completions"), &h, &chat(false)).await;
    assert_eq!(
        proxied.1.get("content-encoding").map(|v| v.to_str().ok()),
        Some(Some("gzip"))
    );
    assert_eq!(proxied.2, direct.2);
    let rec = tally.record(&request_id(&proxied.1)).await;
    assert_eq!(rec["prompt_tokens"], fake_upstream::OPENAI_USAGE.0);
    assert!(rec["response_body"]
        .as_str()
        .expect("decoded body")
        .contains("Hello"));
    tally.stop().await;
}
