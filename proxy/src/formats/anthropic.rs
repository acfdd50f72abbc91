//! Anthropic's Messages API. Its `input_tokens` exclude cache reads and writes, so the prompt
//! total is the sum of the three. A stream reports usage twice: `message_start` carries the
//! input counts and a placeholder `output_tokens` (typically 1), `message_delta` the final
//! cumulative output. Only the second is final: a stream cut before it has no exact output.

use serde::Deserialize;
use serde_json::{json, Value};
use tally_ingest::Tokens;

use super::{json, ErrorField, Format, Observed, RequestFacts};
use crate::sse::Event;

pub(super) struct Anthropic;

#[derive(Debug, Default, Deserialize)]
struct Usage {
    #[serde(default, deserialize_with = "super::count")]
    input_tokens: Option<u64>,
    #[serde(default, deserialize_with = "super::count")]
    output_tokens: Option<u64>,
    #[serde(default, deserialize_with = "super::count")]
    cache_creation_input_tokens: Option<u64>,
    #[serde(default, deserialize_with = "super::count")]
    cache_read_input_tokens: Option<u64>,
    /// The cache writes split by how long they are kept, which sets their price.
    cache_creation: Option<CacheCreation>,
    server_tool_use: Option<ServerToolUse>,
    /// `standard`, `priority` or `batch`.
    service_tier: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct CacheCreation {
    #[serde(default, deserialize_with = "super::count")]
    ephemeral_1h_input_tokens: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
struct ServerToolUse {
    #[serde(default, deserialize_with = "super::count")]
    web_search_requests: Option<u64>,
}

#[derive(Debug, Deserialize)]
struct Message {
    id: Option<String>,
    model: Option<String>,
    usage: Option<Usage>,
}

#[derive(Debug, Deserialize)]
struct Body {
    id: Option<String>,
    model: Option<String>,
    usage: Option<Usage>,
    error: Option<ErrorField>,
    /// `message_start` wraps the message.
    message: Option<Message>,
}

/// Merges a usage report into what we have. `message_delta` repeats only the fields it updates
/// (output tokens are cumulative), so absent fields keep their earlier value.
fn merge(observed: &mut Observed, u: Usage) {
    if let Some(n) = u.server_tool_use.and_then(|s| s.web_search_requests) {
        observed.web_search_calls = n;
    }
    if u.service_tier.is_some() {
        observed.service_tier = u.service_tier;
    }
    let t = observed.tokens.get_or_insert_with(Tokens::default);
    if let Some(n) = u.cache_creation.and_then(|c| c.ephemeral_1h_input_tokens) {
        t.cache_write_1h = n;
    }
    let uncached = u.input_tokens;
    if let Some(v) = u.cache_read_input_tokens {
        t.cache_read = v;
    }
    if let Some(v) = u.cache_creation_input_tokens {
        t.cache_write = v;
    }
    if let Some(v) = uncached {
        t.prompt = v.saturating_add(t.cache_read).saturating_add(t.cache_write);
    } else if u.cache_read_input_tokens.is_some() || u.cache_creation_input_tokens.is_some() {
        // Should not happen, but keep the invariant prompt >= cache_read + cache_write.
        t.prompt = t.prompt.max(t.cache_read.saturating_add(t.cache_write));
    }
    if let Some(v) = u.output_tokens {
        t.completion = v;
    }
}

/// Applies one body or event; `usage_final` says whether its usage is the final count.
fn apply(observed: &mut Observed, body: Body, usage_final: bool) {
    if let Some(m) = body.message {
        observed.response_model = observed.response_model.take().or(m.model);
        observed.body_id = observed.body_id.take().or(m.id);
        if let Some(u) = m.usage {
            merge(observed, u);
        }
    }
    if observed.response_model.is_none() {
        observed.response_model = body.model;
    }
    if observed.body_id.is_none() {
        observed.body_id = body.id;
    }
    if let Some(u) = body.usage {
        merge(observed, u);
        observed.usage_final |= usage_final;
    }
    if let Some(e) = body.error.and_then(ErrorField::message) {
        observed.error = Some(e);
    }
}

fn parse(data: &[u8]) -> Option<Body> {
    serde_json::from_slice(data).ok()
}

impl Format for Anthropic {
    fn key_headers(&self) -> &'static [&'static str] {
        &["x-api-key", "authorization"]
    }

    fn request(&self, _path: &str, body: &[u8]) -> RequestFacts {
        let f = json::fields(body, &["model", "stream", "metadata"]);
        RequestFacts {
            model: f.str("model").map(str::to_owned),
            stream: f.get("stream").and_then(Value::as_bool) == Some(true),
            user: f
                .get("metadata")
                .and_then(|m| m.get("user_id"))
                .and_then(Value::as_str)
                .map(str::to_owned),
            stream_options: false,
            json: f.object,
            deployment: None,
            units: None,
        }
    }

    fn read_json(&self, body: &[u8]) -> Observed {
        let mut observed = Observed::default();
        if let Some(body) = parse(body) {
            apply(&mut observed, body, true);
        }
        observed
    }

    fn on_event(&self, observed: &mut Observed, event: Event<'_>) {
        // Content deltas are the bulk of a stream and carry nothing we need.
        let usage_final = match event.event {
            "message_start" => false,
            "message_delta" => true,
            "message_stop" => {
                observed.ended = true;
                return;
            }
            "error" => {
                observed.ended = true;
                false
            }
            _ => return,
        };
        if let Some(body) = parse(event.data) {
            apply(observed, body, usage_final);
        }
    }

    fn error_body(&self, code: &str, message: &str, details: Option<Value>) -> Value {
        let error = json!({ "type": code, "message": message });
        json!({ "type": "error", "error": super::with_details(error, details) })
    }

    fn response_text(&self, v: &Value, out: &mut String) {
        if let Some(content) = v.get("content") {
            super::collect_strings(content, out);
        }
    }

    fn held_key_header(&self) -> (&'static str, bool) {
        ("x-api-key", false)
    }

    fn delta_text(&self, _event: &str, v: &Value, out: &mut String) {
        for p in ["/delta/text", "/delta/thinking", "/delta/partial_json"] {
            if let Some(s) = v.pointer(p).and_then(Value::as_str) {
                out.push_str(s);
            }
        }
    }
}
