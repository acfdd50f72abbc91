//! The user story of the foundation issue, with the real OpenAI and Anthropic Python SDKs as
//! clients. `scripts/test.sh` creates the virtualenv; without it this test fails and says so
//! (it never skips).

use serde_json::Value;

use crate::support::fake_upstream::{ANTHROPIC_USAGE, OPENAI_USAGE, WORDS};
use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_and_anthropic_sdks_work_unmodified_and_are_recorded() {
    let up = FakeUpstream::start().await;
    let tally = TestTally::start(&up.url()).await;
    let proxy = format!("http://{}", tally.proxy);
    let results = run_sdk_script("clients.py", &[&proxy]).await;
    let text = WORDS.concat();
    for (call, prompt) in [
        ("openai_json", OPENAI_USAGE.0),
        ("openai_stream", OPENAI_USAGE.0),
        (
            "anthropic_json",
            ANTHROPIC_USAGE.0 + ANTHROPIC_USAGE.1 + ANTHROPIC_USAGE.2,
        ),
        (
            "anthropic_stream",
            ANTHROPIC_USAGE.0 + ANTHROPIC_USAGE.1 + ANTHROPIC_USAGE.2,
        ),
    ] {
        let r = &results[call];
        assert_eq!(
            r["text"],
            text.as_str(),
            "{call}: the SDK got a different answer"
        );
        let id = r["id"]
            .as_str()
            .unwrap_or_else(|| panic!("{call}: no Tally-Request-Id"));
        let rec = tally.record(id).await;
        assert_eq!(rec["prompt_tokens"], prompt, "{call}: {rec}");
        assert_eq!(rec["tokens_estimated"], false, "{call}");
        assert!(rec["cost_usd"].as_f64().is_some(), "{call}: cost");
        assert_eq!(rec["user_id"], "alice");
        assert_eq!(rec["session_id"], "s-1");
        assert_eq!(rec["properties"]["env"], "prod");
        assert!(rec["api_key_hint"]
            .as_str()
            .expect("hint")
            .ends_with("…wxyz"));
        assert!(!rec["ttft_ms"].is_null());
    }
    // The SDKs' own headers reached the upstream; Tally's did not.
    for r in up.received() {
        assert!(r.headers.contains_key("user-agent"));
        assert!(!r.headers.contains_key("tally-user-id"));
    }
    tally.stop().await;
}

/// #16: the OpenAI SDK, unmodified, against an upstream that spaces its JSON and one that
/// keeps the body open after `[DONE]`: it sees exactly the stream it asked for, and each
/// record is complete and exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_sdk_sees_its_own_stream_and_leaves_complete_records() {
    let up = FakeUpstream::start().await;
    let tally = TestTally::start(&up.url()).await;
    let proxy = format!("http://{}", tally.proxy);
    let results = run_sdk_script("stream_endings.py", &[&proxy]).await;
    for mode in ["spaced", "linger"] {
        let r = &results[mode];
        assert_eq!(r["text"], WORDS.concat().as_str(), "{mode}");
        let rec = tally.record(r["id"].as_str().expect("request id")).await;
        assert!(rec["error"].is_null(), "{mode}: {rec}");
        assert_eq!(rec["status"], 200, "{mode}");
        assert_eq!(rec["prompt_tokens"], OPENAI_USAGE.0, "{mode}: {rec}");
        assert_eq!(rec["completion_tokens"], OPENAI_USAGE.1, "{mode}: {rec}");
        assert_eq!(rec["tokens_estimated"], false, "{mode}");
    }
    // Tally did ask for the usage both times.
    for r in up.received() {
        let body: Value = serde_json::from_slice(&r.body).expect("json");
        assert_eq!(body["stream_options"]["include_usage"], true);
    }
    assert_eq!(
        tally.metric("tally_client_disconnects_total", "").await,
        0.0
    );
    tally.stop().await;
}
