//! One API across providers: a request in OpenAI's Chat Completions or Anthropic's Messages
//! shape, served by a provider that speaks another, and its answer translated back, whole or
//! event by event.
//!
//! Everything goes through one hub, so N dialects need N translators rather than N²:
//! - **requests** meet at OpenAI's Chat Completions body, the shape most clients send. An
//!   Anthropic request becomes one ([`anthropic::request_to_openai`]), and the hub body becomes
//!   each target's ([`anthropic::request_from_openai`], [`gemini::request_from_openai`],
//!   [`converse::request_from_openai`]);
//! - **answers** meet at [`Answer`] (a whole response) and [`Delta`] (one step of a stream):
//!   each upstream dialect parses into them, and the two client dialects render from them.
//!
//! Nothing is dropped silently: a member the target has no counterpart for is an
//! [`Unsupported`] naming it, which the proxy answers as a 400. This crate is pure (no I/O,
//! no framing): the proxy parses SSE and AWS event-stream frames and hands over each event's
//! type and payload.
#![deny(missing_docs)]

pub mod anthropic;
pub mod converse;
pub mod gemini;
pub mod openai;
mod stream;

pub use stream::StreamTranslator;

use serde_json::{json, Value};

/// An API shape Tally translates between.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// OpenAI Chat Completions (and every OpenAI-compatible API).
    OpenAi,
    /// Anthropic Messages.
    Anthropic,
    /// Google's `generateContent` (Gemini API and Vertex AI).
    Gemini,
    /// AWS Bedrock's Converse.
    Converse,
}

impl Dialect {
    /// Its name, as error messages and the record's `translated` property spell it.
    pub fn name(self) -> &'static str {
        match self {
            Dialect::OpenAi => "openai",
            Dialect::Anthropic => "anthropic",
            Dialect::Gemini => "gemini",
            Dialect::Converse => "bedrock-converse",
        }
    }
}

/// A request member the target cannot honour. Rendered as a 400 naming `feature`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{feature} is not supported when translating to {target}: {why}")]
pub struct Unsupported {
    /// The request member, as the client spelled it (`response_format`, `n`, …).
    pub feature: String,
    /// The target dialect's name.
    pub target: &'static str,
    /// Why, and what to send instead.
    pub why: String,
}

impl Unsupported {
    pub(crate) fn new(feature: impl Into<String>, target: Dialect, why: impl Into<String>) -> Self {
        Self {
            feature: feature.into(),
            target: target.name(),
            why: why.into(),
        }
    }
}

/// Translates a request body from the client's dialect to the target's, for `model` (the
/// target's name for it). `client` must be [`Dialect::OpenAi`] or [`Dialect::Anthropic`].
pub fn request(
    client: Dialect,
    target: Dialect,
    body: &Value,
    model: &str,
) -> Result<Value, Unsupported> {
    if !body.is_object() {
        return Err(Unsupported::new(
            "body",
            target,
            "the request body must be a JSON object",
        ));
    }
    if client == target {
        let mut same = body.clone();
        same["model"] = json!(model);
        return Ok(same);
    }
    let hub = match client {
        // The refusal names the target the client asked for, not the hub it passes through.
        Dialect::Anthropic => {
            anthropic::request_to_openai(body, model).map_err(|e| match target {
                Dialect::OpenAi => e,
                _ => Unsupported {
                    target: target.name(),
                    why: format!(
                        "{} (Tally reads Anthropic requests through OpenAI's shape)",
                        e.why
                    ),
                    ..e
                },
            })?
        }
        _ => body.clone(),
    };
    match target {
        Dialect::OpenAi => {
            let mut hub = hub;
            hub["model"] = json!(model);
            Ok(hub)
        }
        Dialect::Anthropic => anthropic::request_from_openai(&hub, model),
        Dialect::Gemini => gemini::request_from_openai(&hub),
        Dialect::Converse => converse::request_from_openai(&hub, model),
    }
}

/// Why a generation stopped, in the hub's terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// A natural end or a stop sequence.
    Stop,
    /// The token limit.
    Length,
    /// The model called tools.
    ToolCalls,
    /// A safety filter stopped it.
    ContentFilter,
}

impl Finish {
    /// OpenAI's `finish_reason`.
    pub fn openai(self) -> &'static str {
        match self {
            Finish::Stop => "stop",
            Finish::Length => "length",
            Finish::ToolCalls => "tool_calls",
            Finish::ContentFilter => "content_filter",
        }
    }

    /// Anthropic's `stop_reason`.
    pub fn anthropic(self) -> &'static str {
        match self {
            Finish::Stop => "end_turn",
            Finish::Length => "max_tokens",
            Finish::ToolCalls => "tool_use",
            Finish::ContentFilter => "refusal",
        }
    }
}

/// Token counts, in the hub's terms: `input` includes cached and cache-written tokens,
/// `output` includes reasoning.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Every input token, cached or not.
    pub input: u64,
    /// Every generated token, reasoning included.
    pub output: u64,
    /// Input tokens read from a cache.
    pub cache_read: u64,
    /// Input tokens written to a cache.
    pub cache_write: u64,
    /// Generated tokens spent reasoning.
    pub reasoning: u64,
}

/// One content block of an answer.
#[derive(Debug, Clone, PartialEq)]
pub enum Block {
    /// Text.
    Text(String),
    /// Reasoning the provider shows.
    Reasoning(String),
    /// A tool call; `arguments` is a JSON text.
    Tool {
        /// The call's id, which the tool's result will name.
        id: String,
        /// The tool.
        name: String,
        /// Its arguments, as JSON text.
        arguments: String,
    },
}

/// A whole answer, in the hub's terms.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    /// The provider's id for it.
    pub id: String,
    /// The model that answered.
    pub model: String,
    /// What it said and called, in order.
    pub content: Vec<Block>,
    /// Why it stopped.
    pub finish: Finish,
    /// What it cost, as the provider counted.
    pub usage: Usage,
}

/// One step of a streamed answer, in the hub's terms.
#[derive(Debug, Clone, PartialEq)]
pub enum Delta {
    /// The stream began.
    Start {
        /// The provider's id for the answer.
        id: String,
        /// The model that answers.
        model: String,
    },
    /// More text.
    Text(String),
    /// More reasoning.
    Reasoning(String),
    /// A tool call begins; `index` counts tool calls from 0.
    ToolStart {
        /// Which tool call.
        index: usize,
        /// Its id.
        id: String,
        /// The tool.
        name: String,
    },
    /// More of a tool call's arguments (JSON text, in pieces).
    ToolArguments {
        /// Which tool call.
        index: usize,
        /// The next piece.
        arguments: String,
    },
    /// Why it stopped.
    Finish(Finish),
    /// Usage so far (the last one counts).
    Usage(Usage),
    /// The provider reported an error inside the stream.
    Error(String),
}

impl Delta {
    /// An error the provider put inside a stream, from its `error` member.
    pub(crate) fn from_error(e: &Value) -> Delta {
        Delta::Error(
            e.get("message")
                .and_then(Value::as_str)
                .unwrap_or("the provider reported an error")
                .to_owned(),
        )
    }
}

/// Translates a whole response body from the upstream's dialect to the client's. A body that
/// does not parse as the upstream's answer becomes an error in the client's shape.
pub fn response(upstream: Dialect, client: Dialect, body: &[u8], model: &str) -> Value {
    let parsed = serde_json::from_slice::<Value>(body).ok();
    let answer = parsed.as_ref().and_then(|v| match upstream {
        Dialect::OpenAi => openai::parse_response(v),
        Dialect::Anthropic => anthropic::parse_response(v),
        Dialect::Gemini => gemini::parse_response(v, model),
        Dialect::Converse => converse::parse_response(v, model),
    });
    match answer {
        Some(a) => match client {
            Dialect::Anthropic => anthropic::render_response(&a),
            _ => openai::render_response(&a),
        },
        None => error(
            client,
            502,
            &format!(
                "Tally could not read the {} answer to translate it",
                upstream.name()
            ),
        ),
    }
}

/// The message of an upstream error body, in whichever of the providers' shapes it comes:
/// `{"error":{"message"}}` (OpenAI, Anthropic, Gemini), `{"message"}` (Bedrock), or text.
pub fn error_message(body: &[u8]) -> String {
    let v: Option<Value> = serde_json::from_slice(body).ok();
    let found = v.as_ref().and_then(|v| {
        v.pointer("/error/message")
            .or_else(|| v.get("message"))
            .or_else(|| v.get("Message"))
            .or_else(|| v.get("error").filter(|e| e.is_string()))
            .and_then(Value::as_str)
            .map(str::to_owned)
    });
    found.unwrap_or_else(|| {
        let text = String::from_utf8_lossy(body);
        let text = text.trim();
        let cut: String = text.chars().take(500).collect();
        if cut.is_empty() {
            "the provider answered with an error and no message".to_owned()
        } else {
            cut
        }
    })
}

/// An error in the client's shape, so its SDK raises its usual exception for `status`.
pub fn error(client: Dialect, status: u16, message: &str) -> Value {
    match client {
        Dialect::Anthropic => json!({
            "type": "error",
            "error": { "type": anthropic::error_type(status), "message": message },
        }),
        _ => json!({
            "error": {
                "message": message,
                "type": openai::error_type(status),
                "param": null,
                "code": null,
            }
        }),
    }
}

/// Appends a turn of `content` under `key` (`content` or Gemini's `parts`), merging it into the
/// previous turn when the role repeats: Anthropic, Gemini and Converse want turns to alternate,
/// and consecutive OpenAI tool results are one user turn there.
pub(crate) fn push_turn(turns: &mut Vec<Value>, role: &str, key: &str, mut content: Vec<Value>) {
    if content.is_empty() {
        return;
    }
    if let Some(last) = turns.last_mut() {
        if last["role"] == role {
            if let Some(a) = last[key].as_array_mut() {
                a.append(&mut content);
                return;
            }
        }
    }
    turns.push(json!({ "role": role, key: content }));
}

/// Whether a member is absent or holds the value that means "not set".
pub(crate) fn unset(v: Option<&Value>, default: &Value) -> bool {
    match v {
        None | Some(Value::Null) => true,
        Some(v) => v == default,
    }
}

/// `data:` URL parts: (media type, base64 data).
pub(crate) fn data_url(url: &str) -> Option<(&str, &str)> {
    let rest = url.strip_prefix("data:")?;
    let (meta, data) = rest.split_once(',')?;
    let media = meta.strip_suffix(";base64")?;
    Some((media, data))
}

/// The text of an OpenAI message's `content`: a string, or the text parts of an array.
pub(crate) fn content_text(content: Option<&Value>) -> String {
    match content {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join(""),
        _ => String::new(),
    }
}

/// Reasoning effort as a thinking budget, for targets that take a budget.
pub(crate) fn effort_budget(effort: &str) -> Option<u64> {
    match effort {
        "none" | "minimal" => Some(0),
        "low" => Some(1024),
        "medium" => Some(8192),
        "high" => Some(24576),
        _ => None,
    }
}

/// A thinking budget as reasoning effort, for targets that take an effort.
pub(crate) fn budget_effort(budget: u64) -> &'static str {
    match budget {
        0..=2048 => "low",
        2049..=12288 => "medium",
        _ => "high",
    }
}

#[cfg(test)]
mod tests;
