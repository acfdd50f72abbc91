//! #17, Gemini API: the real google-genai SDK through Tally with only its base URL changed;
//! both stream framings byte for byte with exact usage; keys Tally holds.

use serde_json::{json, Value};

use crate::support::fake_upstream::{GEMINI_USAGE, WORDS};
use crate::support::*;

const KEY: &str = "AIzaSyFAKE-gemini-key-0123456789wxyz";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_google_genai_sdk_works_unmodified_and_is_recorded_exactly() {
    let up = FakeUpstream::start().await;
    let tally = TestTally::start(&up.url()).await;
    let proxy = format!("http://{}", tally.proxy);
    let results = run_sdk_script("gemini.py", &[&proxy, KEY]).await;
    let (prompt, candidates, cached, thoughts) = GEMINI_USAGE;
    assert_eq!(results["json"]["text"], WORDS.concat());
    assert_eq!(results["stream"]["text"], WORDS.concat());
    assert_eq!(results["count"]["total"], prompt);
    for call in ["json", "stream"] {
        let id = results[call]["id"]
            .as_str()
            .unwrap_or_else(|| panic!("{call}: the SDK saw no Tally-Request-Id"));
        let rec = tally.record(id).await;
        assert_eq!(rec["provider"], "google", "{call}");
        assert_eq!(rec["model"], "gemini-2.0-flash", "{call}");
        assert_eq!(rec["stream"], call == "stream", "{call}");
        assert_eq!(rec["prompt_tokens"], prompt, "{call}: {rec}");
        assert_eq!(rec["completion_tokens"], candidates + thoughts, "{call}");
        assert_eq!(rec["cache_read_tokens"], cached, "{call}");
        assert_eq!(rec["reasoning_tokens"], thoughts, "{call}");
        assert_eq!(rec["tokens_estimated"], false, "{call}");
        assert!(rec["error"].is_null(), "{call}: {}", rec["error"]);
        // prices.toml: gemini-2.0-flash $0.10 in, $0.025 cached, $0.40 out per 1M tokens.
        let cost = ((prompt - cached) as f64 * 0.10
            + cached as f64 * 0.025
            + (candidates + thoughts) as f64 * 0.40)
            / 1e6;
        let got = rec["cost_usd"].as_f64().expect("priced");
        assert!((got - cost).abs() < 1e-12, "{call}: cost {got} != {cost}");
        assert_eq!(rec["user_id"], "alice");
        assert!(rec["api_key_hint"]
            .as_str()
            .expect("hint")
            .ends_with("…wxyz"));
        assert!(!rec["endpoint"].as_str().expect("endpoint").contains("key"));
    }
    // Embeddings carry no usage on the Gemini API: estimated from the texts, and priced.
    assert_eq!(results["embed"]["vectors"], 2);
    let rec = tally
        .record(results["embed"]["id"].as_str().expect("embed id"))
        .await;
    assert_eq!(rec["model"], "gemini-embedding-001");
    assert!(rec["endpoint"]
        .as_str()
        .is_some_and(|e| e.ends_with(":batchEmbedContents")));
    assert_eq!(rec["tokens_estimated"], true, "{rec}");
    let prompt = rec["prompt_tokens"].as_u64().expect("estimated");
    assert!((8..=16).contains(&prompt), "two short texts: {prompt}");
    assert_eq!(rec["completion_tokens"], 0);
    let got = rec["cost_usd"].as_f64().expect("priced");
    assert!((got - prompt as f64 * 0.15 / 1e6).abs() < 1e-12);
    let id = results["count"]["id"].as_str().expect("count id");
    let rec = tally.record(id).await;
    assert_eq!(rec["prompt_tokens"], 0, "countTokens is free: {rec}");
    assert_eq!(rec["tokens_estimated"], false);
    assert_eq!(rec["cost_usd"], 0.0);
    for r in up.received() {
        assert_eq!(
            r.headers.get("x-goog-api-key").map(|v| v.as_bytes()),
            Some(KEY.as_bytes())
        );
        assert!(!r.headers.contains_key("tally-user-id"));
    }
    let dir = tally.stop().await;
    let holding = files_holding(dir.path(), KEY);
    assert!(holding.is_empty(), "the key is in {holding:?}");
}

/// Both framings of `streamGenerateContent` reach the client as the upstream sent them, and
/// each record has the final counts; a `?key=` never reaches the record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_stream_framings_pass_byte_for_byte_with_exact_usage() {
    let up = FakeUpstream::start().await;
    let tally = TestTally::start(&up.url()).await;
    let body = json!({"contents": [{"role": "user", "parts": [{"text": "Say hello"}]}]});
    for query in [
        "alt=sse&key=AIzaSyQUERY-key-0123456789abcd",
        "key=AIzaSyQUERY-key-0123456789abcd",
    ] {
        let path = format!("/v1beta/models/gemini-2.5-flash:streamGenerateContent?{query}");
        let (ds, dh, direct) = post_json(&format!("{}{path}", up.url()), &[], &body).await;
        let (ps, ph, proxied) = post_json(&tally.url(&format!("/google{path}")), &[], &body).await;
        assert_eq!((ds.as_u16(), ps.as_u16()), (200, 200));
        assert_eq!(direct, proxied, "{query}: bytes differ");
        assert_eq!(dh.get("content-type"), ph.get("content-type"));
        let rec = tally.record(&request_id(&ph)).await;
        assert_eq!(rec["model"], "gemini-2.5-flash");
        assert_eq!(rec["response_model"], "gemini-2.5-flash");
        assert_eq!(rec["prompt_tokens"], GEMINI_USAGE.0, "{query}: {rec}");
        assert_eq!(
            rec["completion_tokens"],
            GEMINI_USAGE.1 + GEMINI_USAGE.3,
            "{query}"
        );
        assert_eq!(rec["tokens_estimated"], false, "{query}");
        assert!(rec["error"].is_null(), "{query}: {}", rec["error"]);
        assert_eq!(
            rec["api_key_hint"], "…abcd",
            "{query}: the hint of the query key"
        );
        let stored = rec.to_string();
        assert!(!stored.contains("AIzaSyQUERY-key"), "{query}: {stored}");
    }
    tally.stop().await;
}

/// `[providers.X] api_key`: a request without a key gets the one Tally holds; a request with
/// its own keeps it; a held key that is configured but missing is a 401 naming the setting,
/// and the upstream is not called.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_tally_holds_are_sent_when_a_request_has_none() {
    let up = FakeUpstream::start().await;
    let dir = tempfile::tempdir().expect("dir");
    let key_file = dir.path().join("google.key");
    std::fs::write(&key_file, format!("{KEY}\n")).expect("key file");
    let tally = TestTally::start_with(&up.url(), |c| {
        c.providers.get_mut("google").expect("google").api_key =
            Some(tally_proxy::providers::SecretSource::File(key_file.clone()));
        c.providers.get_mut("anthropic").expect("anthropic").api_key = Some(
            tally_proxy::providers::SecretSource::Env("TALLY_TEST_UNSET_ANTHROPIC_KEY".into()),
        );
    })
    .await;
    let body = json!({"contents": [{"parts": [{"text": "hi"}]}]});
    let url = tally.url("/google/v1beta/models/gemini-2.0-flash:generateContent");
    let (status, h, _) = post_json(&url, &[], &body).await;
    assert_eq!(status, 200);
    let sent = up.received().pop().expect("forwarded");
    assert_eq!(
        sent.headers.get("x-goog-api-key").map(|v| v.as_bytes()),
        Some(KEY.as_bytes())
    );
    let rec = tally.record(&request_id(&h)).await;
    assert_eq!(rec["api_key_hint"], "…wxyz");

    let own = "AIzaSyOWN-key-of-the-caller-0000";
    let (status, _, _) = post_json(&url, &[("x-goog-api-key", own)], &body).await;
    assert_eq!(status, 200);
    let sent = up.received().pop().expect("forwarded");
    assert_eq!(
        sent.headers.get("x-goog-api-key").map(|v| v.as_bytes()),
        Some(own.as_bytes())
    );

    let before = up.received().len();
    let (status, h, b) = post_json(
        &tally.url("/anthropic/v1/messages"),
        &[],
        &json!({"model": "claude-haiku-4-5", "max_tokens": 8, "messages": []}),
    )
    .await;
    assert_eq!(status, 401);
    let err: Value = serde_json::from_slice(&b).expect("json");
    let message = err["error"]["message"]
        .as_str()
        .expect("anthropic-shaped error");
    assert!(
        message.contains("providers.anthropic.api_key")
            && message.contains("TALLY_TEST_UNSET_ANTHROPIC_KEY"),
        "{message}"
    );
    assert_eq!(up.received().len(), before, "the upstream was not called");
    let rec = tally.record(&request_id(&h)).await;
    assert_eq!(rec["refusal"], "tally_missing_credentials");
    tally.stop().await;
}

/// An upstream reset mid-stream: the client sees the cut, and the record keeps the prompt
/// count Gemini reported in its first chunk exactly and estimates the output, flagged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_stream_keeps_its_prompt_count_and_estimates_the_output() {
    let up = FakeUpstream::start().await;
    let tally = TestTally::start(&up.url()).await;
    let body = json!({"contents": [{"role": "user", "parts": [{"text": "Say hello"}]}]});
    let url = tally.url("/google/v1beta/models/gemini-2.0-flash:streamGenerateContent?alt=sse");
    let result = send_checked(
        http::Method::POST,
        &url,
        &[
            ("content-type", "application/json"),
            ("x-fake-mode", "reset"),
            // Spaced, so the two chunks are on the wire before the reset.
            ("x-fake-interval-ms", "30"),
        ],
        body.to_string(),
    )
    .await;
    assert!(result.is_err(), "the client sees the cut: {result:?}");
    let rec = eventually_record(&tally).await;
    assert!(!rec["error"].is_null(), "{rec}");
    assert_eq!(
        rec["prompt_tokens"], GEMINI_USAGE.0,
        "exact from the first chunk: {rec}"
    );
    assert_eq!(rec["tokens_estimated"], true);
    assert!(rec["completion_tokens"].as_u64().expect("estimated") > 0);
    tally.stop().await;
}

/// The one record the test made.
async fn eventually_record(tally: &TestTally) -> Value {
    for _ in 0..100 {
        let (_, _, b) = get(&tally.dashboard_url("/api/requests?limit=1")).await;
        if let Ok(v) = serde_json::from_slice::<Value>(&b) {
            if let Some(r) = v["requests"].as_array().and_then(|a| a.first()) {
                return tally.record(r["request_id"].as_str().expect("id")).await;
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("no record");
}

/// Vertex AI: the same SDK with `vertexai=True`; the access token is forwarded, never stored,
/// and the project and location become record properties.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sdk_in_vertex_mode_works_and_records_project_and_location() {
    let up = FakeUpstream::start().await;
    let tally = with_vertex(&up).await;
    const TOKEN: &str = "ya29.fake-vertex-access-token-0123456789wxyz";
    let proxy = format!("http://{}", tally.proxy);
    let results = run_sdk_script("vertex.py", &[&proxy, TOKEN]).await;
    for call in ["json", "stream"] {
        assert_eq!(results[call]["text"], WORDS.concat(), "{call}");
        let rec = tally
            .record(results[call]["id"].as_str().expect("id"))
            .await;
        assert_eq!(rec["provider"], "vertex");
        assert_eq!(rec["model"], "gemini-2.0-flash");
        assert_eq!(rec["prompt_tokens"], GEMINI_USAGE.0, "{call}: {rec}");
        assert_eq!(
            rec["completion_tokens"],
            GEMINI_USAGE.1 + GEMINI_USAGE.3,
            "{call}"
        );
        assert_eq!(rec["tokens_estimated"], false);
        assert_eq!(rec["properties"]["vertex_project"], "acme-prod");
        assert_eq!(rec["properties"]["vertex_location"], "us-central1");
        assert!(rec["api_key_hint"]
            .as_str()
            .expect("hint")
            .ends_with("wxyz"));
        assert!(rec["cost_usd"].as_f64().is_some());
    }
    for r in up.received() {
        assert!(
            r.path_and_query
                .contains("/projects/acme-prod/locations/us-central1/publishers/google/models/"),
            "{}",
            r.path_and_query
        );
        let auth = r.headers.get("authorization").expect("token forwarded");
        assert_eq!(auth.as_bytes(), format!("Bearer {TOKEN}").as_bytes());
    }
    let dir = tally.stop().await;
    let holding = files_holding(dir.path(), TOKEN);
    assert!(holding.is_empty(), "the key is in {holding:?}");
}

/// Claude on Vertex AI: the real `AnthropicVertex` client; Tally reads the Anthropic shapes on
/// a `publishers/anthropic` path of the same `vertex` provider.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claude_on_vertex_is_read_as_anthropic_with_the_model_from_the_path() {
    let up = FakeUpstream::start().await;
    let tally = with_vertex(&up).await;
    const TOKEN: &str = "ya29.fake-vertex-claude-token-0123456789wxyz";
    let proxy = format!("http://{}", tally.proxy);
    let results = run_sdk_script("vertex_claude.py", &[&proxy, TOKEN]).await;
    let (uncached, write, read, out) = crate::support::fake_upstream::ANTHROPIC_USAGE;
    for call in ["json", "stream"] {
        assert_eq!(results[call]["text"], WORDS.concat(), "{call}");
        let rec = tally
            .record(results[call]["id"].as_str().expect("id"))
            .await;
        assert_eq!(rec["provider"], "vertex");
        assert_eq!(rec["model"], "claude-sonnet-4-5", "{call}");
        assert_eq!(rec["stream"], call == "stream");
        assert_eq!(
            rec["prompt_tokens"],
            uncached + write + read,
            "{call}: {rec}"
        );
        assert_eq!(rec["completion_tokens"], out, "{call}");
        assert_eq!(rec["tokens_estimated"], false);
        assert!(rec["error"].is_null(), "{call}: {}", rec["error"]);
        assert_eq!(rec["properties"]["vertex_location"], "us-east5");
        assert!(rec["cost_usd"].as_f64().is_some(), "{call}: priced");
    }
    for r in up.received() {
        assert!(r
            .path_and_query
            .contains("/publishers/anthropic/models/claude-sonnet-4-5:"));
    }
    tally.stop().await;
}

/// `[providers.vertex] service_account_file`: a client sending a placeholder gets a token
/// Tally minted (a JWT signed with the account's key, exchanged at its `token_uri`), reused
/// while it is good and minted again once it has expired; the fake refuses expired tokens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_minted_from_a_service_account_and_refreshed_when_they_expire() {
    use crate::support::fake_google_auth::{key_file, ACCOUNT};
    let up = FakeUpstream::start().await;
    let dir = tempfile::tempdir().expect("dir");
    let sa = dir.path().join("sa.json");
    std::fs::write(&sa, key_file(&format!("{}/token?expires_in=2", up.url()))).expect("sa");
    let tally = TestTally::start_with(&up.url(), |c| {
        c.providers.insert(
            "vertex".into(),
            tally_proxy::ProviderConfig {
                base_url: Some(up.url()),
                service_account_file: Some(sa.clone()),
                ..Default::default()
            },
        );
    })
    .await;
    let proxy = format!("http://{}", tally.proxy);
    let minted = |up: &FakeUpstream| -> Vec<String> {
        up.received()
            .iter()
            .filter(|r| !r.path_and_query.starts_with("/token"))
            .filter_map(|r| r.headers.get("authorization"))
            .map(|v| v.to_str().expect("ascii").to_owned())
            .collect()
    };
    let token_calls = |up: &FakeUpstream| {
        up.received()
            .iter()
            .filter(|r| r.path_and_query.starts_with("/token"))
            .count()
    };
    let first = run_sdk_script("vertex.py", &[&proxy, "placeholder"]).await;
    assert_eq!(first["json"]["text"], WORDS.concat());
    assert_eq!(first["stream"]["text"], WORDS.concat());
    assert_eq!(token_calls(&up), 1, "one token serves both requests");
    let sent = minted(&up);
    assert_eq!(sent.len(), 2);
    assert!(
        sent[0].starts_with("Bearer ya29.fake-minted-"),
        "{}",
        sent[0]
    );
    assert_eq!(sent[0], sent[1]);
    let rec = tally
        .record(first["json"]["id"].as_str().expect("id"))
        .await;
    assert_eq!(rec["api_key_hint"], ACCOUNT);
    assert!(rec["error"].is_null(), "{}", rec["error"]);

    // The token lives 2 s; the fake refuses it after that.
    tokio::time::sleep(std::time::Duration::from_millis(2200)).await;
    let second = run_sdk_script("vertex.py", &[&proxy, "placeholder"]).await;
    assert_eq!(second["json"]["text"], WORDS.concat(), "{second}");
    assert_eq!(token_calls(&up), 2, "the expired token was replaced");
    let sent = minted(&up);
    assert_ne!(sent[2], sent[0], "a new token");
    let rec = tally
        .record(second["json"]["id"].as_str().expect("id"))
        .await;
    assert_eq!(rec["status"], 200);

    // A client's own token is still passed through untouched.
    const OWN: &str = "ya29.client-own-token-0123456789wxyz";
    let own = run_sdk_script("vertex.py", &[&proxy, OWN]).await;
    assert_eq!(own["json"]["text"], WORDS.concat());
    assert_eq!(token_calls(&up), 2);
    assert_eq!(
        minted(&up).last().map(String::as_str),
        Some(&*format!("Bearer {OWN}"))
    );
    let store = tally.stop().await;
    for t in sent {
        let t = t.trim_start_matches("Bearer ");
        let holding = files_holding(store.path(), t);
        assert!(holding.is_empty(), "a minted token is in {holding:?}");
    }
}

/// A Tally whose `vertex` provider (no preset: configured by its base URL) is the fake.
async fn with_vertex(up: &FakeUpstream) -> TestTally {
    TestTally::start_with(&up.url(), |c| {
        c.providers.insert(
            "vertex".into(),
            tally_proxy::ProviderConfig {
                base_url: Some(up.url()),
                ..Default::default()
            },
        );
    })
    .await
}
