//! Usage, cost, timing and attribution in the stored record, for every endpoint and format.

use serde_json::{json, Value};
use tally_ingest::Tokens;
use tally_proxy::PricingTable;

use crate::support::fake_upstream::{
    ANTHROPIC_USAGE, EMBEDDING_TOKENS, OPENAI_USAGE, RESPONSES_USAGE, WORDS,
};
use crate::support::*;

fn expected_cost(provider: &str, model: &str, t: Tokens) -> f64 {
    PricingTable::builtin()
        .expect("prices")
        .cost(provider, model, &t)
        .expect("priced model")
}

fn assert_tokens(rec: &Value, t: Tokens) {
    assert_eq!(rec["prompt_tokens"], t.prompt, "{rec}");
    assert_eq!(rec["completion_tokens"], t.completion, "{rec}");
    assert_eq!(rec["cache_read_tokens"], t.cache_read, "{rec}");
    assert_eq!(rec["cache_write_tokens"], t.cache_write, "{rec}");
    assert_eq!(rec["reasoning_tokens"], t.reasoning, "{rec}");
    assert_eq!(rec["total_tokens"], t.prompt + t.completion, "{rec}");
}

fn assert_cost(rec: &Value, expected: f64) {
    let got = rec["cost_usd"].as_f64().expect("cost present");
    assert!((got - expected).abs() < 1e-12, "cost {got} != {expected}");
}

fn openai_tokens() -> Tokens {
    let (prompt, completion, cache_read, reasoning) = OPENAI_USAGE;
    Tokens {
        prompt,
        completion,
        cache_read,
        cache_write: 0,
        cache_write_1h: 0,
        reasoning,
    }
}

async fn roundtrip(tally: &TestTally, path: &str, headers: &[(&str, &str)], body: Value) -> Value {
    let (status, h, _) = post_json(&tally.url(path), headers, &body).await;
    assert_eq!(status, 200, "{path}");
    tally.record(&request_id(&h)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_chat_json_and_stream_record_usage_cost_and_attribution() {
    let up = FakeUpstream::start().await;
    let tally = TestTally::start(&up.url()).await;
    let headers = [
        ("authorization", "Bearer sk-proj-secretsecretsecret-abcd"),
        ("Tally-User-Id", "alice"),
        ("Tally-Session-Id", "s-1"),
        ("Tally-Session-Path", "/plan/step-1"),
        ("Tally-Session-Name", "Trip"),
        ("Tally-Property-Env", "prod"),
    ];
    for stream in [false, true] {
        let rec = roundtrip(
            &tally,
            "/v1/chat/completions",
            &headers,
            json!({"model": "gpt-4o", "stream": stream, "messages": [{"role": "user", "content": "hi"}]}),
        )
        .await;
        assert_tokens(&rec, openai_tokens());
        assert_eq!(rec["tokens_estimated"], false);
        // Priced by the dated response model, which falls back to gpt-4o.
        assert_eq!(rec["response_model"], "gpt-4o-2024-08-06");
        assert_cost(&rec, expected_cost("openai", "gpt-4o", openai_tokens()));
        assert_eq!(rec["provider"], "openai");
        assert_eq!(rec["endpoint"], "/v1/chat/completions");
        assert_eq!(rec["method"], "POST");
        assert_eq!(rec["model"], "gpt-4o");
        assert_eq!(rec["status"], 200);
        assert_eq!(rec["stream"], stream);
        assert_eq!(rec["user_id"], "alice");
        assert_eq!(rec["session_id"], "s-1");
        assert_eq!(rec["session_path"], "/plan/step-1");
        assert_eq!(rec["session_name"], "Trip");
        assert_eq!(rec["properties"], json!({"env": "prod"}));
        assert_eq!(rec["api_key_hint"], "sk-…abcd");
        assert_eq!(rec["provider_request_id"], "req_fake_123");
        assert_eq!(rec["cache_status"], "none");
        assert!(rec["error"].is_null());
        assert!(
            rec["ttft_ms"].as_u64().expect("ttft") <= rec["latency_ms"].as_u64().expect("latency")
        );
        assert!(rec["request_bytes"].as_u64().expect("bytes") > 0);
        assert!(rec["response_bytes"].as_u64().expect("bytes") > 0);
        assert!(rec["request_body"]
            .as_str()
            .expect("body")
            .contains("\"hi\""));
        assert!(rec["response_body"]
            .as_str()
            .expect("body")
            .contains("upstream."));
        let ts = rec["ts"].as_str().expect("ts");
        assert!(ts.ends_with('Z') && ts.len() == 24, "{ts}");
        assert!(
            !rec.to_string().contains("secretsecret"),
            "the key leaked into the record"
        );
    }
    tally.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_completions_and_embeddings() {
    let up = FakeUpstream::start().await;
    let tally = TestTally::start(&up.url()).await;
    let (p, c, cached, reasoning) = RESPONSES_USAGE;
    let responses = Tokens {
        prompt: p,
        completion: c,
        cache_read: cached,
        cache_write: 0,
        cache_write_1h: 0,
        reasoning,
    };
    for stream in [false, true] {
        let rec = roundtrip(
            &tally,
            "/v1/responses",
            &[],
            json!({"model": "o4-mini", "input": "hi", "stream": stream}),
        )
        .await;
        assert_tokens(&rec, responses);
        assert_cost(&rec, expected_cost("openai", "o4-mini", responses));
        assert_eq!(rec["provider_request_id"], "req_fake_123");

        let rec = roundtrip(
            &tally,
            "/v1/completions",
            &[],
            json!({"model": "gpt-3.5-turbo-instruct", "prompt": "hi", "stream": stream}),
        )
        .await;
        let t = Tokens {
            prompt: OPENAI_USAGE.0,
            completion: OPENAI_USAGE.1,
            ..Tokens::default()
        };
        assert_tokens(&rec, t);
        assert_eq!(
            rec["tokens_estimated"], false,
            "legacy completions stream got usage injected"
        );
        assert_cost(&rec, expected_cost("openai", "gpt-3.5-turbo-instruct", t));
    }
    let rec = roundtrip(
        &tally,
        "/v1/embeddings",
        &[],
        json!({"model": "text-embedding-3-small", "input": "hi"}),
    )
    .await;
    let t = Tokens {
        prompt: EMBEDDING_TOKENS,
        ..Tokens::default()
    };
    assert_tokens(&rec, t);
    assert_cost(&rec, expected_cost("openai", "text-embedding-3-small", t));
    tally.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_json_and_stream_count_cache_in_prompt() {
    let up = FakeUpstream::start().await;
    let tally = TestTally::start(&up.url()).await;
    let (input, cache_write, cache_read, output) = ANTHROPIC_USAGE;
    let t = Tokens {
        prompt: input + cache_write + cache_read,
        completion: output,
        cache_read,
        cache_write,
        cache_write_1h: 0,
        reasoning: 0,
    };
    for stream in [false, true] {
        let rec = roundtrip(
            &tally,
            "/anthropic/v1/messages",
            &[("x-api-key", "sk-ant-api03-abcdefghijkl-wxyz")],
            json!({"model": "claude-sonnet-4-5", "max_tokens": 50, "stream": stream,
                   "metadata": {"user_id": "bob"}, "messages": [{"role": "user", "content": "hi"}]}),
        )
        .await;
        assert_tokens(&rec, t);
        assert_cost(&rec, expected_cost("anthropic", "claude-sonnet-4-5", t));
        assert_eq!(
            rec["user_id"], "bob",
            "metadata.user_id is the fallback user"
        );
        assert_eq!(rec["api_key_hint"], "sk-…wxyz");
        assert_eq!(rec["provider"], "anthropic");
        assert_eq!(rec["endpoint"], "/v1/messages");
        assert_eq!(rec["provider_request_id"], "req_fake_123");
    }
    tally.stop().await;
}

/// Issue 22: one-hour cache writes, web searches and the service tier reach the record and its
/// cost, streamed or not. The costs are worked by hand from the providers' pages:
/// claude-sonnet-4-6 is $3 input, $0.30 cache read, $3.75 five-minute and $6 one-hour cache
/// writes, $15 output per 1M, and $10 per 1,000 web searches (platform.claude.com/docs/en/
/// about-claude/pricing); gpt-5 under `flex` is $0.625 input, $0.0625 cached, $5 output
/// (developers.openai.com/api/docs/pricing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cache_duration_web_searches_and_service_tier_set_the_cost() {
    use crate::support::fake_upstream::{ANTHROPIC_1H_WRITES, ANTHROPIC_SEARCHES};
    let up = FakeUpstream::start().await;
    let tally = TestTally::start(&up.url()).await;
    let billing = ("x-fake-mode", "billing");
    let (input, cache_write, cache_read, output) = ANTHROPIC_USAGE;
    let claude = (input as f64 * 3.0
        + cache_read as f64 * 0.30
        + (cache_write - ANTHROPIC_1H_WRITES) as f64 * 3.75
        + ANTHROPIC_1H_WRITES as f64 * 6.0
        + output as f64 * 15.0)
        / 1e6
        + ANTHROPIC_SEARCHES as f64 * 0.01;
    let (prompt, completion, cached, _) = OPENAI_USAGE;
    let flex =
        ((prompt - cached) as f64 * 0.625 + cached as f64 * 0.0625 + completion as f64 * 5.0) / 1e6;
    for stream in [false, true] {
        let rec = roundtrip(
            &tally,
            "/anthropic/v1/messages",
            &[("x-api-key", "sk-ant-api03-abcdefghijkl-wxyz"), billing],
            json!({"model": "claude-sonnet-4-6", "max_tokens": 50, "stream": stream,
                   "messages": [{"role": "user", "content": "hi"}]}),
        )
        .await;
        assert_eq!(rec["cache_write_tokens"], cache_write, "{rec}");
        assert_eq!(rec["cache_write_1h_tokens"], ANTHROPIC_1H_WRITES, "{rec}");
        assert_eq!(rec["web_search_calls"], ANTHROPIC_SEARCHES, "{rec}");
        assert_eq!(rec["service_tier"], "standard", "{rec}");
        assert_cost(&rec, claude);

        let rec = roundtrip(
            &tally,
            "/v1/chat/completions",
            &[("authorization", "Bearer sk-proj-abc"), billing],
            json!({"model": "gpt-5", "stream": stream, "messages": [{"role": "user", "content": "hi"}]}),
        )
        .await;
        assert_eq!(rec["service_tier"], "flex", "stream {stream}: {rec}");
        assert_eq!(rec["web_search_calls"], 0, "{rec}");
        assert_cost(&rec, flex);
    }
    tally.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_without_usage_are_estimated_and_marked() {
    let up = FakeUpstream::start().await;
    let tally = TestTally::start(&up.url()).await;
    let completion = tally_proxy::estimate::count("gpt-4o-mini", &WORDS.concat());
    // A passthrough provider: nothing injected, so no usage arrives.
    let body = json!({"model": "gpt-4o-mini", "stream": true, "user": "carol",
                      "messages": [{"role": "user", "content": "Say hello"}]});
    let rec = roundtrip(&tally, "/compat/v1/chat/completions", &[], body.clone()).await;
    assert_eq!(rec["tokens_estimated"], true);
    assert_eq!(rec["completion_tokens"], completion);
    assert!(rec["prompt_tokens"].as_u64().expect("prompt") > 0);
    assert!(rec["cost_usd"].as_f64().expect("priced") > 0.0);
    assert_eq!(
        rec["user_id"], "carol",
        "the body's user field is the fallback user"
    );
    assert!(!String::from_utf8_lossy(&up.received()[0].body).contains("stream_options"));

    // An upstream that ignores the injected include_usage: still estimated, never zero.
    let rec = roundtrip(
        &tally,
        "/v1/chat/completions",
        &[("x-fake-mode", "no-usage")],
        body,
    )
    .await;
    assert_eq!(rec["tokens_estimated"], true);
    assert_eq!(rec["completion_tokens"], completion);
    assert!(tally.metric("tally_tokens_estimated_total", "").await >= 2.0);
    tally.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_model_has_null_cost_and_overrides_apply() {
    let up = FakeUpstream::start().await;
    let tally = TestTally::start_with(&up.url(), |c| {
        c.pricing.models.insert(
            "house-model".into(),
            tally_proxy::Price {
                input: 1.0,
                output: 2.0,
                cached_input: None,
                cache_write: None,
                reasoning: None,
                ..Default::default()
            },
        );
    })
    .await;
    let rec = roundtrip(
        &tally,
        "/v1/chat/completions",
        &[],
        json!({"model": "mystery-model-9", "messages": []}),
    )
    .await;
    assert_eq!(rec["prompt_tokens"], OPENAI_USAGE.0);
    assert!(
        rec["cost_usd"].is_null(),
        "unknown model must not cost 0: {rec}"
    );
    assert_eq!(tally.metric("tally_unpriced_requests_total", "").await, 1.0);

    let rec = roundtrip(
        &tally,
        "/v1/chat/completions",
        &[],
        json!({"model": "house-model", "messages": []}),
    )
    .await;
    // The response model is "house-model-2024-08-06": a dated name falls back to the override.
    let (p, c, ..) = OPENAI_USAGE;
    assert_cost(&rec, (p as f64 * 1.0 + c as f64 * 2.0) / 1e6);

    // The models page lists what was seen without a price, and how to price it; a name
    // that could be markup is shown as text.
    let sly = "<b>x</b>\"model";
    roundtrip(
        &tally,
        "/v1/chat/completions",
        &[],
        json!({"model": sly, "messages": []}),
    )
    .await;
    let (_, _, body) = get(&tally.dashboard_url("/api/models?range=24h")).await;
    let v: Value = serde_json::from_slice(&body).expect("json");
    let unpriced = v["unpriced"].as_array().expect("unpriced list");
    let names: Vec<_> = unpriced.iter().map(|u| u["model"].as_str()).collect();
    assert_eq!(
        names,
        [Some("<b>x</b>\"model"), Some("mystery-model-9")],
        "{v}"
    );
    assert_eq!(unpriced[1]["requests"], 1);
    assert!(
        unpriced[1]["hint"]
            .as_str()
            .is_some_and(|h| h.starts_with("[pricing.models.\"mystery-model-9\"]")),
        "{v}"
    );
    let (_, _, page) = get(&tally.dashboard_url("/models?range=24h")).await;
    let page = String::from_utf8_lossy(&page);
    assert!(page.contains("Unpriced models") && page.contains("mystery-model-9"));
    let at = page.find("id=\"unpriced\"").expect("section");
    let section = &page[at..];
    assert!(!page.contains("<b>x</b>"), "{section}");
    assert!(section.contains("&#60;b&#62;x&#60;/b&#62;"), "{section}");
    tally.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn omitted_and_truncated_bodies() {
    let up = FakeUpstream::start().await;
    let tally = TestTally::start_with(&up.url(), |c| c.proxy.max_body_bytes = 64).await;
    let body =
        json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "x".repeat(500)}]});
    let direct = post_json(&format!("{}/v1/chat/completions", up.url()), &[], &body).await;
    let (status, h, bytes) = post_json(&tally.url("/v1/chat/completions"), &[], &body).await;
    assert_eq!(status, 200);
    assert_eq!(
        bytes, direct.2,
        "truncating the log must not truncate the response"
    );
    assert_eq!(
        up.received()[1].body,
        up.received()[0].body,
        "nor the request"
    );
    let rec = tally.record(&request_id(&h)).await;
    assert_eq!(rec["request_body_truncated"], true);
    assert_eq!(rec["response_body_truncated"], true);
    assert_eq!(rec["request_body"].as_str().expect("head").len(), 64);
    assert_eq!(rec["request_bytes"], body.to_string().len());
    assert_eq!(rec["response_bytes"], direct.2.len());

    let (_, h, _) = post_json(
        &tally.url("/v1/chat/completions"),
        &[("Tally-Omit-Bodies", "true")],
        &json!({"model": "gpt-4o"}),
    )
    .await;
    let rec = tally.record(&request_id(&h)).await;
    assert!(
        rec["request_body"].is_null() && rec["response_body"].is_null(),
        "{rec}"
    );
    assert_eq!(
        rec["prompt_tokens"], OPENAI_USAGE.0,
        "usage is still read when bodies are omitted"
    );
    tally.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_lists_newest_first_with_filters_and_cursor() {
    let up = FakeUpstream::start().await;
    let tally = TestTally::start(&up.url()).await;
    for (user, env) in [
        ("u1", "prod"),
        ("u2", "dev"),
        ("u1", "dev"),
        ("u3", "prod"),
        ("u1", "prod"),
    ] {
        let h = [("Tally-User-Id", user), ("Tally-Property-Env", env)];
        post_json(
            &tally.url("/v1/chat/completions"),
            &h,
            &json!({"model": "gpt-4o"}),
        )
        .await;
    }
    tally.wait_for_rows(5).await;
    let list = |q: &str| {
        let url = tally.dashboard_url(&format!("/api/requests{q}"));
        async move {
            let (status, _, body) = get(&url).await;
            assert_eq!(status, 200, "{url}");
            serde_json::from_slice::<Value>(&body).expect("json")
        }
    };
    let all = list("").await;
    let rows = all["requests"].as_array().expect("array");
    assert_eq!(rows.len(), 5);
    assert!(
        rows.iter().all(|r| r.get("request_body").is_none()),
        "list has no bodies"
    );
    let ts: Vec<&str> = rows.iter().map(|r| r["ts"].as_str().expect("ts")).collect();
    assert!(ts.windows(2).all(|w| w[0] >= w[1]), "newest first: {ts:?}");

    assert_eq!(
        list("?user_id=u1").await["requests"]
            .as_array()
            .expect("a")
            .len(),
        3
    );
    assert_eq!(
        list("?user_id=u1&property.env=prod").await["requests"]
            .as_array()
            .expect("a")
            .len(),
        2
    );
    assert_eq!(
        list("?property.Env=dev").await["requests"]
            .as_array()
            .expect("a")
            .len(),
        2
    );
    assert_eq!(
        list("?status=2xx&model=gpt-4o&provider=openai").await["requests"]
            .as_array()
            .expect("a")
            .len(),
        5
    );
    assert_eq!(
        list("?status=500").await["requests"]
            .as_array()
            .expect("a")
            .len(),
        0
    );

    // Pages of two walk all five rows exactly once.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let q = match &cursor {
            Some(c) => format!("?limit=2&cursor={c}"),
            None => "?limit=2".into(),
        };
        let page = list(&q).await;
        for r in page["requests"].as_array().expect("a") {
            seen.push(r["request_id"].as_str().expect("id").to_owned());
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    let expected: Vec<String> = rows
        .iter()
        .map(|r| r["request_id"].as_str().expect("id").to_owned())
        .collect();
    assert_eq!(seen, expected);

    let (status, _, body) = get(&tally.dashboard_url("/api/requests?limit=abc")).await;
    assert_eq!(status, 400);
    assert!(String::from_utf8_lossy(&body).contains("limit"));
    let (status, _, _) = get(&tally.dashboard_url("/api/requests/not-a-uuid")).await;
    assert_eq!(status, 400);
    let (status, _, _) =
        get(&tally.dashboard_url("/api/requests/01a20128-b18c-7331-9460-c5e047af8f4f")).await;
    assert_eq!(status, 404);
    tally.stop().await;
}
