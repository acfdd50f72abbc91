//! AWS Bedrock's Converse: a target for hub requests, and an upstream whose answers and
//! `ConverseStream` events are read. The model and the stream flag travel in the URL
//! (`/model/{id}/converse-stream`), not the body.

use serde_json::{json, Map, Value};

use crate::openai::{check_members, max_tokens, stop_sequences};
use crate::{push_turn, Answer, Block, Delta, Dialect, Finish, Unsupported, Usage};

const ME: Dialect = Dialect::Converse;

/// Converse's image `format` for a media type.
fn image_format(media: &str) -> Option<&'static str> {
    match media {
        "image/png" => Some("png"),
        "image/jpeg" | "image/jpg" => Some("jpeg"),
        "image/gif" => Some("gif"),
        "image/webp" => Some("webp"),
        _ => None,
    }
}

fn blocks(content: Option<&Value>) -> Result<Vec<Value>, Unsupported> {
    match content {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) if s.is_empty() => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(vec![json!({ "text": s })]),
        Some(Value::Array(items)) => items
            .iter()
            .map(|p| match p.get("type").and_then(Value::as_str) {
                Some("text") => Ok(json!({ "text": p.get("text").cloned().unwrap_or(json!("")) })),
                Some("image_url") => {
                    let url = p.pointer("/image_url/url").and_then(Value::as_str).unwrap_or("");
                    let (media, data) = crate::data_url(url).ok_or_else(|| {
                        Unsupported::new(
                            "image_url",
                            ME,
                            "Bedrock takes image bytes, not URLs; send the image as a data: URL (Tally does not fetch URLs for you)",
                        )
                    })?;
                    let format = image_format(media).ok_or_else(|| {
                        Unsupported::new("image_url", ME, format!("Bedrock takes png, jpeg, gif and webp images, not {media}"))
                    })?;
                    Ok(json!({ "image": { "format": format, "source": { "bytes": data } } }))
                }
                other => Err(Unsupported::new(
                    format!("content part {:?}", other.unwrap_or("?")),
                    ME,
                    "only text and image_url parts translate",
                )),
            })
            .collect(),
        Some(_) => Err(Unsupported::new("content", ME, "content must be a string or an array of parts")),
    }
}

/// A hub (OpenAI) request as a Converse body, for `model` (a Bedrock model id).
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
            ("parallel_tool_calls", json!(true)),
        ],
    )?;
    if !crate::unset(body.get("response_format"), &json!({"type": "text"})) {
        return Err(Unsupported::new(
            "response_format",
            ME,
            "Converse has no JSON mode Tally can translate to; use a tool with the schema",
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
                system.push(json!({ "text": crate::content_text(m.get("content")) }));
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
                    content.push(json!({ "toolUse": {
                        "toolUseId": call.get("id").cloned().unwrap_or(json!("")),
                        "name": call.pointer("/function/name").cloned().unwrap_or(json!("")),
                        "input": serde_json::from_str::<Value>(args).unwrap_or_else(|_| json!({})),
                    }}));
                }
                push_turn(&mut messages, "assistant", "content", content);
            }
            Some("tool") => {
                let result = json!({ "toolResult": {
                    "toolUseId": m.get("tool_call_id").cloned().unwrap_or(json!("")),
                    "content": [{ "text": crate::content_text(m.get("content")) }],
                }});
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
    out.insert("messages".into(), Value::Array(messages));
    if !system.is_empty() {
        out.insert("system".into(), Value::Array(system));
    }
    let mut config = Map::new();
    if let Some(n) = max_tokens(body) {
        config.insert("maxTokens".into(), json!(n));
    }
    for (from, to) in [("temperature", "temperature"), ("top_p", "topP")] {
        if let Some(v) = body.get(from).filter(|v| !v.is_null()) {
            config.insert(to.into(), v.clone());
        }
    }
    if let Some(stop) = stop_sequences(body) {
        config.insert("stopSequences".into(), Value::Array(stop));
    }
    if let Some(effort) = body.get("reasoning_effort").and_then(Value::as_str) {
        let budget = crate::effort_budget(effort).ok_or_else(|| {
            Unsupported::new("reasoning_effort", ME, format!("unknown effort {effort:?}"))
        })?;
        let claude = model.contains("anthropic.claude");
        if !claude {
            return Err(Unsupported::new(
                "reasoning_effort",
                ME,
                "Tally translates reasoning effort for Claude models on Bedrock only (additionalModelRequestFields.thinking)",
            ));
        }
        if budget > 0 {
            let budget = budget.max(1024);
            let limit = config
                .get("maxTokens")
                .and_then(Value::as_u64)
                .unwrap_or(4096);
            config.insert("maxTokens".into(), json!(limit + budget));
            out.insert(
                "additionalModelRequestFields".into(),
                json!({ "thinking": { "type": "enabled", "budget_tokens": budget } }),
            );
        }
    }
    if !config.is_empty() {
        out.insert("inferenceConfig".into(), Value::Object(config));
    }
    if let Some(tools) = body.get("tools").and_then(Value::as_array) {
        let specs = tools
            .iter()
            .map(|t| {
                if t.get("type").and_then(Value::as_str) != Some("function") {
                    return Err(Unsupported::new("tools", ME, "only function tools translate"));
                }
                let f = t.get("function").cloned().unwrap_or(json!({}));
                let mut spec = json!({
                    "name": f.get("name").cloned().unwrap_or(json!("")),
                    "inputSchema": { "json": f.get("parameters").cloned().unwrap_or(json!({"type": "object"})) },
                });
                if let Some(d) = f.get("description") {
                    spec["description"] = d.clone();
                }
                Ok(json!({ "toolSpec": spec }))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut tool_config = json!({ "tools": specs });
        match body.get("tool_choice") {
            None | Some(Value::Null) => {}
            Some(Value::String(s)) => match s.as_str() {
                "auto" => tool_config["toolChoice"] = json!({ "auto": {} }),
                "required" => tool_config["toolChoice"] = json!({ "any": {} }),
                _ => {
                    return Err(Unsupported::new(
                        "tool_choice",
                        ME,
                        format!("Converse has no tool_choice {s:?}; it takes auto, required or a named function"),
                    ))
                }
            },
            Some(v) => match v.pointer("/function/name") {
                Some(name) => tool_config["toolChoice"] = json!({ "tool": { "name": name } }),
                None => {
                    return Err(Unsupported::new(
                        "tool_choice",
                        ME,
                        "an object tool_choice must name a function",
                    ))
                }
            },
        }
        out.insert("toolConfig".into(), tool_config);
    } else if !crate::unset(body.get("tool_choice"), &json!("none")) {
        return Err(Unsupported::new(
            "tool_choice",
            ME,
            "tool_choice without tools",
        ));
    }
    Ok(Value::Object(out))
}

fn finish(reason: &str) -> Finish {
    match reason {
        "max_tokens" | "model_context_window_exceeded" => Finish::Length,
        "tool_use" => Finish::ToolCalls,
        "guardrail_intervened" | "content_filtered" => Finish::ContentFilter,
        _ => Finish::Stop,
    }
}

fn usage(u: &Value) -> Usage {
    let n = |k: &str| u.get(k).and_then(Value::as_u64).unwrap_or(0);
    let (read, write) = (n("cacheReadInputTokens"), n("cacheWriteInputTokens"));
    Usage {
        input: n("inputTokens") + read + write,
        output: n("outputTokens"),
        cache_read: read,
        cache_write: write,
        reasoning: 0,
    }
}

/// Reads a Converse answer.
pub fn parse_response(v: &Value, model: &str) -> Option<Answer> {
    let mut content = Vec::new();
    for b in v.pointer("/output/message/content")?.as_array()? {
        if let Some(t) = b.get("text").and_then(Value::as_str) {
            content.push(Block::Text(t.to_owned()));
        } else if let Some(u) = b.get("toolUse") {
            content.push(Block::Tool {
                id: u
                    .get("toolUseId")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned(),
                name: u
                    .get("name")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned(),
                arguments: u.get("input").map_or_else(|| "{}".into(), Value::to_string),
            });
        } else if let Some(t) = b
            .pointer("/reasoningContent/reasoningText/text")
            .and_then(Value::as_str)
        {
            content.push(Block::Reasoning(t.to_owned()));
        }
    }
    Some(Answer {
        id: String::new(),
        model: model.to_owned(),
        content,
        finish: finish(
            v.get("stopReason")
                .and_then(Value::as_str)
                .unwrap_or("end_turn"),
        ),
        usage: v.get("usage").map(usage).unwrap_or_default(),
    })
}

/// Reads `ConverseStream` events (one per event-stream frame, named by `:event-type`).
#[derive(Debug, Default)]
pub(crate) struct Decoder {
    /// Content block index → tool call number.
    tools: Vec<(u64, usize)>,
}

impl Decoder {
    pub(crate) fn event(&mut self, kind: &str, data: &[u8], model: &str, out: &mut Vec<Delta>) {
        let Ok(v) = serde_json::from_slice::<Value>(data) else {
            return;
        };
        let index = v
            .get("contentBlockIndex")
            .and_then(Value::as_u64)
            .unwrap_or(0);
        match kind {
            "messageStart" => out.push(Delta::Start {
                id: String::new(),
                model: model.to_owned(),
            }),
            "contentBlockStart" => {
                if let Some(u) = v.pointer("/start/toolUse") {
                    let n = self.tools.len();
                    self.tools.push((index, n));
                    out.push(Delta::ToolStart {
                        index: n,
                        id: u
                            .get("toolUseId")
                            .and_then(Value::as_str)
                            .unwrap_or("")
                            .to_owned(),
                        name: u
                            .get("name")
                            .and_then(Value::as_str)
                            .unwrap_or("")
                            .to_owned(),
                    });
                }
            }
            "contentBlockDelta" => {
                let d = v.get("delta").cloned().unwrap_or_default();
                if let Some(t) = d.get("text").and_then(Value::as_str) {
                    out.push(Delta::Text(t.to_owned()));
                } else if let Some(args) = d.pointer("/toolUse/input").and_then(Value::as_str) {
                    if let Some(&(_, n)) = self.tools.iter().find(|(i, _)| *i == index) {
                        out.push(Delta::ToolArguments {
                            index: n,
                            arguments: args.to_owned(),
                        });
                    }
                } else if let Some(t) = d.pointer("/reasoningContent/text").and_then(Value::as_str)
                {
                    out.push(Delta::Reasoning(t.to_owned()));
                }
            }
            "messageStop" => {
                if let Some(r) = v.get("stopReason").and_then(Value::as_str) {
                    out.push(Delta::Finish(finish(r)));
                }
            }
            "metadata" => {
                if let Some(u) = v.get("usage") {
                    out.push(Delta::Usage(usage(u)));
                }
            }
            // An exception frame: its `:exception-type` is the kind.
            k if k.ends_with("Exception") || k.ends_with("exception") => {
                out.push(Delta::Error(format!(
                    "{k}: {}",
                    v.get("message").and_then(Value::as_str).unwrap_or("")
                )))
            }
            _ => {}
        }
    }
}
