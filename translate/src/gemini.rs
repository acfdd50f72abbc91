//! Google's `generateContent` (Gemini API and Vertex AI): a target for hub requests, and an
//! upstream whose answers and stream chunks are read. The model and the stream flag travel in
//! the URL (`models/{model}:streamGenerateContent?alt=sse`), not the body.

use serde_json::{json, Map, Value};

use crate::openai::{check_members, max_tokens, stop_sequences, tool_names};
use crate::{push_turn, Answer, Block, Delta, Dialect, Finish, Unsupported, Usage};

const ME: Dialect = Dialect::Gemini;

/// A media type guessed from a URL's extension; Gemini's `fileData` needs one.
fn media_type_of(url: &str) -> &'static str {
    let path = url
        .split(['?', '#'])
        .next()
        .unwrap_or(url)
        .to_ascii_lowercase();
    match path.rsplit('.').next() {
        Some("png") => "image/png",
        Some("gif") => "image/gif",
        Some("webp") => "image/webp",
        Some("heic") => "image/heic",
        _ => "image/jpeg",
    }
}

fn parts(content: Option<&Value>) -> Result<Vec<Value>, Unsupported> {
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
                    Ok(match crate::data_url(url) {
                        Some((media, data)) => json!({ "inlineData": { "mimeType": media, "data": data } }),
                        None => json!({ "fileData": { "mimeType": media_type_of(url), "fileUri": url } }),
                    })
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

/// A hub (OpenAI) request as a `generateContent` body.
pub fn request_from_openai(body: &Value) -> Result<Value, Unsupported> {
    check_members(
        body,
        ME,
        &[
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
    if body.get("n").and_then(Value::as_u64).is_some_and(|n| n > 1) && body["stream"] == true {
        return Err(Unsupported::new(
            "n",
            ME,
            "Gemini streams one candidate; ask for n > 1 without stream",
        ));
    }
    let messages = body
        .get("messages")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let names = tool_names(&messages);
    let mut system = Vec::new();
    let mut contents = Vec::new();
    for m in &messages {
        match m.get("role").and_then(Value::as_str) {
            Some("system" | "developer") => {
                system.push(json!({ "text": crate::content_text(m.get("content")) }));
            }
            Some("user") => push_turn(&mut contents, "user", "parts", parts(m.get("content"))?),
            Some("assistant") => {
                let mut p = parts(m.get("content"))?;
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
                    p.push(json!({ "functionCall": {
                        "id": call.get("id").cloned().unwrap_or(json!("")),
                        "name": call.pointer("/function/name").cloned().unwrap_or(json!("")),
                        "args": serde_json::from_str::<Value>(args).unwrap_or_else(|_| json!({})),
                    }}));
                }
                push_turn(&mut contents, "model", "parts", p);
            }
            Some("tool") => {
                let id = m.get("tool_call_id").and_then(Value::as_str).unwrap_or("");
                let name = names.get(id).ok_or_else(|| {
                    Unsupported::new(
                        "tool_call_id",
                        ME,
                        format!("Gemini answers a tool call by its function's name, and no earlier assistant message has a call {id:?}"),
                    )
                })?;
                let text = crate::content_text(m.get("content"));
                let response = serde_json::from_str::<Value>(&text)
                    .ok()
                    .filter(Value::is_object)
                    .unwrap_or_else(|| json!({ "content": text }));
                push_turn(
                    &mut contents,
                    "user",
                    "parts",
                    vec![
                        json!({ "functionResponse": { "id": id, "name": name, "response": response } }),
                    ],
                );
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
    out.insert("contents".into(), Value::Array(contents));
    if !system.is_empty() {
        out.insert("systemInstruction".into(), json!({ "parts": system }));
    }
    let mut config = Map::new();
    for (from, to) in [
        ("temperature", "temperature"),
        ("top_p", "topP"),
        ("seed", "seed"),
        ("presence_penalty", "presencePenalty"),
        ("frequency_penalty", "frequencyPenalty"),
        ("n", "candidateCount"),
    ] {
        if let Some(v) = body.get(from).filter(|v| !v.is_null()) {
            config.insert(to.into(), v.clone());
        }
    }
    if let Some(n) = max_tokens(body) {
        config.insert("maxOutputTokens".into(), json!(n));
    }
    if let Some(stop) = stop_sequences(body) {
        config.insert("stopSequences".into(), Value::Array(stop));
    }
    match body.get("response_format") {
        None | Some(Value::Null) => {}
        Some(f) => match f.get("type").and_then(Value::as_str) {
            Some("text") => {}
            Some("json_object") => {
                config.insert("responseMimeType".into(), json!("application/json"));
            }
            Some("json_schema") => {
                config.insert("responseMimeType".into(), json!("application/json"));
                let schema = f
                    .pointer("/json_schema/schema")
                    .cloned()
                    .unwrap_or(json!({}));
                config.insert("responseJsonSchema".into(), schema);
            }
            _ => {
                return Err(Unsupported::new(
                    "response_format",
                    ME,
                    "response_format types are text, json_object and json_schema",
                ))
            }
        },
    }
    if let Some(effort) = body.get("reasoning_effort").and_then(Value::as_str) {
        let budget = crate::effort_budget(effort).ok_or_else(|| {
            Unsupported::new("reasoning_effort", ME, format!("unknown effort {effort:?}"))
        })?;
        config.insert(
            "thinkingConfig".into(),
            json!({ "thinkingBudget": budget, "includeThoughts": budget > 0 }),
        );
    }
    if !config.is_empty() {
        out.insert("generationConfig".into(), Value::Object(config));
    }
    if let Some(tools) = body.get("tools").and_then(Value::as_array) {
        let decls = tools
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
                let mut d = json!({ "name": f.get("name").cloned().unwrap_or(json!("")) });
                if let Some(desc) = f.get("description") {
                    d["description"] = desc.clone();
                }
                if let Some(p) = f.get("parameters") {
                    // Full JSON Schema; `parameters` takes only an OpenAPI subset.
                    d["parametersJsonSchema"] = p.clone();
                }
                Ok(d)
            })
            .collect::<Result<Vec<_>, _>>()?;
        out.insert("tools".into(), json!([{ "functionDeclarations": decls }]));
    }
    let mode = match body.get("tool_choice") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(match s.as_str() {
            "auto" => json!({ "mode": "AUTO" }),
            "required" => json!({ "mode": "ANY" }),
            "none" => json!({ "mode": "NONE" }),
            other => {
                return Err(Unsupported::new(
                    "tool_choice",
                    ME,
                    format!("unknown tool_choice {other:?}"),
                ))
            }
        }),
        Some(v) => match v.pointer("/function/name") {
            Some(name) => Some(json!({ "mode": "ANY", "allowedFunctionNames": [name] })),
            None => {
                return Err(Unsupported::new(
                    "tool_choice",
                    ME,
                    "an object tool_choice must name a function",
                ))
            }
        },
    };
    if let Some(m) = mode {
        out.insert("toolConfig".into(), json!({ "functionCallingConfig": m }));
    }
    Ok(Value::Object(out))
}

fn finish(reason: &str, called: bool) -> Finish {
    match reason {
        "MAX_TOKENS" => Finish::Length,
        "SAFETY" | "RECITATION" | "BLOCKLIST" | "PROHIBITED_CONTENT" | "SPII" | "IMAGE_SAFETY" => {
            Finish::ContentFilter
        }
        _ if called => Finish::ToolCalls,
        _ => Finish::Stop,
    }
}

fn usage(u: &Value) -> Usage {
    let n = |k: &str| u.get(k).and_then(Value::as_u64).unwrap_or(0);
    let thoughts = n("thoughtsTokenCount");
    Usage {
        input: n("promptTokenCount") + n("toolUsePromptTokenCount"),
        output: n("candidatesTokenCount") + thoughts,
        cache_read: n("cachedContentTokenCount"),
        cache_write: 0,
        reasoning: thoughts,
    }
}

/// A function call's id: Gemini's own when it gives one, else one made from its position.
fn call_id(call: &Value, n: usize) -> String {
    call.get("id")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map_or_else(|| format!("call_{n}"), str::to_owned)
}

/// Reads a `generateContent` answer (its first candidate).
pub fn parse_response(v: &Value, model: &str) -> Option<Answer> {
    let candidate = v.get("candidates")?.get(0)?;
    let mut content = Vec::new();
    let mut calls = 0;
    for p in candidate
        .pointer("/content/parts")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(call) = p.get("functionCall") {
            content.push(Block::Tool {
                id: call_id(call, calls),
                name: call
                    .get("name")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned(),
                arguments: call
                    .get("args")
                    .map_or_else(|| "{}".into(), Value::to_string),
            });
            calls += 1;
        } else if let Some(t) = p.get("text").and_then(Value::as_str) {
            if p.get("thought").and_then(Value::as_bool) == Some(true) {
                content.push(Block::Reasoning(t.to_owned()));
            } else {
                content.push(Block::Text(t.to_owned()));
            }
        }
    }
    Some(Answer {
        id: v
            .get("responseId")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned(),
        model: v
            .get("modelVersion")
            .and_then(Value::as_str)
            .unwrap_or(model)
            .to_owned(),
        content,
        finish: finish(
            candidate
                .get("finishReason")
                .and_then(Value::as_str)
                .unwrap_or("STOP"),
            calls > 0,
        ),
        usage: v.get("usageMetadata").map(usage).unwrap_or_default(),
    })
}

/// Reads a `streamGenerateContent?alt=sse` stream: every chunk is a whole response holding
/// the next parts; function calls arrive whole.
#[derive(Debug, Default)]
pub(crate) struct Decoder {
    started: bool,
    calls: usize,
}

impl Decoder {
    pub(crate) fn event(&mut self, data: &[u8], out: &mut Vec<Delta>) {
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
                id: v
                    .get("responseId")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned(),
                model: v
                    .get("modelVersion")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned(),
            });
        }
        let candidate = v.get("candidates").and_then(|c| c.get(0));
        for p in candidate
            .and_then(|c| c.pointer("/content/parts"))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(call) = p.get("functionCall") {
                let index = self.calls;
                self.calls += 1;
                out.push(Delta::ToolStart {
                    index,
                    id: call_id(call, index),
                    name: call
                        .get("name")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_owned(),
                });
                out.push(Delta::ToolArguments {
                    index,
                    arguments: call
                        .get("args")
                        .map_or_else(|| "{}".into(), Value::to_string),
                });
            } else if let Some(t) = p.get("text").and_then(Value::as_str) {
                if t.is_empty() {
                    continue;
                }
                if p.get("thought").and_then(Value::as_bool) == Some(true) {
                    out.push(Delta::Reasoning(t.to_owned()));
                } else {
                    out.push(Delta::Text(t.to_owned()));
                }
            }
        }
        if let Some(r) = candidate
            .and_then(|c| c.get("finishReason"))
            .and_then(Value::as_str)
        {
            out.push(Delta::Finish(finish(r, self.calls > 0)));
        }
        if let Some(u) = v.get("usageMetadata") {
            out.push(Delta::Usage(usage(u)));
        }
    }
}
