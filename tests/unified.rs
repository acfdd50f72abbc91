//! #19, one API for every model: the real OpenAI and Anthropic Python SDKs, pointed at
//! `/unified/v1` and `/unified`, call Anthropic, Gemini, Bedrock Converse and OpenAI fakes by
//! `provider/model`. Each SDK parses what it gets with its own types (tool calls reassembled by
//! its stream accumulators, errors raised as its own classes); the fakes see each request in
//! their own dialect; each record keeps the provider that served, its usage and its cost.

use serde_json::{json, Value};

use crate::support::fake_bedrock::{with_bedrock, BEDROCK_USAGE, SECRET_KEY};
use crate::support::fake_upstream::{ANTHROPIC_USAGE, GEMINI_USAGE, OPENAI_USAGE, WORDS};
use crate::support::*;

const CLAUDE: &str = "anthropic/claude-sonnet-4-5";
const GEMINI: &str = "google/gemini-2.5-flash";
const BEDROCK: &str = "bedrock/anthropic.claude-3-haiku-20240307-v1:0";
const GPT: &str = "openai/gpt-4o";

/// The dialect a `provider/model` is served in, as `properties.translated` names it.
fn dialect(target: &str) -> &'static str {
    match target.split_once('/').expect("provider/model") {
        ("anthropic", _) => "anthropic",
        ("vertex", m) if m.starts_with("claude") => "anthropic",
        ("google" | "vertex", _) => "gemini",
        ("bedrock", _) => "bedrock-converse",
        _ => "openai",
    }
}

/// What each target reports, as (prompt tokens all told, completion tokens all told, cached).
fn usage_of(target: &str) -> (u64, u64, u64) {
    match dialect(target) {
        "anthropic" => {
            let (input, write, read, output) = ANTHROPIC_USAGE;
            (input + write + read, output, read)
        }
        "gemini" => {
            let (prompt, candidates, cached, thoughts) = GEMINI_USAGE;
            (prompt, candidates + thoughts, cached)
        }
        "bedrock-converse" => {
            let (input, output, read, write) = BEDROCK_USAGE;
            (input + read + write, output, read)
        }
        _ => (OPENAI_USAGE.0, OPENAI_USAGE.1, OPENAI_USAGE.2),
    }
}

/// The calls the fake made, as each SDK must see them.
fn expected_calls(ids: bool) -> Vec<(Option<&'static str>, &'static str, Value)> {
    crate::support::fake_upstream::TOOL_CALLS
        .iter()
        .map(|(id, name, args)| {
            (
                ids.then_some(*id),
                *name,
                serde_json::from_str(args).expect("json"),
            )
        })
        .collect()
}

/// What one SDK (`sdk`) got from one `provider/model` (`target`) in `r`, the script's output,
/// and what Tally recorded of it.
async fn check_target(tally: &TestTally, r: &Value, sdk: &str, target: &str) {
    let calls = &r[sdk][target];
    let text = WORDS.concat();
    let at = format!("{sdk} SDK > {target}");
    let (prompt, completion, cached) = usage_of(target);
    let model = target.split_once('/').expect("provider/model").1;
    for call in ["plain", "stream", "round_trip"] {
        assert_eq!(calls[call]["text"], text.as_str(), "{at} {call}");
    }
    // Finish reasons and usage, in the client's own terms.
    if sdk == "openai" {
        for call in ["plain", "stream"] {
            assert_eq!(calls[call]["finish"], "stop", "{at} {call}");
            let u = &calls[call]["usage"];
            assert_eq!(u["prompt_tokens"], prompt, "{at} {call}: {u}");
            assert_eq!(u["completion_tokens"], completion, "{at} {call}: {u}");
            assert_eq!(
                u["prompt_tokens_details"]["cached_tokens"], cached,
                "{at} {call}: {u}"
            );
        }
        assert_eq!(calls["plain"]["model"], model, "{at}");
    } else {
        for call in ["plain", "stream"] {
            assert_eq!(calls[call]["stop"], "end_turn", "{at} {call}");
            let u = &calls[call]["usage"];
            assert_eq!(u["cache_read_input_tokens"], cached, "{at} {call}: {u}");
            let all = u["input_tokens"].as_u64().unwrap_or(0)
                + u["cache_read_input_tokens"].as_u64().unwrap_or(0)
                + u["cache_creation_input_tokens"].as_u64().unwrap_or(0);
            assert_eq!(all, prompt, "{at} {call}: {u}");
            assert_eq!(u["output_tokens"], completion, "{at} {call}: {u}");
        }
    }
    // Two parallel tool calls, whole and reassembled from streamed pieces. Gemini
    // sends no call ids, so Tally makes them up (and maps them back on the way in).
    let ids = dialect(target) != "gemini";
    for call in ["tools", "tools_stream"] {
        let got: Vec<(Option<&str>, &str, Value)> = calls[call]["calls"]
            .as_array()
            .unwrap_or_else(|| panic!("{at} {call}: {}", calls[call]))
            .iter()
            .map(|c| {
                let args = if sdk == "openai" {
                    &c["arguments"]
                } else {
                    &c["input"]
                };
                (
                    ids.then(|| c["id"].as_str().expect("id")),
                    c["name"].as_str().expect("name"),
                    args.clone(),
                )
            })
            .collect();
        assert_eq!(got, expected_calls(ids), "{at} {call}");
        let finish = if sdk == "openai" { "finish" } else { "stop" };
        let want = if sdk == "openai" {
            "tool_calls"
        } else {
            "tool_use"
        };
        assert_eq!(calls[call][finish], want, "{at} {call}");
        if !ids {
            let id = calls[call]["calls"][0]["id"].as_str().unwrap_or("");
            assert!(!id.is_empty(), "{at} {call}: a made-up id");
        }
    }
    // Errors in the client's own shape, with the provider's status.
    let e = &calls["error"];
    assert_eq!(
        (e["class"].as_str(), e["status"].as_u64()),
        (Some("RateLimitError"), Some(429)),
        "{at}: {e}"
    );
    let kind = if sdk == "openai" {
        &e["body"]["type"]
    } else {
        &e["body"]["error"]["type"]
    };
    assert_eq!(kind, "rate_limit_error", "{at}: {e}");
    let e = &calls["unknown"];
    assert_eq!(
        (e["class"].as_str(), e["status"].as_u64()),
        (Some("NotFoundError"), Some(404)),
        "{at}: {e}"
    );
    assert!(e.to_string().contains("tally_unknown_model"), "{at}: {e}");

    // The record: the provider that served, the model called, its usage and price.
    for call in ["plain", "stream", "tools", "tools_stream", "round_trip"] {
        let id = calls[call]["id"]
            .as_str()
            .unwrap_or_else(|| panic!("{at} {call}: no Tally-Request-Id"));
        let rec = tally.record(id).await;
        let provider = target.split('/').next().expect("provider");
        assert_eq!(rec["provider"], provider, "{at} {call}: {rec}");
        assert_eq!(rec["model"], model, "{at} {call}: {rec}");
        assert_eq!(rec["status"], 200, "{at} {call}: {rec}");
        assert!(rec["error"].is_null(), "{at} {call}: {rec}");
        assert_eq!(
            rec["properties"]["translated"],
            format!("{sdk}>{}", dialect(target)),
            "{at} {call}"
        );
        assert_eq!(rec["prompt_tokens"], prompt, "{at} {call}: {rec}");
        assert_eq!(rec["completion_tokens"], completion, "{at} {call}: {rec}");
        assert_eq!(rec["tokens_estimated"], false, "{at} {call}");
        assert!(
            rec["cost_usd"].as_f64().is_some_and(|c| c > 0.0),
            "{at} {call}: priced at the serving model: {rec}"
        );
    }
    let rec = tally
        .record(calls["error"]["id"].as_str().expect("id"))
        .await;
    assert_eq!(rec["status"], 429, "{at}: {rec}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sdks_call_every_provider_through_the_unified_api() {
    let up = FakeUpstream::start().await;
    let keys = tempfile::tempdir().expect("dir");
    let tally = TestTally::start_with(&up.url(), |c| {
        with_bedrock(c, &up.url(), keys.path(), SECRET_KEY);
        c.proxy.keep_translated_bodies = true;
    })
    .await;
    let proxy = format!("http://{}", tally.proxy);
    let openai_targets = [CLAUDE, GEMINI, BEDROCK];
    let anthropic_targets = [GPT, GEMINI, BEDROCK];
    let r = run_sdk_script(
        "unified.py",
        &[
            &proxy,
            &openai_targets.join(","),
            &anthropic_targets.join(","),
        ],
    )
    .await;
    for (sdk, targets) in [("openai", openai_targets), ("anthropic", anthropic_targets)] {
        for target in targets {
            check_target(&tally, &r, sdk, target).await;
        }
    }

    // Stored bodies are what the client sent and got; with keep_translated_bodies, the
    // provider's side of each is kept too.
    for (call, stream) in [("plain", false), ("stream", true)] {
        let id = r["openai"][CLAUDE][call]["id"].as_str().expect("id");
        let rec = tally.record(id).await;
        let body = |k: &str| {
            rec[k]
                .as_str()
                .unwrap_or_else(|| panic!("{call}: no {k}: {rec}"))
        };
        assert!(
            body("request_body").contains(r#""role":"system""#),
            "{call}"
        );
        assert!(
            body("upstream_request_body").contains(r#""system":[{"#),
            "{call}"
        );
        if stream {
            assert!(
                body("response_body").contains("chat.completion.chunk"),
                "{call}"
            );
            assert!(body("upstream_response_body").contains("event: message_start"));
        } else {
            let client: Value = serde_json::from_str(body("response_body")).expect("json");
            assert_eq!(client["object"], "chat.completion", "{call}");
            let claude: Value = serde_json::from_str(body("upstream_response_body")).expect("json");
            assert_eq!(claude["type"], "message", "{call}");
        }
    }

    // The request page shows the provider's side too, escaped like every stored body.
    let id = r["openai"][CLAUDE]["plain"]["id"].as_str().expect("id");
    let (status, _, page) = get(&tally.dashboard_url(&format!("/requests/{id}"))).await;
    assert_eq!(status, 200);
    let page = String::from_utf8_lossy(&page);
    assert!(page.contains(r#"id="upstream-request-body""#), "{page}");
    assert!(page.contains("&#34;stop_sequences&#34;"), "{page}");
    assert!(!page.contains(r#""stop_sequences""#), "{page}");

    // The Anthropic SDK's top_k has no counterpart past OpenAI's shape: a 400 naming it and
    // the target the client asked for.
    for target in anthropic_targets {
        let e = &r["anthropic"][target]["unsupported"];
        assert_eq!(e["status"], 400, "{target}: {e}");
        assert_eq!(e["body"]["error"]["type"], "tally_unsupported_feature");
        assert_eq!(e["body"]["error"]["feature"], "top_k");
        assert_eq!(e["body"]["error"]["target"], dialect(target), "{e}");
    }
    for (feature, target) in [
        ("response_format", "anthropic"),
        ("image_url", "bedrock-converse"),
    ] {
        let e = &r["unsupported"][feature];
        assert_eq!(
            (e["class"].as_str(), e["status"].as_u64()),
            (Some("BadRequestError"), Some(400)),
            "{feature}: {e}"
        );
        assert_eq!(e["body"]["code"], "tally_unsupported_feature", "{e}");
        assert_eq!(e["body"]["feature"], feature, "{e}");
        assert_eq!(e["body"]["target"], target, "{e}");
    }

    // What each provider received was its own dialect.
    let sent: Vec<(String, Value)> = up
        .received()
        .iter()
        .map(|r| {
            let body = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
            (r.path_and_query.clone(), body)
        })
        .collect();
    let first = |path: &str| {
        sent.iter()
            .find(|(p, _)| p.starts_with(path))
            .map(|(_, b)| b.clone())
            .unwrap_or_else(|| panic!("nothing sent to {path}"))
    };
    let with = |path: &str, needle: &str| {
        sent.iter()
            .filter(|(p, _)| p.starts_with(path))
            .map(|(_, b)| b.clone())
            .find(|b| b.to_string().contains(needle))
            .unwrap_or_else(|| panic!("nothing with {needle} sent to {path}"))
    };
    let png = "iVBORw0KGgogZmFrZSBpbWFnZSBieXRlcw==";

    let claude = first("/v1/messages");
    assert_eq!(claude["system"][0]["text"], "Answer briefly.", "{claude}");
    assert_eq!(claude["max_tokens"], 50);
    assert_eq!(claude["temperature"], 0.2);
    assert_eq!(claude["top_p"], 0.9);
    assert_eq!(claude["stop_sequences"], json!(["END"]));
    let parts = &claude["messages"][0]["content"];
    assert_eq!(
        parts[1]["source"],
        json!({"type": "url", "url": "https://example.com/cat.png"})
    );
    assert_eq!(
        parts[2]["source"],
        json!({"type": "base64", "media_type": "image/png", "data": png})
    );
    assert_eq!(claude["messages"][1]["role"], "assistant");
    let results = with("/v1/messages", "tool_result");
    let turns = results["messages"].as_array().expect("messages");
    assert_eq!(turns[1]["content"][1]["type"], "tool_use", "{results}");
    assert_eq!(
        turns[2]["content"][1]["tool_use_id"], "call_tokyo",
        "{results}"
    );
    assert_eq!(
        turns.len(),
        3,
        "the two tool results share one user turn: {results}"
    );

    let gemini = first("/v1beta/models/gemini-2.5-flash:generateContent");
    assert_eq!(
        gemini["systemInstruction"]["parts"][0]["text"],
        "Answer briefly."
    );
    assert_eq!(
        gemini["generationConfig"],
        json!({"maxOutputTokens": 50, "stopSequences": ["END"], "temperature": 0.2, "topP": 0.9})
    );
    let parts = &gemini["contents"][0]["parts"];
    assert_eq!(
        parts[1]["fileData"]["fileUri"],
        "https://example.com/cat.png"
    );
    assert_eq!(
        parts[2]["inlineData"],
        json!({"mimeType": "image/png", "data": png})
    );
    assert_eq!(gemini["contents"][1]["role"], "model");
    assert!(sent
        .iter()
        .any(|(p, _)| p == "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"));
    let results = with("/v1beta/models/", "functionResponse");
    let response = &results["contents"][2]["parts"][1]["functionResponse"];
    assert_eq!(response["name"], "get_weather", "{results}");
    assert_eq!(
        response["response"]["content"], "get_weather: 18C",
        "{results}"
    );

    let bedrock_path = "/model/anthropic.claude-3-haiku-20240307-v1%3A0/converse";
    let converse = first(bedrock_path);
    assert_eq!(converse["system"][0]["text"], "Answer briefly.");
    assert_eq!(
        converse["inferenceConfig"],
        json!({"maxTokens": 50, "stopSequences": ["END"], "temperature": 0.2, "topP": 0.9})
    );
    assert_eq!(
        converse["messages"][0]["content"][2]["image"],
        json!({"format": "png", "source": {"bytes": png}})
    );
    let results = with(bedrock_path, "toolResult");
    let result = &results["messages"][2]["content"][0]["toolResult"];
    assert_eq!(result["toolUseId"], "call_paris", "{results}");
    assert_eq!(
        result["content"][0]["text"], "get_weather: 18C",
        "{results}"
    );

    // The Anthropic SDK's request reached OpenAI as Chat Completions, with the newer token
    // limit OpenAI's reasoning models insist on, and its stream asking for usage.
    let gpt = first("/v1/chat/completions");
    assert_eq!(
        gpt["messages"][0],
        json!({"role": "system", "content": "Answer briefly."})
    );
    assert_eq!(gpt["max_completion_tokens"], 50, "{gpt}");
    assert!(gpt.get("max_tokens").is_none(), "{gpt}");
    assert_eq!(
        gpt["messages"][1]["content"][1]["image_url"]["url"],
        format!("data:image/png;base64,{png}")
    );
    let streamed = with("/v1/chat/completions", "\"stream\":true");
    assert_eq!(streamed["stream_options"]["include_usage"], true);
    let results = with("/v1/chat/completions", "tool_call_id");
    assert_eq!(results["messages"][1]["tool_calls"][0]["id"], "call_paris");
    assert_eq!(results["messages"][3]["tool_call_id"], "call_tokyo");

    // Across dialects the client's own key never travels: the held credential signs.
    for r in up.received() {
        for (name, value) in &r.headers {
            assert!(
                !value.to_str().unwrap_or("").contains("client-side"),
                "{}: the client's key went upstream in {name}",
                r.path_and_query
            );
        }
    }
    tally.stop().await;
}

/// A router may mix formats: GPT first, Claude when GPT fails. Both SDKs stream from it; the
/// failed attempt is retried on Claude before any byte reached the client, and the answer is
/// translated to each SDK's dialect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_router_falls_back_from_gpt_to_claude_for_either_sdk() {
    use tally_proxy::stages::{RouterConfig, Strategy, TargetConfig};
    let (gpt, claude) = (FakeUpstream::start().await, FakeUpstream::start().await);
    gpt.script(&["error500", "error500"]);
    let tally = TestTally::start_with(&gpt.url(), |c| {
        c.providers.get_mut("anthropic").expect("built in").base_url = Some(claude.url());
        let target = |provider: &str, model: &str| TargetConfig {
            provider: provider.into(),
            model: Some(model.into()),
            weight: 1,
        };
        c.routers.insert(
            "gpt-then-claude".into(),
            RouterConfig {
                strategy: Strategy::Fallback,
                targets: vec![
                    target("openai", "gpt-4o"),
                    target("anthropic", "claude-sonnet-4-5"),
                ],
                aliases: vec!["best".into()],
                retries: 0,
                ..RouterConfig::default()
            },
        );
    })
    .await;
    let proxy = format!("http://{}", tally.proxy);
    let r = run_sdk_script("unified.py", &[&proxy, "", "", "best"]).await;
    let (input, write, read, output) = ANTHROPIC_USAGE;
    for sdk in ["openai", "anthropic"] {
        let got = &r["router"][sdk];
        assert_eq!(got["text"], WORDS.concat().as_str(), "{sdk}: {got}");
        let rec = tally.record(got["id"].as_str().expect("id")).await;
        assert_eq!(
            (rec["provider"].as_str(), rec["model"].as_str()),
            (Some("anthropic"), Some("claude-sonnet-4-5")),
            "{sdk}: {rec}"
        );
        assert_eq!(rec["router"], "gpt-then-claude", "{sdk}");
        assert_eq!(rec["attempts"], 2, "{sdk}: {rec}");
        assert_eq!(rec["prompt_tokens"], input + write + read, "{sdk}: {rec}");
        assert_eq!(rec["completion_tokens"], output, "{sdk}: {rec}");
        let label = format!("{sdk}>anthropic");
        let want = if sdk == "anthropic" {
            None
        } else {
            Some(label.as_str())
        };
        assert_eq!(
            rec["properties"]["translated"].as_str(),
            want,
            "{sdk}: {rec}"
        );
    }
    assert_eq!(r["router"]["openai"]["usage"]["completion_tokens"], output);
    // Translated bodies are not kept unless configured.
    let rec = tally
        .record(r["router"]["openai"]["id"].as_str().expect("id"))
        .await;
    assert!(rec["response_body"].as_str().is_some(), "{rec}");
    assert!(rec["upstream_request_body"].is_null(), "{rec}");
    assert!(rec["upstream_response_body"].is_null(), "{rec}");
    assert_eq!(gpt.received().len(), 2, "one failed attempt per SDK");
    let sent: Value = serde_json::from_slice(&claude.received()[0].body).expect("json");
    assert_eq!(sent["stream"], true, "{sent}");
    assert_eq!(
        sent["messages"][0]["content"][0]["text"], "Say hello",
        "{sent}"
    );
    tally.stop().await;
}

/// Vertex AI through the unified API: Gemini in Google's shape and Claude in Anthropic's,
/// under the project of the service-account key file and the configured location, with a
/// token Tally minted from that account (the client's key is for another API).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vertex_models_are_called_under_the_service_accounts_project() {
    use crate::support::fake_google_auth::key_file;
    let up = FakeUpstream::start().await;
    let dir = tempfile::tempdir().expect("dir");
    let sa = dir.path().join("sa.json");
    std::fs::write(&sa, key_file(&format!("{}/token", up.url()))).expect("key file");
    let with_location = |location: Option<&str>| {
        let (sa, url) = (sa.clone(), up.url());
        let location = location.map(str::to_owned);
        move |c: &mut tally::Config| {
            c.providers.insert(
                "vertex".into(),
                tally_proxy::ProviderConfig {
                    base_url: Some(url),
                    region: location,
                    service_account_file: Some(sa),
                    ..Default::default()
                },
            );
        }
    };
    let tally = TestTally::start_with(&up.url(), with_location(Some("us-central1"))).await;
    let proxy = format!("http://{}", tally.proxy);
    let targets = ["vertex/gemini-2.5-flash", "vertex/claude-sonnet-4-5"];
    let r = run_sdk_script("unified.py", &[&proxy, &targets.join(","), targets[0]]).await;
    for target in targets {
        check_target(&tally, &r, "openai", target).await;
    }
    check_target(&tally, &r, "anthropic", targets[0]).await;
    let base = "/v1/projects/fake-project/locations/us-central1/publishers";
    let calls: Vec<_> = up
        .received()
        .into_iter()
        .filter(|c| c.path_and_query.starts_with("/v1/projects/"))
        .collect();
    // Per SDK and model: plain, tools, round trip and error whole; stream and tools streamed.
    for (path, n) in [
        (
            format!("{base}/google/models/gemini-2.5-flash:generateContent"),
            8,
        ),
        (
            format!("{base}/google/models/gemini-2.5-flash:streamGenerateContent?alt=sse"),
            4,
        ),
        (
            format!("{base}/anthropic/models/claude-sonnet-4-5:rawPredict"),
            4,
        ),
        (
            format!("{base}/anthropic/models/claude-sonnet-4-5:streamRawPredict"),
            2,
        ),
    ] {
        let got = calls.iter().filter(|c| c.path_and_query == path).count();
        assert_eq!(
            got,
            n,
            "{path}: {:?}",
            calls.iter().map(|c| &c.path_and_query).collect::<Vec<_>>()
        );
    }
    for c in &calls {
        let auth = c.headers.get("authorization").and_then(|v| v.to_str().ok());
        assert!(
            auth.is_some_and(|a| a.starts_with("Bearer ya29.fake-minted-")),
            "{}: {auth:?}",
            c.path_and_query
        );
        if c.path_and_query.contains("/anthropic/") {
            let body: Value = serde_json::from_slice(&c.body).expect("json");
            assert_eq!(body["anthropic_version"], "vertex-2023-10-16", "{body}");
            assert!(
                body.get("model").is_none(),
                "the model is in the path: {body}"
            );
        }
    }
    tally.stop().await;

    // Without a location, the unified API cannot name where the model lives: a clear 400.
    let tally = TestTally::start_with(&up.url(), with_location(None)).await;
    let (status, _, body) = post_json(
        &tally.url("/unified/v1/chat/completions"),
        &[],
        &json!({"model": "vertex/gemini-2.5-flash", "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    assert_eq!(status, http::StatusCode::BAD_REQUEST);
    let text = String::from_utf8_lossy(&body);
    assert!(
        text.contains("tally_untranslatable") && text.contains("location"),
        "{text}"
    );
    tally.stop().await;
}
