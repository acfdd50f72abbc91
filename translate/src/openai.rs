//! OpenAI Chat Completions: the hub of requests, and one of the two shapes answers are
//! rendered in. Parses upstream answers and chunks too, for Anthropic clients served by an
//! OpenAI-compatible model.

use serde_json::{json, Map, Value};

use crate::{Answer, Block, Delta, Dialect, Finish, Unsupported, Usage};

/// OpenAI's error `type` for a status.
pub fn error_type(status: u16) -> &'static str {
    match status {
        400 | 404 | 409 | 413 | 422 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        429 => "rate_limit_error",
        _ => "server_error",
    }
}

/// Request members a target either translates or refuses by name; anything else is refused
/// as unknown, so nothing is dropped silently.
const MEMBERS: &[&str] = &[
    "model",
    "messages",
    "stream",
    "stream_options",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "stop",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "response_format",
    "reasoning_effort",
    "user",
    "n",
    "seed",
    "presence_penalty",
    "frequency_penalty",
    "logit_bias",
    "logprobs",
    "top_logprobs",
    "metadata",
    "store",
    "modalities",
    "audio",
    "prediction",
    "service_tier",
    "web_search_options",
    "verbosity",
];

/// Refuses members of a hub request that `target` does not take: unknown ones, and the
/// `refused` ones unless they hold their "not set" value.
pub(crate) fn check_members(
    body: &Value,
    target: Dialect,
    refused: &[(&str, Value)],
) -> Result<(), Unsupported> {
    let Some(obj) = body.as_object() else {
        return Ok(());
    };
    for key in obj.keys() {
        if !MEMBERS.contains(&key.as_str()) {
            return Err(Unsupported::new(
                key.as_str(),
                target,
                "Tally does not know this member, so it cannot say what the target would make of it",
            ));
        }
    }
    for (name, default) in refused {
        if !crate::unset(obj.get(*name), default) {
            return Err(Unsupported::new(
                *name,
                target,
                "the target has no counterpart; remove it or send it to a provider that has",
            ));
        }
    }
    Ok(())
}

/// The hub's `stop`: a string or an array of them.
pub(crate) fn stop_sequences(body: &Value) -> Option<Vec<Value>> {
    match body.get("stop")? {
        Value::String(s) => Some(vec![json!(s)]),
        Value::Array(a) if !a.is_empty() => Some(a.clone()),
        _ => None,
    }
}

/// The hub's token limit: `max_completion_tokens`, else `max_tokens`.
pub(crate) fn max_tokens(body: &Value) -> Option<u64> {
    body.get("max_completion_tokens")
        .and_then(Value::as_u64)
        .or_else(|| body.get("max_tokens").and_then(Value::as_u64))
}

/// The tool call ids of every assistant message, mapped to their function names (Gemini
/// answers a call by name, not id).
pub(crate) fn tool_names(messages: &[Value]) -> std::collections::HashMap<String, String> {
    messages
        .iter()
        .filter_map(|m| m.get("tool_calls").and_then(Value::as_array))
        .flatten()
        .filter_map(|c| {
            Some((
                c.get("id")?.as_str()?.to_owned(),
                c.pointer("/function/name")?.as_str()?.to_owned(),
            ))
        })
        .collect()
}

fn finish(reason: &str) -> Finish {
    match reason {
        "length" => Finish::Length,
        "tool_calls" | "function_call" => Finish::ToolCalls,
        "content_filter" => Finish::ContentFilter,
        _ => Finish::Stop,
    }
}

fn usage(u: &Value) -> Usage {
    let n = |p: &str| u.pointer(p).and_then(Value::as_u64).unwrap_or(0);
    Usage {
        input: n("/prompt_tokens"),
        output: n("/completion_tokens"),
        cache_read: n("/prompt_tokens_details/cached_tokens"),
        cache_write: 0,
        reasoning: n("/completion_tokens_details/reasoning_tokens"),
    }
}

/// Reads an OpenAI answer.
pub fn parse_response(v: &Value) -> Option<Answer> {
    let choice = v.get("choices")?.get(0)?;
    let message = choice.get("message")?;
    let mut content = Vec::new();
    if let Some(r) = message
        .get("reasoning_content")
        .or_else(|| message.get("reasoning"))
        .and_then(Value::as_str)
    {
        content.push(Block::Reasoning(r.to_owned()));
    }
    let text = crate::content_text(message.get("content"));
    if !text.is_empty() {
        content.push(Block::Text(text));
    }
    for call in message
        .get("tool_calls")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        content.push(Block::Tool {
            id: str_of(call, "/id"),
            name: str_of(call, "/function/name"),
            arguments: str_of(call, "/function/arguments"),
        });
    }
    Some(Answer {
        id: str_of(v, "/id"),
        model: str_of(v, "/model"),
        content,
        finish: finish(
            choice
                .get("finish_reason")
                .and_then(Value::as_str)
                .unwrap_or("stop"),
        ),
        usage: v.get("usage").map(usage).unwrap_or_default(),
    })
}

fn str_of(v: &Value, pointer: &str) -> String {
    v.pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

fn usage_json(u: &Usage) -> Value {
    json!({
        "prompt_tokens": u.input,
        "completion_tokens": u.output,
        "total_tokens": u.input + u.output,
        "prompt_tokens_details": { "cached_tokens": u.cache_read },
        "completion_tokens_details": { "reasoning_tokens": u.reasoning },
    })
}

/// An answer as OpenAI returns it. Reasoning goes in `reasoning_content`, where DeepSeek and
/// most OpenAI-compatible servers put it.
pub fn render_response(a: &Answer) -> Value {
    let mut message = Map::new();
    message.insert("role".into(), json!("assistant"));
    let text: String = a
        .content
        .iter()
        .filter_map(|b| match b {
            Block::Text(t) => Some(t.as_str()),
            _ => None,
        })
        .collect();
    message.insert(
        "content".into(),
        if text.is_empty() {
            Value::Null
        } else {
            json!(text)
        },
    );
    let reasoning: String = a
        .content
        .iter()
        .filter_map(|b| match b {
            Block::Reasoning(t) => Some(t.as_str()),
            _ => None,
        })
        .collect();
    if !reasoning.is_empty() {
        message.insert("reasoning_content".into(), json!(reasoning));
    }
    let calls: Vec<Value> = a
        .content
        .iter()
        .filter_map(|b| match b {
            Block::Tool {
                id,
                name,
                arguments,
            } => Some(json!({
                "id": id, "type": "function",
                "function": { "name": name, "arguments": arguments },
            })),
            _ => None,
        })
        .collect();
    if !calls.is_empty() {
        message.insert("tool_calls".into(), Value::Array(calls));
    }
    json!({
        "id": a.id,
        "object": "chat.completion",
        "created": now(),
        "model": a.model,
        "choices": [{
            "index": 0,
            "message": message,
            "finish_reason": a.finish.openai(),
            "logprobs": null,
        }],
        "usage": usage_json(&a.usage),
    })
}

pub(crate) fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Reads an OpenAI stream's chunks into deltas.
#[derive(Debug, Default)]
pub(crate) struct Decoder {
    started: bool,
}

impl Decoder {
    pub(crate) fn event(&mut self, data: &[u8], out: &mut Vec<Delta>) {
        if data == b"[DONE]" {
            return;
        }
        let Ok(v) = serde_json::from_slice::<Value>(data) else {
            return;
        };
        if let Some(e) = v.get("error") {
            out.push(Delta::from_error(e));
            return;
        }
        if !self.started {
            self.started = true;
            out.push(Delta::Start {
                id: str_of(&v, "/id"),
                model: str_of(&v, "/model"),
            });
        }
        if let Some(choice) = v.get("choices").and_then(|c| c.get(0)) {
            let delta = choice.get("delta");
            let text_of = |k: &str| delta.and_then(|d| d.get(k)).and_then(Value::as_str);
            if let Some(r) = text_of("reasoning_content").or_else(|| text_of("reasoning")) {
                if !r.is_empty() {
                    out.push(Delta::Reasoning(r.to_owned()));
                }
            }
            if let Some(t) = text_of("content") {
                if !t.is_empty() {
                    out.push(Delta::Text(t.to_owned()));
                }
            }
            for call in delta
                .and_then(|d| d.get("tool_calls"))
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let index = call.get("index").and_then(Value::as_u64).unwrap_or(0) as usize;
                if let Some(id) = call.get("id").and_then(Value::as_str) {
                    out.push(Delta::ToolStart {
                        index,
                        id: id.to_owned(),
                        name: str_of(call, "/function/name"),
                    });
                }
                if let Some(args) = call.pointer("/function/arguments").and_then(Value::as_str) {
                    if !args.is_empty() {
                        out.push(Delta::ToolArguments {
                            index,
                            arguments: args.to_owned(),
                        });
                    }
                }
            }
            if let Some(r) = choice.get("finish_reason").and_then(Value::as_str) {
                out.push(Delta::Finish(finish(r)));
            }
        }
        if let Some(u) = v.get("usage").filter(|u| u.is_object()) {
            out.push(Delta::Usage(usage(u)));
        }
    }
}

/// Writes deltas as an OpenAI stream: one `data:` chunk per delta, the usage chunk (with
/// empty `choices`) last when the client asked for it, then `[DONE]`.
#[derive(Debug)]
pub(crate) struct Encoder {
    include_usage: bool,
    id: String,
    model: String,
    created: u64,
    usage: Option<Usage>,
    started: bool,
}

impl Encoder {
    pub(crate) fn new(include_usage: bool, model: &str) -> Self {
        Self {
            include_usage,
            id: String::new(),
            model: model.to_owned(),
            created: now(),
            usage: None,
            started: false,
        }
    }

    fn chunk(&self, delta: Value, finish: Option<&str>, out: &mut Vec<u8>) {
        let mut chunk = json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{ "index": 0, "delta": delta, "finish_reason": finish, "logprobs": null }],
        });
        if self.include_usage {
            chunk["usage"] = Value::Null;
        }
        data(&chunk, out);
    }

    fn start(&mut self, out: &mut Vec<u8>) {
        if !self.started {
            self.started = true;
            if self.id.is_empty() {
                self.id = format!("chatcmpl-tally{}", self.created);
            }
            self.chunk(json!({ "role": "assistant", "content": "" }), None, out);
        }
    }

    pub(crate) fn delta(&mut self, d: Delta, out: &mut Vec<u8>) {
        match d {
            Delta::Start { id, model } => {
                if !id.is_empty() {
                    self.id = id;
                }
                if !model.is_empty() {
                    self.model = model;
                }
                self.start(out);
            }
            Delta::Text(t) => {
                self.start(out);
                self.chunk(json!({ "content": t }), None, out);
            }
            Delta::Reasoning(t) => {
                self.start(out);
                self.chunk(json!({ "reasoning_content": t }), None, out);
            }
            Delta::ToolStart { index, id, name } => {
                self.start(out);
                self.chunk(
                    json!({ "tool_calls": [{ "index": index, "id": id, "type": "function",
                        "function": { "name": name, "arguments": "" } }] }),
                    None,
                    out,
                );
            }
            Delta::ToolArguments { index, arguments } => {
                self.start(out);
                self.chunk(
                    json!({ "tool_calls": [{ "index": index, "function": { "arguments": arguments } }] }),
                    None,
                    out,
                );
            }
            Delta::Finish(f) => {
                self.start(out);
                self.chunk(json!({}), Some(f.openai()), out);
            }
            Delta::Usage(u) => self.usage = Some(u),
            Delta::Error(message) => {
                let e = crate::error(Dialect::OpenAi, 500, &message);
                data(&e, out);
            }
        }
    }

    pub(crate) fn finish(&mut self, out: &mut Vec<u8>) {
        if self.include_usage {
            let u = self.usage.unwrap_or_default();
            let chunk = json!({
                "id": self.id, "object": "chat.completion.chunk", "created": self.created,
                "model": self.model, "choices": [], "usage": usage_json(&u),
            });
            data(&chunk, out);
        }
        out.extend_from_slice(b"data: [DONE]\n\n");
    }
}

fn data(v: &Value, out: &mut Vec<u8>) {
    out.extend_from_slice(b"data: ");
    // Writing a Value into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, v);
    out.extend_from_slice(b"\n\n");
}
