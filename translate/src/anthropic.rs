//! Anthropic Messages: a target for hub requests, a client shape (its requests become hub
//! requests; answers are rendered in it), and an upstream whose answers and events are read.

use serde_json::{json, Map, Value};

use crate::openai::{check_members, max_tokens, stop_sequences};
use crate::{push_turn, Answer, Block, Delta, Dialect, Finish, Unsupported, Usage};

const ME: Dialect = Dialect::Anthropic;

/// Anthropic's error `type` for a status.
pub fn error_type(status: u16) -> &'static str {
    match status {
        400 | 409 | 422 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        529 | 503 => "overloaded_error",
        _ => "api_error",
    }
}

/// Anthropic requires `max_tokens`; a hub request without one gets this.
pub const DEFAULT_MAX_TOKENS: u64 = 4096;

/// The smallest thinking budget Anthropic accepts.
const MIN_THINKING_BUDGET: u64 = 1024;

/// An OpenAI image part as an Anthropic image block.
fn image(url: &str) -> Value {
    match crate::data_url(url) {
        Some((media, data)) => json!({
            "type": "image",
            "source": { "type": "base64", "media_type": media, "data": data },
        }),
        None => json!({ "type": "image", "source": { "type": "url", "url": url } }),
    }
}

/// OpenAI content (a string or parts) as Anthropic blocks.
fn blocks(content: Option<&Value>) -> Result<Vec<Value>, Unsupported> {
    match content {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) if s.is_empty() => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(vec![json!({ "type": "text", "text": s })]),
        Some(Value::Array(parts)) => parts
            .iter()
            .map(|p| match p.get("type").and_then(Value::as_str) {
                Some("text") => Ok(
                    json!({ "type": "text", "text": p.get("text").cloned().unwrap_or(json!("")) }),
                ),
                Some("image_url") => {
                    let url = p
                        .pointer("/image_url/url")
                        .and_then(Value::as_str)
                        .unwrap_or("");
                    Ok(image(url))
                }
                other => Err(Unsupported::new(
                    format!("content part {:?}", other.unwrap_or("?")),
                    ME,
                    "only text and image_url parts translate",
                )),
            })
            .collect(),
        Some(_) => Err(Unsupported::new(
            "content",
            ME,
            "content must be a string or an array of parts",
        )),
    }
}

/// A hub (OpenAI) request as an Anthropic Messages request.
pub fn request_from_openai(body: &Value, model: &str) -> Result<Value, Unsupported> {
    check_members(
        body,
        ME,
        &[
            ("n", json!(1)),
            ("seed", Value::Null),
            ("presence_penalty", json!(0)),
            ("frequency_penalty", json!(0)),
            ("logit_bias", Value::Null),
            ("logprobs", json!(false)),
            ("top_logprobs", Value::Null),
            ("modalities", json!(["text"])),
            ("audio", Value::Null),
            ("prediction", Value::Null),
            ("web_search_options", Value::Null),
            ("verbosity", Value::Null),
        ],
    )?;
    if !crate::unset(body.get("response_format"), &json!({"type": "text"})) {
        return Err(Unsupported::new(
            "response_format",
            ME,
            "Anthropic's Messages API has no JSON mode Tally can translate to; describe the format in the prompt, or use a tool with the schema",
        ));
    }
    let mut system = Vec::new();
    let mut messages = Vec::new();
    for m in body
        .get("messages")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        match m.get("role").and_then(Value::as_str) {
            Some("system" | "developer") => {
                let t = crate::content_text(m.get("content"));
                system.push(json!({ "type": "text", "text": t }));
            }
            Some("user") => push_turn(&mut messages, "user", "content", blocks(m.get("content"))?),
            Some("assistant") => {
                let mut content = blocks(m.get("content"))?;
                for call in m
                    .get("tool_calls")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    let args = call
                        .pointer("/function/arguments")
                        .and_then(Value::as_str)
                        .unwrap_or("{}");
                    let input: Value = serde_json::from_str(args).unwrap_or_else(|_| json!({}));
                    content.push(json!({
                        "type": "tool_use",
                        "id": call.get("id").cloned().unwrap_or(json!("")),
                        "name": call.pointer("/function/name").cloned().unwrap_or(json!("")),
                        "input": input,
                    }));
                }
                push_turn(&mut messages, "assistant", "content", content);
            }
            Some("tool") => {
                let result = json!({
                    "type": "tool_result",
                    "tool_use_id": m.get("tool_call_id").cloned().unwrap_or(json!("")),
                    "content": crate::content_text(m.get("content")),
                });
                push_turn(&mut messages, "user", "content", vec![result]);
            }
            other => {
                return Err(Unsupported::new(
                    format!("message role {:?}", other.unwrap_or("?")),
                    ME,
                    "roles are system, developer, user, assistant and tool",
                ))
            }
        }
    }
    let mut out = Map::new();
    out.insert("model".into(), json!(model));
    let mut limit = max_tokens(body).unwrap_or(DEFAULT_MAX_TOKENS);
    if let Some(effort) = body.get("reasoning_effort").and_then(Value::as_str) {
        let budget = crate::effort_budget(effort).ok_or_else(|| {
            Unsupported::new("reasoning_effort", ME, format!("unknown effort {effort:?}"))
        })?;
        if budget > 0 {
            let budget = budget.max(MIN_THINKING_BUDGET);
            // The budget counts inside max_tokens; the answer keeps the room it asked for.
            limit += budget;
            out.insert(
                "thinking".into(),
                json!({ "type": "enabled", "budget_tokens": budget }),
            );
        }
    }
    out.insert("max_tokens".into(), json!(limit));
    if !system.is_empty() {
        out.insert("system".into(), Value::Array(system));
    }
    out.insert("messages".into(), Value::Array(messages));
    for (from, to) in [("temperature", "temperature"), ("top_p", "top_p")] {
        if let Some(v) = body.get(from).filter(|v| !v.is_null()) {
            out.insert(to.into(), v.clone());
        }
    }
    if let Some(stop) = stop_sequences(body) {
        out.insert("stop_sequences".into(), Value::Array(stop));
    }
    if body.get("stream").and_then(Value::as_bool) == Some(true) {
        out.insert("stream".into(), json!(true));
    }
    if let Some(user) = body.get("user").and_then(Value::as_str) {
        out.insert("metadata".into(), json!({ "user_id": user }));
    }
    if let Some(tools) = body.get("tools").and_then(Value::as_array) {
        let tools = tools
            .iter()
            .map(|t| {
                if t.get("type").and_then(Value::as_str) != Some("function") {
                    return Err(Unsupported::new(
                        "tools",
                        ME,
                        "only function tools translate",
                    ));
                }
                let f = t.get("function").cloned().unwrap_or(json!({}));
                let mut tool = json!({
                    "name": f.get("name").cloned().unwrap_or(json!("")),
                    "input_schema": f.get("parameters").cloned().unwrap_or(json!({"type": "object"})),
                });
                if let Some(d) = f.get("description") {
                    tool["description"] = d.clone();
                }
                Ok(tool)
            })
            .collect::<Result<Vec<_>, _>>()?;
        out.insert("tools".into(), Value::Array(tools));
    }
    let parallel_off = body.get("parallel_tool_calls").and_then(Value::as_bool) == Some(false);
    let choice = match body.get("tool_choice") {
        None | Some(Value::Null) => parallel_off.then(|| json!({ "type": "auto" })),
        Some(Value::String(s)) => Some(match s.as_str() {
            "auto" => json!({ "type": "auto" }),
            "required" => json!({ "type": "any" }),
            "none" => json!({ "type": "none" }),
            other => {
                return Err(Unsupported::new(
                    "tool_choice",
                    ME,
                    format!("unknown tool_choice {other:?}"),
                ))
            }
        }),
        Some(v) => match v.pointer("/function/name") {
            Some(name) => Some(json!({ "type": "tool", "name": name })),
            None => {
                return Err(Unsupported::new(
                    "tool_choice",
                    ME,
                    "an object tool_choice must name a function",
                ))
            }
        },
    };
    if let Some(mut c) = choice {
        if parallel_off && c["type"] != "none" {
            c["disable_parallel_tool_use"] = json!(true);
        }
        out.insert("tool_choice".into(), c);
    }
    Ok(Value::Object(out))
}

/// Anthropic content (a string or blocks) as OpenAI parts, and the tool results in it.
fn parts_and_results(content: Option<&Value>) -> Result<(Vec<Value>, Vec<Value>), Unsupported> {
    let target = Dialect::OpenAi;
    let mut parts = Vec::new();
    let mut results = Vec::new();
    match content {
        Some(Value::String(s)) => parts.push(json!({ "type": "text", "text": s })),
        Some(Value::Array(blocks)) => {
            for b in blocks {
                match b.get("type").and_then(Value::as_str) {
                    Some("text") => parts.push(json!({ "type": "text", "text": b.get("text").cloned().unwrap_or(json!("")) })),
                    Some("image") => {
                        let src = b.get("source").cloned().unwrap_or(json!({}));
                        let url = match src.get("type").and_then(Value::as_str) {
                            Some("base64") => format!(
                                "data:{};base64,{}",
                                src.get("media_type").and_then(Value::as_str).unwrap_or("image/png"),
                                src.get("data").and_then(Value::as_str).unwrap_or("")
                            ),
                            Some("url") => src.get("url").and_then(Value::as_str).unwrap_or("").to_owned(),
                            _ => return Err(Unsupported::new("image source", target, "image sources are base64 or url")),
                        };
                        parts.push(json!({ "type": "image_url", "image_url": { "url": url } }));
                    }
                    Some("tool_result") => {
                        let text = match b.get("content") {
                            Some(Value::String(s)) => s.clone(),
                            Some(Value::Array(inner)) => {
                                if inner.iter().any(|i| i.get("type").and_then(Value::as_str) != Some("text")) {
                                    return Err(Unsupported::new(
                                        "tool_result content",
                                        target,
                                        "an OpenAI tool result is text; images in tool results do not translate",
                                    ));
                                }
                                crate::content_text(Some(&Value::Array(inner.clone())))
                            }
                            _ => String::new(),
                        };
                        results.push(json!({
                            "role": "tool",
                            "tool_call_id": b.get("tool_use_id").cloned().unwrap_or(json!("")),
                            "content": text,
                        }));
                    }
                    // Earlier turns' thinking is Anthropic's to check; other models ignore it.
                    Some("thinking" | "redacted_thinking") => {}
                    other => {
                        return Err(Unsupported::new(
                            format!("content block {:?}", other.unwrap_or("?")),
                            target,
                            "text, image, tool_use and tool_result blocks translate",
                        ))
                    }
                }
            }
        }
        _ => {}
    }
    Ok((parts, results))
}

/// Request members of an Anthropic request and whether they translate to OpenAI.
const ANTHROPIC_MEMBERS: &[&str] = &[
    "model",
    "messages",
    "system",
    "max_tokens",
    "temperature",
    "top_p",
    "stop_sequences",
    "stream",
    "tools",
    "tool_choice",
    "metadata",
    "thinking",
    "top_k",
    "service_tier",
];

/// An Anthropic request as a hub (OpenAI) request.
pub fn request_to_openai(body: &Value, model: &str) -> Result<Value, Unsupported> {
    let target = Dialect::OpenAi;
    let obj = body.as_object().cloned().unwrap_or_default();
    for key in obj.keys() {
        if !ANTHROPIC_MEMBERS.contains(&key.as_str()) {
            return Err(Unsupported::new(
                key.as_str(),
                target,
                "Tally does not know this member, so it cannot say what the target would make of it",
            ));
        }
    }
    if obj.get("top_k").is_some_and(|v| !v.is_null()) {
        return Err(Unsupported::new(
            "top_k",
            target,
            "OpenAI's Chat Completions has no top_k; use top_p",
        ));
    }
    let mut messages = Vec::new();
    match obj.get("system") {
        Some(Value::String(s)) => messages.push(json!({ "role": "system", "content": s })),
        Some(Value::Array(b)) => messages.push(json!({
            "role": "system",
            "content": crate::content_text(Some(&Value::Array(b.clone()))),
        })),
        _ => {}
    }
    for m in obj
        .get("messages")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        match m.get("role").and_then(Value::as_str) {
            Some("user") => {
                let (parts, results) = parts_and_results(m.get("content"))?;
                // Tool results answer the previous assistant turn, so they come first.
                messages.extend(results);
                if !parts.is_empty() {
                    messages.push(json!({ "role": "user", "content": parts }));
                }
            }
            Some("assistant") => {
                let mut text = String::new();
                let mut calls = Vec::new();
                match m.get("content") {
                    Some(Value::String(s)) => text.push_str(s),
                    Some(Value::Array(blocks)) => {
                        for b in blocks {
                            match b.get("type").and_then(Value::as_str) {
                                Some("text") => {
                                    text.push_str(b.get("text").and_then(Value::as_str).unwrap_or(""))
                                }
                                Some("tool_use") => calls.push(json!({
                                    "id": b.get("id").cloned().unwrap_or(json!("")),
                                    "type": "function",
                                    "function": {
                                        "name": b.get("name").cloned().unwrap_or(json!("")),
                                        "arguments": b.get("input").map(Value::to_string).unwrap_or_else(|| "{}".into()),
                                    },
                                })),
                                Some("thinking" | "redacted_thinking") => {}
                                other => {
                                    return Err(Unsupported::new(
                                        format!("content block {:?}", other.unwrap_or("?")),
                                        target,
                                        "assistant turns translate text and tool_use blocks",
                                    ))
                                }
                            }
                        }
                    }
                    _ => {}
                }
                let mut msg = json!({ "role": "assistant", "content": if text.is_empty() { Value::Null } else { json!(text) } });
                if !calls.is_empty() {
                    msg["tool_calls"] = Value::Array(calls);
                }
                messages.push(msg);
            }
            other => {
                return Err(Unsupported::new(
                    format!("message role {:?}", other.unwrap_or("?")),
                    target,
                    "Anthropic roles are user and assistant",
                ))
            }
        }
    }
    let mut out = Map::new();
    out.insert("model".into(), json!(model));
    out.insert("messages".into(), Value::Array(messages));
    if let Some(n) = obj.get("max_tokens").filter(|v| !v.is_null()) {
        // o-series and gpt-5 models refuse `max_tokens`; every OpenAI model and most
        // compatible servers take `max_completion_tokens`, but older compatible servers
        // (vLLM, Ollama) know only `max_tokens`.
        let reasoning_model = ["o1", "o3", "o4", "gpt-5"]
            .iter()
            .any(|p| model.starts_with(p));
        let name = if reasoning_model {
            "max_completion_tokens"
        } else {
            "max_tokens"
        };
        out.insert(name.into(), n.clone());
    }
    for k in ["temperature", "top_p"] {
        if let Some(v) = obj.get(k).filter(|v| !v.is_null()) {
            out.insert(k.into(), v.clone());
        }
    }
    if let Some(s) = obj.get("stop_sequences").and_then(Value::as_array) {
        if !s.is_empty() {
            out.insert("stop".into(), Value::Array(s.clone()));
        }
    }
    if obj.get("stream").and_then(Value::as_bool) == Some(true) {
        out.insert("stream".into(), json!(true));
        out.insert("stream_options".into(), json!({ "include_usage": true }));
    }
    if let Some(u) = obj.get("metadata").and_then(|m| m.get("user_id")) {
        out.insert("user".into(), u.clone());
    }
    if let Some(t) = obj.get("thinking").filter(|t| t["type"] == "enabled") {
        let budget = t.get("budget_tokens").and_then(Value::as_u64).unwrap_or(0);
        out.insert(
            "reasoning_effort".into(),
            json!(crate::budget_effort(budget)),
        );
    }
    if let Some(tools) = obj.get("tools").and_then(Value::as_array) {
        let tools = tools
            .iter()
            .map(|t| {
                if t.get("type").is_some_and(|ty| ty != "custom") {
                    return Err(Unsupported::new(
                        format!("tool {}", t.get("type").cloned().unwrap_or_default()),
                        target,
                        "Anthropic's server tools run at Anthropic; only client tools translate",
                    ));
                }
                let mut f = json!({
                    "name": t.get("name").cloned().unwrap_or(json!("")),
                    "parameters": t.get("input_schema").cloned().unwrap_or(json!({"type": "object"})),
                });
                if let Some(d) = t.get("description") {
                    f["description"] = d.clone();
                }
                Ok(json!({ "type": "function", "function": f }))
            })
            .collect::<Result<Vec<_>, _>>()?;
        out.insert("tools".into(), Value::Array(tools));
    }
    if let Some(c) = obj.get("tool_choice") {
        let choice = match c.get("type").and_then(Value::as_str) {
            Some("auto") => json!("auto"),
            Some("any") => json!("required"),
            Some("none") => json!("none"),
            Some("tool") => {
                json!({ "type": "function", "function": { "name": c.get("name").cloned().unwrap_or(json!("")) } })
            }
            _ => {
                return Err(Unsupported::new(
                    "tool_choice",
                    target,
                    "tool_choice types are auto, any, tool and none",
                ))
            }
        };
        out.insert("tool_choice".into(), choice);
        if c.get("disable_parallel_tool_use").and_then(Value::as_bool) == Some(true) {
            out.insert("parallel_tool_calls".into(), json!(false));
        }
    }
    Ok(Value::Object(out))
}

fn finish(reason: &str) -> Finish {
    match reason {
        "max_tokens" | "model_context_window_exceeded" => Finish::Length,
        "tool_use" => Finish::ToolCalls,
        "refusal" => Finish::ContentFilter,
        _ => Finish::Stop,
    }
}

fn usage(u: &Value) -> Usage {
    let n = |k: &str| u.get(k).and_then(Value::as_u64).unwrap_or(0);
    let (read, write) = (
        n("cache_read_input_tokens"),
        n("cache_creation_input_tokens"),
    );
    Usage {
        input: n("input_tokens") + read + write,
        output: n("output_tokens"),
        cache_read: read,
        cache_write: write,
        reasoning: 0,
    }
}

fn usage_json(u: &Usage) -> Value {
    json!({
        "input_tokens": u.input.saturating_sub(u.cache_read + u.cache_write),
        "output_tokens": u.output,
        "cache_read_input_tokens": u.cache_read,
        "cache_creation_input_tokens": u.cache_write,
    })
}

/// Reads an Anthropic answer.
pub fn parse_response(v: &Value) -> Option<Answer> {
    let mut content = Vec::new();
    for b in v.get("content")?.as_array()? {
        match b.get("type").and_then(Value::as_str) {
            Some("text") => content.push(Block::Text(
                b.get("text")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned(),
            )),
            Some("thinking") => content.push(Block::Reasoning(
                b.get("thinking")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned(),
            )),
            Some("tool_use") => content.push(Block::Tool {
                id: b.get("id").and_then(Value::as_str).unwrap_or("").to_owned(),
                name: b
                    .get("name")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned(),
                arguments: b.get("input").map_or_else(|| "{}".into(), Value::to_string),
            }),
            _ => {}
        }
    }
    Some(Answer {
        id: v.get("id").and_then(Value::as_str).unwrap_or("").to_owned(),
        model: v
            .get("model")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned(),
        content,
        finish: finish(
            v.get("stop_reason")
                .and_then(Value::as_str)
                .unwrap_or("end_turn"),
        ),
        usage: v.get("usage").map(usage).unwrap_or_default(),
    })
}

fn message_id(id: &str) -> String {
    if id.is_empty() {
        format!("msg_tally{}", crate::openai::now())
    } else {
        id.to_owned()
    }
}

/// An answer as Anthropic returns it.
pub fn render_response(a: &Answer) -> Value {
    let content: Vec<Value> = a
        .content
        .iter()
        .map(|b| match b {
            Block::Text(t) => json!({ "type": "text", "text": t }),
            Block::Reasoning(t) => json!({ "type": "thinking", "thinking": t, "signature": "" }),
            Block::Tool {
                id,
                name,
                arguments,
            } => json!({
                "type": "tool_use", "id": id, "name": name,
                "input": serde_json::from_str::<Value>(arguments).unwrap_or_else(|_| json!({})),
            }),
        })
        .collect();
    json!({
        "id": message_id(&a.id),
        "type": "message",
        "role": "assistant",
        "model": a.model,
        "content": content,
        "stop_reason": a.finish.anthropic(),
        "stop_sequence": null,
        "usage": usage_json(&a.usage),
    })
}

/// Reads an Anthropic stream's events into deltas.
#[derive(Debug, Default)]
pub(crate) struct Decoder {
    /// Content block index → tool call number, for the blocks that are tool calls.
    tools: Vec<(u64, usize)>,
    usage: Usage,
}

impl Decoder {
    pub(crate) fn event(&mut self, data: &[u8], out: &mut Vec<Delta>) {
        let Ok(v) = serde_json::from_slice::<Value>(data) else {
            return;
        };
        let index = v.get("index").and_then(Value::as_u64).unwrap_or(0);
        match v.get("type").and_then(Value::as_str) {
            Some("message_start") => {
                let m = v.get("message").cloned().unwrap_or_default();
                if let Some(u) = m.get("usage") {
                    self.usage = usage(u);
                }
                out.push(Delta::Start {
                    id: m.get("id").and_then(Value::as_str).unwrap_or("").to_owned(),
                    model: m
                        .get("model")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_owned(),
                });
            }
            Some("content_block_start") => {
                let b = v.get("content_block").cloned().unwrap_or_default();
                if b["type"] == "tool_use" {
                    let n = self.tools.len();
                    self.tools.push((index, n));
                    out.push(Delta::ToolStart {
                        index: n,
                        id: b.get("id").and_then(Value::as_str).unwrap_or("").to_owned(),
                        name: b
                            .get("name")
                            .and_then(Value::as_str)
                            .unwrap_or("")
                            .to_owned(),
                    });
                }
            }
            Some("content_block_delta") => {
                let d = v.get("delta").cloned().unwrap_or_default();
                let s = |k: &str| d.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
                match d.get("type").and_then(Value::as_str) {
                    Some("text_delta") => out.push(Delta::Text(s("text"))),
                    Some("thinking_delta") => out.push(Delta::Reasoning(s("thinking"))),
                    Some("input_json_delta") => {
                        if let Some(&(_, n)) = self.tools.iter().find(|(i, _)| *i == index) {
                            let arguments = s("partial_json");
                            if !arguments.is_empty() {
                                out.push(Delta::ToolArguments {
                                    index: n,
                                    arguments,
                                });
                            }
                        }
                    }
                    _ => {}
                }
            }
            Some("message_delta") => {
                if let Some(u) = v.get("usage") {
                    // message_delta's counts are cumulative; input counts may be absent.
                    let later = usage(u);
                    self.usage.output = later.output;
                    if u.get("input_tokens").is_some() {
                        self.usage.input = later.input;
                        self.usage.cache_read = later.cache_read;
                        self.usage.cache_write = later.cache_write;
                    }
                }
                if let Some(r) = v.pointer("/delta/stop_reason").and_then(Value::as_str) {
                    out.push(Delta::Finish(finish(r)));
                }
                out.push(Delta::Usage(self.usage));
            }
            Some("error") => out.push(Delta::from_error(&v["error"])),
            _ => {}
        }
    }
}

/// The kind of the content block an encoder has open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Open {
    Text,
    Thinking,
    Tool(usize),
}

/// Writes deltas as an Anthropic stream: `message_start`, content blocks opened and closed
/// around their deltas, `message_delta` with the stop reason and usage, `message_stop`.
#[derive(Debug)]
pub(crate) struct Encoder {
    model: String,
    id: String,
    started: bool,
    open: Option<(Open, usize)>,
    next_block: usize,
    /// Tool call number → its block index.
    tool_blocks: Vec<(usize, usize)>,
    finish: Option<Finish>,
    usage: Usage,
}

impl Encoder {
    pub(crate) fn new(model: &str) -> Self {
        Self {
            model: model.to_owned(),
            id: String::new(),
            started: false,
            open: None,
            next_block: 0,
            tool_blocks: Vec::new(),
            finish: None,
            usage: Usage::default(),
        }
    }

    fn start(&mut self, out: &mut Vec<u8>) {
        if self.started {
            return;
        }
        self.started = true;
        let id = message_id(&self.id);
        event(
            "message_start",
            &json!({ "type": "message_start", "message": {
                "id": id, "type": "message", "role": "assistant", "model": self.model,
                "content": [], "stop_reason": null, "stop_sequence": null,
                "usage": { "input_tokens": 0, "output_tokens": 0 },
            }}),
            out,
        );
    }

    fn close(&mut self, out: &mut Vec<u8>) {
        if let Some((_, index)) = self.open.take() {
            event(
                "content_block_stop",
                &json!({ "type": "content_block_stop", "index": index }),
                out,
            );
        }
    }

    /// Makes `kind` the open block, closing another, and returns its index.
    fn open(&mut self, kind: Open, block: Value, out: &mut Vec<u8>) -> usize {
        if let Some((k, i)) = self.open {
            if k == kind {
                return i;
            }
        }
        self.close(out);
        let index = self.next_block;
        self.next_block += 1;
        event(
            "content_block_start",
            &json!({ "type": "content_block_start", "index": index, "content_block": block }),
            out,
        );
        self.open = Some((kind, index));
        index
    }

    pub(crate) fn delta(&mut self, d: Delta, out: &mut Vec<u8>) {
        if let Delta::Start { id, model } = &d {
            if !id.is_empty() {
                self.id = id.clone();
            }
            if !model.is_empty() {
                self.model = model.clone();
            }
        }
        self.start(out);
        match d {
            Delta::Start { .. } => {}
            Delta::Text(t) => {
                let i = self.open(Open::Text, json!({ "type": "text", "text": "" }), out);
                event(
                    "content_block_delta",
                    &json!({ "type": "content_block_delta", "index": i,
                        "delta": { "type": "text_delta", "text": t } }),
                    out,
                );
            }
            Delta::Reasoning(t) => {
                let i = self.open(
                    Open::Thinking,
                    json!({ "type": "thinking", "thinking": "", "signature": "" }),
                    out,
                );
                event(
                    "content_block_delta",
                    &json!({ "type": "content_block_delta", "index": i,
                        "delta": { "type": "thinking_delta", "thinking": t } }),
                    out,
                );
            }
            Delta::ToolStart { index, id, name } => {
                let i = self.open(
                    Open::Tool(index),
                    json!({ "type": "tool_use", "id": id, "name": name, "input": {} }),
                    out,
                );
                self.tool_blocks.push((index, i));
            }
            Delta::ToolArguments { index, arguments } => {
                // Arguments for a call whose block is no longer open still name its index:
                // the SDKs accumulate by index.
                if let Some(&(_, i)) = self.tool_blocks.iter().find(|(t, _)| *t == index) {
                    event(
                        "content_block_delta",
                        &json!({ "type": "content_block_delta", "index": i,
                            "delta": { "type": "input_json_delta", "partial_json": arguments } }),
                        out,
                    );
                }
            }
            Delta::Finish(f) => self.finish = Some(f),
            Delta::Usage(u) => self.usage = u,
            Delta::Error(message) => {
                let e = crate::error(Dialect::Anthropic, 500, &message);
                event("error", &e, out);
            }
        }
    }

    pub(crate) fn finish(&mut self, out: &mut Vec<u8>) {
        self.start(out);
        self.close(out);
        let reason = self.finish.unwrap_or(Finish::Stop).anthropic();
        event(
            "message_delta",
            &json!({ "type": "message_delta",
                "delta": { "stop_reason": reason, "stop_sequence": null },
                "usage": usage_json(&self.usage) }),
            out,
        );
        event("message_stop", &json!({ "type": "message_stop" }), out);
    }
}

fn event(name: &str, v: &Value, out: &mut Vec<u8>) {
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\ndata: ");
    let _ = serde_json::to_writer(&mut *out, v);
    out.extend_from_slice(b"\n\n");
}
