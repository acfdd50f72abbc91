//! One request: every field, its bodies pretty-printed, and a stream reassembled into text.

use askama::Template;
use axum::extract::{Path, State};

use super::{render, Nav, PageResult};
use crate::error::ApiError;
use crate::AppState;

#[derive(Template)]
#[template(path = "request.html")]
struct RequestPage {
    nav: Nav,
    id: String,
    fields: Vec<(&'static str, String)>,
    request_body: String,
    request_truncated: bool,
    response_body: String,
    response_truncated: bool,
    reassembled: Option<String>,
    /// A translated request's bodies in the provider's dialect, when they were kept.
    upstream: Option<(String, String)>,
}

/// JSON bodies pretty-printed with their keys in the original order (transcoded, not parsed
/// into a map); anything else as stored.
fn pretty(body: Option<&str>) -> String {
    let Some(b) = body else {
        return "(not stored)".to_owned();
    };
    let mut de = serde_json::Deserializer::from_str(b);
    let mut out = Vec::with_capacity(b.len() * 2);
    let mut ser = serde_json::Serializer::pretty(&mut out);
    match serde_transcode::transcode(&mut de, &mut ser).and_then(|()| de.end()) {
        Ok(()) => String::from_utf8(out).unwrap_or_else(|_| b.to_owned()),
        Err(_) => b.to_owned(),
    }
}

/// The text a streamed response carried, from its SSE `data:` payloads: OpenAI chat and
/// legacy completions deltas, Responses API text deltas, and Anthropic text deltas.
pub fn reassemble(sse: &str) -> Option<String> {
    let mut out = String::new();
    let mut any = false;
    for line in sse.lines() {
        let Some(data) = line.strip_prefix("data:") else {
            continue;
        };
        let Ok(v) = serde_json::from_str::<serde_json::Value>(data.trim()) else {
            continue;
        };
        any = true;
        if let Some(choices) = v.get("choices").and_then(|c| c.as_array()) {
            for c in choices {
                let text = c
                    .pointer("/delta/content")
                    .or_else(|| c.get("text"))
                    .and_then(|t| t.as_str());
                out.push_str(text.unwrap_or(""));
            }
            continue;
        }
        match v.get("type").and_then(|t| t.as_str()) {
            Some("response.output_text.delta") => {
                out.push_str(v.get("delta").and_then(|d| d.as_str()).unwrap_or(""))
            }
            Some("content_block_delta") => out.push_str(
                v.pointer("/delta/text")
                    .or_else(|| v.pointer("/delta/partial_json"))
                    .and_then(|d| d.as_str())
                    .unwrap_or(""),
            ),
            _ => {}
        }
    }
    any.then_some(out)
}

/// `GET /requests/<id>`.
pub async fn request(State(state): State<AppState>, Path(id): Path<String>) -> PageResult {
    let uuid = uuid::Uuid::parse_str(&id)
        .map_err(|_| ApiError::BadRequest(format!("{id:?} is not a request id")))?
        .to_string();
    let r = state
        .reader
        .get(uuid.clone())
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no request {uuid}")))?;
    let json = crate::views::record_json(&r, false);
    let fields = [
        "ts",
        "provider",
        "endpoint",
        "method",
        "model",
        "response_model",
        "status",
        "refusal",
        "error",
        "stream",
        "latency_ms",
        "ttft_ms",
        "prompt_tokens",
        "completion_tokens",
        "cache_read_tokens",
        "cache_write_tokens",
        "cache_write_1h_tokens",
        "reasoning_tokens",
        "total_tokens",
        "tokens_estimated",
        "cost_usd",
        "service_tier",
        "web_search_calls",
        "user_id",
        "session_id",
        "session_path",
        "session_name",
        "properties",
        "cache_status",
        "cost_saved_usd",
        "router",
        "attempts",
        "parent_request_id",
        "request_bytes",
        "response_bytes",
        "key_name",
        "key_id",
        "api_key_hint",
        "provider_request_id",
    ]
    .into_iter()
    .map(|k| {
        let v = match json.get(k) {
            None | Some(serde_json::Value::Null) => "–".to_owned(),
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(v) => v.to_string(),
        };
        (k, v)
    })
    .collect();
    let reassembled = if r.stream {
        r.response_body.as_deref().and_then(reassemble)
    } else {
        None
    };
    Ok(render(&RequestPage {
        nav: Nav::new("requests", "/requests", None),
        id: uuid,
        fields,
        request_body: pretty(r.request_body.as_deref()),
        request_truncated: r.request_body_truncated,
        response_body: if r.stream {
            r.response_body
                .clone()
                .unwrap_or_else(|| "(not stored)".into())
        } else {
            pretty(r.response_body.as_deref())
        },
        response_truncated: r.response_body_truncated,
        reassembled,
        upstream: (r.upstream_request_body.is_some() || r.upstream_response_body.is_some()).then(
            || {
                (
                    pretty(r.upstream_request_body.as_deref()),
                    pretty(r.upstream_response_body.as_deref()),
                )
            },
        ),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pretty_keeps_key_order_and_leaves_non_json_alone() {
        assert_eq!(
            pretty(Some(r#"{"z":1,"a":[true]}"#)),
            "{\n  \"z\": 1,\n  \"a\": [\n    true\n  ]\n}"
        );
        assert_eq!(pretty(Some("{\"a\":1} trailing")), "{\"a\":1} trailing");
        assert_eq!(pretty(None), "(not stored)");
    }

    #[test]
    fn reassembles_streams_of_each_format() {
        let openai = "data: {\"choices\":[{\"delta\":{\"role\":\"assistant\"}}]}\n\ndata: {\"choices\":[{\"delta\":{\"content\":\"Hel\"}}]}\n\ndata: {\"choices\":[{\"delta\":{\"content\":\"lo\"}}]}\n\ndata: [DONE]\n\n";
        assert_eq!(reassemble(openai).as_deref(), Some("Hello"));
        let anthropic = "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"delta\":{\"type\":\"text_delta\",\"text\":\"Hi\"}}\n\n";
        assert_eq!(reassemble(anthropic).as_deref(), Some("Hi"));
        let responses = "data: {\"type\":\"response.output_text.delta\",\"delta\":\"ok\"}\n\n";
        assert_eq!(reassemble(responses).as_deref(), Some("ok"));
        assert_eq!(reassemble("not a stream"), None);
    }
}
