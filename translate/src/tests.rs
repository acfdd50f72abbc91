use serde_json::{json, Value};

use super::*;

fn hub() -> Value {
    json!({
        "model": "x",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [
                {"type": "text", "text": "What is in this image, and the weather in Paris and Rome?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
            ]},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": "{\"city\":\"Paris\"}"}},
                {"id": "call_2", "type": "function", "function": {"name": "weather", "arguments": "{\"city\":\"Rome\"}"}},
            ]},
            {"role": "tool", "tool_call_id": "call_1", "content": "18C"},
            {"role": "tool", "tool_call_id": "call_2", "content": "24C"},
        ],
        "tools": [{"type": "function", "function": {"name": "weather", "description": "Weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}],
        "tool_choice": "required",
        "temperature": 0.2,
        "top_p": 0.9,
        "stop": ["END"],
        "max_completion_tokens": 100,
    })
}

#[test]
fn openai_to_anthropic_keeps_every_turn_tool_and_image() {
    let a = request(Dialect::OpenAi, Dialect::Anthropic, &hub(), "claude-x").expect("translates");
    assert_eq!(a["model"], "claude-x");
    assert_eq!(a["system"][0]["text"], "Be brief.");
    assert_eq!(a["max_tokens"], 100);
    assert_eq!(a["stop_sequences"], json!(["END"]));
    assert_eq!(a["tool_choice"], json!({"type": "any"}));
    assert_eq!(
        a["tools"][0]["input_schema"]["properties"]["city"]["type"],
        "string"
    );
    let m = a["messages"].as_array().expect("messages");
    assert_eq!(
        m.len(),
        3,
        "user, assistant, one user turn of both results: {m:?}"
    );
    assert_eq!(m[0]["content"][1]["source"]["type"], "base64");
    assert_eq!(m[0]["content"][1]["source"]["media_type"], "image/png");
    assert_eq!(m[1]["content"][1]["input"], json!({"city": "Rome"}));
    assert_eq!(m[2]["content"][0]["tool_use_id"], "call_1");
    assert_eq!(m[2]["content"][1]["content"], "24C");
}

#[test]
fn openai_to_gemini_answers_calls_by_name() {
    let g = request(Dialect::OpenAi, Dialect::Gemini, &hub(), "gemini-x").expect("translates");
    assert_eq!(g["systemInstruction"]["parts"][0]["text"], "Be brief.");
    assert_eq!(g["generationConfig"]["maxOutputTokens"], 100);
    assert_eq!(g["generationConfig"]["stopSequences"], json!(["END"]));
    assert_eq!(g["toolConfig"]["functionCallingConfig"]["mode"], "ANY");
    let c = g["contents"].as_array().expect("contents");
    assert_eq!(c[0]["parts"][1]["inlineData"]["mimeType"], "image/png");
    assert_eq!(c[1]["role"], "model");
    assert_eq!(c[1]["parts"][0]["functionCall"]["args"]["city"], "Paris");
    assert_eq!(c[2]["parts"][1]["functionResponse"]["name"], "weather");
    assert_eq!(
        c[2]["parts"][1]["functionResponse"]["response"]["content"],
        "24C"
    );
}

#[test]
fn openai_to_converse_and_its_refusals() {
    let c = request(
        Dialect::OpenAi,
        Dialect::Converse,
        &hub(),
        "anthropic.claude-x",
    )
    .expect("ok");
    assert_eq!(c["inferenceConfig"]["maxTokens"], 100);
    assert_eq!(c["toolConfig"]["toolChoice"], json!({"any": {}}));
    assert_eq!(c["messages"][0]["content"][1]["image"]["format"], "png");
    assert_eq!(
        c["messages"][2]["content"][1]["toolResult"]["toolUseId"],
        "call_2"
    );
    let mut by_url = hub();
    by_url["messages"][1]["content"][1]["image_url"]["url"] = json!("https://example.com/a.png");
    let e = request(Dialect::OpenAi, Dialect::Converse, &by_url, "m").expect_err("no URLs");
    assert_eq!(e.feature, "image_url");
    let mut json_mode = hub();
    json_mode["response_format"] = json!({"type": "json_object"});
    let e = request(Dialect::OpenAi, Dialect::Converse, &json_mode, "m").expect_err("no JSON mode");
    assert_eq!(e.feature, "response_format");
    let g = request(Dialect::OpenAi, Dialect::Gemini, &json_mode, "m").expect("Gemini has it");
    assert_eq!(
        g["generationConfig"]["responseMimeType"],
        "application/json"
    );
    let mut unknown = hub();
    unknown["frobnicate"] = json!(1);
    let e = request(Dialect::OpenAi, Dialect::Anthropic, &unknown, "m").expect_err("unknown");
    assert_eq!(e.feature, "frobnicate");
    let mut n2 = hub();
    n2["n"] = json!(2);
    assert_eq!(
        request(Dialect::OpenAi, Dialect::Anthropic, &n2, "m")
            .expect_err("n")
            .feature,
        "n"
    );
    n2["n"] = json!(1);
    assert!(
        request(Dialect::OpenAi, Dialect::Anthropic, &n2, "m").is_ok(),
        "n=1 is the default"
    );
}

#[test]
fn reasoning_effort_becomes_a_budget_that_fits() {
    let mut b = hub();
    b["reasoning_effort"] = json!("low");
    let a = request(Dialect::OpenAi, Dialect::Anthropic, &b, "m").expect("ok");
    assert_eq!(a["thinking"]["budget_tokens"], 1024);
    assert_eq!(a["max_tokens"], 1124, "the answer keeps its 100");
    let g = request(Dialect::OpenAi, Dialect::Gemini, &b, "m").expect("ok");
    assert_eq!(
        g["generationConfig"]["thinkingConfig"]["thinkingBudget"],
        1024
    );
}

#[test]
fn anthropic_requests_become_openai_ones() {
    let body = json!({
        "model": "openai/gpt-x", "max_tokens": 50, "system": "Be brief.", "stream": true,
        "stop_sequences": ["END"], "thinking": {"type": "enabled", "budget_tokens": 4000},
        "tools": [{"name": "weather", "input_schema": {"type": "object"}}],
        "tool_choice": {"type": "tool", "name": "weather", "disable_parallel_tool_use": true},
        "messages": [
            {"role": "user", "content": [{"type": "image", "source": {"type": "url", "url": "https://e.com/a.jpg"}}, {"type": "text", "text": "hi"}]},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "tu_1", "name": "weather", "input": {"city": "Oslo"}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "tu_1", "content": "3C"}, {"type": "text", "text": "and?"}]},
        ],
    });
    let o = request(Dialect::Anthropic, Dialect::OpenAi, &body, "gpt-x").expect("ok");
    assert_eq!(o["model"], "gpt-x");
    assert_eq!(
        o["messages"][0],
        json!({"role": "system", "content": "Be brief."})
    );
    assert_eq!(
        o["messages"][1]["content"][0]["image_url"]["url"],
        "https://e.com/a.jpg"
    );
    assert_eq!(
        o["messages"][2]["tool_calls"][0]["function"]["arguments"],
        "{\"city\":\"Oslo\"}"
    );
    assert_eq!(
        o["messages"][3],
        json!({"role": "tool", "tool_call_id": "tu_1", "content": "3C"})
    );
    assert_eq!(o["messages"][4]["content"][0]["text"], "and?");
    assert_eq!(o["stream_options"]["include_usage"], true);
    assert_eq!(o["reasoning_effort"], "medium");
    assert_eq!(o["parallel_tool_calls"], false);
    assert_eq!(o["tool_choice"]["function"]["name"], "weather");
    // Through the hub to Gemini too.
    let e =
        request(Dialect::Anthropic, Dialect::Gemini, &body, "gemini-x").expect_err("Gemini cannot");
    assert_eq!(e.feature, "parallel_tool_calls");
    let mut parallel = body.clone();
    parallel["tool_choice"] = json!({"type": "tool", "name": "weather"});
    let g = request(Dialect::Anthropic, Dialect::Gemini, &parallel, "gemini-x").expect("ok");
    assert_eq!(
        g["contents"][2]["parts"][0]["functionResponse"]["name"],
        "weather"
    );
    let mut top_k = body.clone();
    top_k["top_k"] = json!(5);
    assert_eq!(
        request(Dialect::Anthropic, Dialect::OpenAi, &top_k, "m")
            .expect_err("top_k")
            .feature,
        "top_k"
    );
    let mut structured = body.clone();
    structured["output_config"] =
        json!({"format": {"type": "json_schema", "schema": {"type": "object"}}});
    assert_eq!(
        request(Dialect::Anthropic, Dialect::OpenAi, &structured, "m")
            .expect_err("not translated yet")
            .feature,
        "output_config"
    );
    // Past the hub, the refusal names the target the client asked for.
    let refused = request(Dialect::Anthropic, Dialect::Gemini, &top_k, "g").expect_err("top_k");
    assert_eq!(
        (refused.feature.as_str(), refused.target),
        ("top_k", "gemini")
    );
    assert!(refused.why.contains("through OpenAI's shape"), "{refused}");
}

#[test]
fn answers_translate_both_ways() {
    let claude = json!({
        "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-x",
        "content": [{"type": "text", "text": "Checking."}, {"type": "tool_use", "id": "tu_1", "name": "weather", "input": {"city": "Oslo"}}],
        "stop_reason": "tool_use",
        "usage": {"input_tokens": 10, "output_tokens": 5, "cache_read_input_tokens": 4, "cache_creation_input_tokens": 2},
    });
    let o = response(
        Dialect::Anthropic,
        Dialect::OpenAi,
        claude.to_string().as_bytes(),
        "m",
    );
    assert_eq!(o["choices"][0]["message"]["content"], "Checking.");
    assert_eq!(
        o["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"],
        "{\"city\":\"Oslo\"}"
    );
    assert_eq!(o["choices"][0]["finish_reason"], "tool_calls");
    assert_eq!(o["usage"]["prompt_tokens"], 16);
    assert_eq!(o["usage"]["prompt_tokens_details"]["cached_tokens"], 4);
    let back = response(
        Dialect::OpenAi,
        Dialect::Anthropic,
        o.to_string().as_bytes(),
        "m",
    );
    assert_eq!(back["content"][1]["input"], json!({"city": "Oslo"}));
    assert_eq!(back["stop_reason"], "tool_use");
    assert_eq!(back["usage"]["input_tokens"], 12, "16 less the 4 cached");
    let gemini = json!({"candidates": [{"content": {"role": "model", "parts": [{"text": "Hi"}]}, "finishReason": "MAX_TOKENS"}],
        "usageMetadata": {"promptTokenCount": 7, "candidatesTokenCount": 3, "thoughtsTokenCount": 2}, "modelVersion": "gemini-x"});
    let o = response(
        Dialect::Gemini,
        Dialect::OpenAi,
        gemini.to_string().as_bytes(),
        "m",
    );
    assert_eq!(o["choices"][0]["finish_reason"], "length");
    assert_eq!(o["usage"]["completion_tokens"], 5);
    assert_eq!(
        o["usage"]["completion_tokens_details"]["reasoning_tokens"],
        2
    );
    let bad = response(Dialect::Gemini, Dialect::Anthropic, b"not json", "m");
    assert_eq!(bad["type"], "error");
}

fn sse_data(out: &[u8]) -> Vec<Value> {
    String::from_utf8_lossy(out)
        .split("\n\n")
        .filter_map(|e| e.lines().find_map(|l| l.strip_prefix("data: ")))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).expect("json"))
        .collect()
}

#[test]
fn an_anthropic_stream_becomes_openai_chunks() {
    let events = [
        json!({"type": "message_start", "message": {"id": "msg_1", "model": "claude-x", "usage": {"input_tokens": 9, "output_tokens": 1}}}),
        json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hel"}}),
        json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "lo"}}),
        json!({"type": "content_block_start", "index": 1, "content_block": {"type": "tool_use", "id": "tu_1", "name": "weather", "input": {}}}),
        json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "{\"ci"}}),
        json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "ty\":\"Oslo\"}"}}),
        json!({"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 12}}),
        json!({"type": "message_stop"}),
    ];
    let mut t = StreamTranslator::new(Dialect::Anthropic, Dialect::OpenAi, true, "m");
    let mut out = Vec::new();
    for e in &events {
        t.event(
            e["type"].as_str().expect("type"),
            e.to_string().as_bytes(),
            &mut out,
        );
    }
    t.finish(&mut out);
    assert!(out.ends_with(b"data: [DONE]\n\n"));
    let chunks = sse_data(&out);
    let text: String = chunks
        .iter()
        .filter_map(|c| c.pointer("/choices/0/delta/content")?.as_str())
        .collect();
    assert_eq!(text, "Hello");
    let args: String = chunks
        .iter()
        .filter_map(|c| {
            c.pointer("/choices/0/delta/tool_calls/0/function/arguments")?
                .as_str()
        })
        .collect();
    assert_eq!(args, "{\"city\":\"Oslo\"}");
    assert!(chunks
        .iter()
        .any(|c| c.pointer("/choices/0/finish_reason") == Some(&json!("tool_calls"))));
    let last = chunks.last().expect("usage chunk");
    assert_eq!(last["choices"], json!([]));
    assert_eq!(last["usage"]["prompt_tokens"], 9);
    assert_eq!(last["usage"]["completion_tokens"], 12);
}

#[test]
fn an_openai_stream_becomes_anthropic_events() {
    let chunks = [
        json!({"id": "c1", "model": "gpt-x", "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}),
        json!({"id": "c1", "model": "gpt-x", "choices": [{"index": 0, "delta": {"content": "Hi"}}]}),
        json!({"id": "c1", "model": "gpt-x", "choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "id": "call_a", "type": "function", "function": {"name": "f", "arguments": ""}}]}}]}),
        json!({"id": "c1", "model": "gpt-x", "choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": "{}"}}]}}]}),
        json!({"id": "c1", "model": "gpt-x", "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]}),
        json!({"id": "c1", "model": "gpt-x", "choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 3}}),
    ];
    let mut t = StreamTranslator::new(Dialect::OpenAi, Dialect::Anthropic, false, "m");
    let mut out = Vec::new();
    for c in &chunks {
        t.event("", c.to_string().as_bytes(), &mut out);
    }
    t.event("", b"[DONE]", &mut out);
    t.finish(&mut out);
    let events = sse_data(&out);
    let types: Vec<&str> = events.iter().filter_map(|e| e["type"].as_str()).collect();
    assert_eq!(
        types,
        [
            "message_start",
            "content_block_start",
            "content_block_delta",
            "content_block_stop",
            "content_block_start",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop"
        ]
    );
    assert_eq!(events[4]["content_block"]["name"], "f");
    assert_eq!(events[7]["delta"]["stop_reason"], "tool_use");
    assert_eq!(events[7]["usage"]["output_tokens"], 3);
}

#[test]
fn errors_take_the_clients_shape() {
    let body =
        br#"{"error":{"code":429,"message":"Resource exhausted","status":"RESOURCE_EXHAUSTED"}}"#;
    let m = error_message(body);
    assert_eq!(m, "Resource exhausted");
    let o = error(Dialect::OpenAi, 429, &m);
    assert_eq!(o["error"]["type"], "rate_limit_error");
    let a = error(Dialect::Anthropic, 529, "busy");
    assert_eq!(a["error"]["type"], "overloaded_error");
    assert_eq!(error_message(br#"{"message":"bad sig"}"#), "bad sig");
    assert_eq!(error_message(b"plain text"), "plain text");
}

#[test]
fn finish_reasons_map_from_every_upstream_to_both_clients() {
    // (upstream, its answer with the reason, OpenAI finish_reason, Anthropic stop_reason)
    let text = |reason: &str| {
        json!({"id": "msg_1", "type": "message", "role": "assistant", "model": "c",
            "content": [{"type": "text", "text": "x"}], "stop_reason": reason,
            "usage": {"input_tokens": 1, "output_tokens": 1}})
    };
    let gemini = |reason: &str| json!({"candidates": [{"content": {"role": "model", "parts": [{"text": "x"}]}, "finishReason": reason}]});
    let converse = |reason: &str| {
        json!({"output": {"message": {"role": "assistant", "content": [{"text": "x"}]}},
            "stopReason": reason, "usage": {"inputTokens": 1, "outputTokens": 1, "totalTokens": 2}})
    };
    let openai = |reason: &str| {
        json!({"id": "c", "object": "chat.completion", "model": "g", "choices": [{"index": 0,
            "message": {"role": "assistant", "content": "x"}, "finish_reason": reason}]})
    };
    let cases = [
        (Dialect::Anthropic, text("end_turn"), "stop", "end_turn"),
        (
            Dialect::Anthropic,
            text("stop_sequence"),
            "stop",
            "end_turn",
        ),
        (
            Dialect::Anthropic,
            text("max_tokens"),
            "length",
            "max_tokens",
        ),
        (
            Dialect::Anthropic,
            text("refusal"),
            "content_filter",
            "refusal",
        ),
        (Dialect::Gemini, gemini("STOP"), "stop", "end_turn"),
        (
            Dialect::Gemini,
            gemini("MAX_TOKENS"),
            "length",
            "max_tokens",
        ),
        (
            Dialect::Gemini,
            gemini("SAFETY"),
            "content_filter",
            "refusal",
        ),
        (Dialect::Converse, converse("end_turn"), "stop", "end_turn"),
        (
            Dialect::Converse,
            converse("max_tokens"),
            "length",
            "max_tokens",
        ),
        (
            Dialect::Converse,
            converse("guardrail_intervened"),
            "content_filter",
            "refusal",
        ),
        (Dialect::OpenAi, openai("length"), "length", "max_tokens"),
        (
            Dialect::OpenAi,
            openai("content_filter"),
            "content_filter",
            "refusal",
        ),
    ];
    for (upstream, answer, finish, stop) in cases {
        let body = answer.to_string();
        if upstream != Dialect::OpenAi {
            let o = response(upstream, Dialect::OpenAi, body.as_bytes(), "m");
            assert_eq!(
                o["choices"][0]["finish_reason"], finish,
                "{upstream:?} {answer}"
            );
        }
        if upstream != Dialect::Anthropic {
            let a = response(upstream, Dialect::Anthropic, body.as_bytes(), "m");
            assert_eq!(a["stop_reason"], stop, "{upstream:?} {answer}");
        }
    }
}

#[test]
fn structured_output_and_reasoning_reach_the_targets_that_have_them() {
    let schema = json!({"type": "object", "properties": {"n": {"type": "integer"}}});
    let mut b = hub();
    b["response_format"] =
        json!({"type": "json_schema", "json_schema": {"name": "n", "schema": schema}});
    let g = request(Dialect::OpenAi, Dialect::Gemini, &b, "gemini-x").expect("Gemini has it");
    assert_eq!(
        g["generationConfig"]["responseMimeType"],
        "application/json"
    );
    assert_eq!(g["generationConfig"]["responseJsonSchema"], schema);
    for target in [Dialect::Anthropic, Dialect::Converse] {
        let e = request(Dialect::OpenAi, target, &b, "m").expect_err("no JSON mode");
        assert_eq!(e.feature, "response_format", "{target:?}");
    }
    let mut r = hub();
    r["reasoning_effort"] = json!("medium");
    let c = request(
        Dialect::OpenAi,
        Dialect::Converse,
        &r,
        "anthropic.claude-sonnet-4-5-v1:0",
    )
    .expect("Claude on Bedrock thinks");
    let budget = &c["additionalModelRequestFields"]["thinking"]["budget_tokens"];
    assert!(budget.as_u64().is_some_and(|b| b >= 1024), "{c}");
    let e = request(
        Dialect::OpenAi,
        Dialect::Converse,
        &r,
        "amazon.nova-pro-v1:0",
    )
    .expect_err("no thinking field for Nova");
    assert_eq!(e.feature, "reasoning_effort");
    // An Anthropic client's thinking budget becomes OpenAI's effort, and Gemini's budget.
    let thinking = json!({"model": "x", "max_tokens": 50, "thinking": {"type": "enabled", "budget_tokens": 2048},
        "messages": [{"role": "user", "content": "hi"}]});
    let g = request(Dialect::Anthropic, Dialect::Gemini, &thinking, "gemini-x").expect("ok");
    assert!(
        g["generationConfig"]["thinkingConfig"]["thinkingBudget"]
            .as_u64()
            .is_some(),
        "{g}"
    );
}
