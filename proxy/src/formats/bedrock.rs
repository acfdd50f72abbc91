//! AWS Bedrock's runtime API, as boto3 and the AWS SDKs speak it: `POST /model/{modelId}/
//! converse`, `/converse-stream`, `/invoke` and `/invoke-with-response-stream`. The model is the
//! path's (percent-encoded: `anthropic.claude-3-haiku-20240307-v1%3A0`), so is the choice of a
//! stream. Streams are AWS's binary event stream ([`crate::eventstream`]), each frame one event.
//!
//! Usage, by operation:
//! - `Converse`: `usage` (`inputTokens`, `outputTokens`, `cacheReadInputTokens`,
//!   `cacheWriteInputTokens`); `inputTokens` excludes the cached ones, as Anthropic's does.
//! - `ConverseStream`: the same `usage` in the last event, `metadata`, which ends the answer.
//! - `InvokeModel`: the model's own body (Claude's Messages `usage`, Llama's
//!   `prompt_token_count`, Titan's `inputTextTokenCount`, Nova's `usage`), and for every model
//!   the `x-amzn-bedrock-*-token-count` response headers, which are read first.
//! - `InvokeModelWithResponseStream`: `chunk` events whose `bytes` are the model's own stream
//!   events, base64-encoded; the last carries `amazon-bedrock-invocationMetrics` with the
//!   counts, for every model. Claude's `message_start`/`message_delta` are read as Anthropic's.
//!
//! Keys: a SigV4 signature made for Tally's host is no use upstream, so Tally re-signs every
//! request with credentials it holds (`crate::credentials::aws`); a Bedrock API key
//! (`Authorization: Bearer`) passes through like any other provider's key.

use base64::Engine;
use http::HeaderMap;
use serde::Deserialize;
use serde_json::{json, Value};
use tally_ingest::Tokens;

use super::anthropic::Anthropic;
use super::{json, Format, Needle, Observed, RequestFacts};
use crate::sse::Event;

pub(super) struct Bedrock;

/// Usage in any of the spellings Bedrock answers with: Converse's camelCase and Claude's
/// snake_case count the same classes (input excluding the cache).
#[derive(Debug, Default, Deserialize)]
struct Usage {
    #[serde(default, alias = "inputTokens", alias = "inputTokenCount")]
    #[serde(deserialize_with = "super::count")]
    input_tokens: Option<u64>,
    #[serde(default, alias = "outputTokens", alias = "outputTokenCount")]
    #[serde(deserialize_with = "super::count")]
    output_tokens: Option<u64>,
    #[serde(
        default,
        alias = "cacheReadInputTokens",
        alias = "cacheReadInputTokenCount"
    )]
    #[serde(deserialize_with = "super::count")]
    cache_read_input_tokens: Option<u64>,
    #[serde(
        default,
        alias = "cacheWriteInputTokens",
        alias = "cacheWriteInputTokenCount"
    )]
    #[serde(alias = "cache_creation_input_tokens")]
    #[serde(deserialize_with = "super::count")]
    cache_write_input_tokens: Option<u64>,
}

impl Usage {
    fn tokens(&self) -> Option<Tokens> {
        if self.input_tokens.is_none() && self.output_tokens.is_none() {
            return None;
        }
        let n = |v: Option<u64>| v.unwrap_or(0);
        let (read, write) = (
            n(self.cache_read_input_tokens),
            n(self.cache_write_input_tokens),
        );
        Some(Tokens {
            prompt: n(self.input_tokens)
                .saturating_add(read)
                .saturating_add(write),
            completion: n(self.output_tokens),
            cache_read: read,
            cache_write: write,
            cache_write_1h: 0,
            reasoning: 0,
        })
    }
}

/// A non-streamed answer: Converse's, or one of the model-native `InvokeModel` bodies.
#[derive(Debug, Deserialize)]
struct Body {
    usage: Option<Usage>,
    model: Option<String>,
    id: Option<String>,
    /// An error's text (`message`, or `Message` from some services); not the shape of every
    /// model's body, so read loosely.
    #[serde(alias = "Message")]
    message: Option<Value>,
    /// Llama.
    #[serde(default, deserialize_with = "super::count")]
    prompt_token_count: Option<u64>,
    #[serde(default, deserialize_with = "super::count")]
    generation_token_count: Option<u64>,
    /// Titan text.
    #[serde(default, rename = "inputTextTokenCount")]
    #[serde(deserialize_with = "super::count")]
    input_text_token_count: Option<u64>,
    #[serde(default)]
    results: Vec<TitanResult>,
    #[serde(rename = "amazon-bedrock-invocationMetrics")]
    metrics: Option<Usage>,
}

#[derive(Debug, Deserialize)]
struct TitanResult {
    #[serde(default, rename = "tokenCount", deserialize_with = "super::count")]
    token_count: Option<u64>,
}

impl Body {
    fn tokens(&self) -> Option<Tokens> {
        if let Some(t) = self.metrics.as_ref().and_then(Usage::tokens) {
            return Some(t);
        }
        if let Some(t) = self.usage.as_ref().and_then(Usage::tokens) {
            return Some(t);
        }
        let llama = (self.prompt_token_count, self.generation_token_count);
        if let (Some(p), Some(c)) = llama {
            return Some(Tokens {
                prompt: p,
                completion: c,
                ..Tokens::default()
            });
        }
        let titan: Option<u64> = self.results.iter().map(|r| r.token_count).sum();
        if let (Some(p), Some(c)) = (self.input_text_token_count, titan) {
            return Some(Tokens {
                prompt: p,
                completion: c,
                ..Tokens::default()
            });
        }
        None
    }
}

/// `InvokeModelWithResponseStream`'s event payload.
#[derive(Debug, Deserialize)]
struct Chunk<'a> {
    #[serde(borrow)]
    bytes: Option<std::borrow::Cow<'a, str>>,
}

/// `{"message": "..."}`, the body of every Bedrock error and exception event.
#[derive(Debug, Deserialize)]
struct ErrorBody {
    #[serde(alias = "Message")]
    message: Option<String>,
}

static METRICS: Needle =
    Needle::new(|| memchr::memmem::Finder::new(b"amazon-bedrock-invocationMetrics"));

impl Bedrock {
    /// One decoded `chunk` of `InvokeModelWithResponseStream`: the model's own event.
    fn on_model_event(&self, observed: &mut Observed, data: &[u8]) {
        if METRICS.find(data).is_some() {
            if let Ok(b) = serde_json::from_slice::<Body>(data) {
                if let Some(t) = b.tokens() {
                    observed.final_tokens(t);
                }
            }
            observed.ended = true;
            return;
        }
        // Claude's stream, inside the chunk: its events name their type in the body.
        for kind in ["message_start", "message_delta", "error"] {
            if memchr::memmem::find(data, kind.as_bytes()).is_some() {
                let event = Event { event: kind, data };
                Anthropic.on_event(observed, event);
                // Claude's own end is `message_stop`; Bedrock's metrics chunk follows it.
                observed.ended = false;
                return;
            }
        }
    }
}

impl Format for Bedrock {
    fn key_headers(&self) -> &'static [&'static str] {
        &["authorization"]
    }

    fn request(&self, path: &str, body: &[u8]) -> RequestFacts {
        let (model, operation) = model_and_operation(path);
        let f = json::fields(body, &[]);
        RequestFacts {
            model,
            stream: matches!(
                operation,
                Some("converse-stream" | "invoke-with-response-stream")
            ),
            user: None,
            stream_options: false,
            json: f.object,
            deployment: None,
            units: None,
        }
    }

    fn read_json(&self, body: &[u8]) -> Observed {
        let mut observed = Observed::default();
        let Ok(b) = serde_json::from_slice::<Body>(body) else {
            return observed;
        };
        if let Some(t) = b.tokens() {
            observed.final_tokens(t);
        }
        observed.response_model = b.model;
        observed.body_id = b.id;
        observed.error = b
            .message
            .as_ref()
            .and_then(Value::as_str)
            .map(str::to_owned);
        observed
    }

    fn on_event(&self, observed: &mut Observed, event: Event<'_>) {
        match event.event {
            "metadata" => {
                #[derive(Deserialize)]
                struct Metadata {
                    usage: Option<Usage>,
                }
                if let Ok(m) = serde_json::from_slice::<Metadata>(event.data) {
                    if let Some(t) = m.usage.as_ref().and_then(Usage::tokens) {
                        observed.final_tokens(t);
                    }
                }
                observed.ended = true;
            }
            "chunk" => {
                let Ok(Chunk { bytes: Some(b64) }) = serde_json::from_slice(event.data) else {
                    return;
                };
                let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(&*b64) else {
                    return;
                };
                self.on_model_event(observed, &decoded);
            }
            e if e.ends_with("Exception") || e.ends_with("Error") => {
                let message = serde_json::from_slice::<ErrorBody>(event.data)
                    .ok()
                    .and_then(|b| b.message)
                    .unwrap_or_else(|| String::from_utf8_lossy(event.data).into_owned());
                observed.error = Some(format!("{e}: {message}"));
                observed.ended = true;
            }
            _ => {}
        }
    }

    fn error_body(&self, code: &str, message: &str, details: Option<Value>) -> Value {
        // botocore reads the error code from `__type` and the text from `message`.
        super::with_details(json!({ "__type": code, "message": message }), details)
    }

    fn response_text(&self, v: &Value, out: &mut String) {
        for p in [
            "/output/message/content",
            "/content",
            "/generation",
            "/results",
        ] {
            if let Some(x) = v.pointer(p) {
                super::collect_strings(x, out);
            }
        }
    }

    fn delta_text(&self, _event: &str, v: &Value, out: &mut String) {
        if let Some(s) = v.pointer("/delta/text").and_then(Value::as_str) {
            out.push_str(s);
        }
    }

    fn header_usage(&self, headers: &HeaderMap) -> Option<Tokens> {
        let n =
            |name: &str| -> Option<u64> { headers.get(name)?.to_str().ok()?.trim().parse().ok() };
        let input = n("x-amzn-bedrock-input-token-count")?;
        let output = n("x-amzn-bedrock-output-token-count")?;
        let read = n("x-amzn-bedrock-cache-read-input-token-count").unwrap_or(0);
        let write = n("x-amzn-bedrock-cache-write-input-token-count").unwrap_or(0);
        Some(Tokens {
            prompt: input.saturating_add(read).saturating_add(write),
            completion: output,
            cache_read: read,
            cache_write: write,
            cache_write_1h: 0,
            reasoning: 0,
        })
    }
}

/// `anthropic.claude-3-haiku-20240307-v1:0` and `converse` from
/// `/model/anthropic.claude-3-haiku-20240307-v1%3A0/converse`. An inference profile's ARN is a
/// model id too (`arn:aws:bedrock:…:inference-profile/us.anthropic.…`, its `/` encoded).
fn model_and_operation(path: &str) -> (Option<String>, Option<&str>) {
    let mut segments = path.split('/').skip_while(|s| *s != "model").skip(1);
    let Some(id) = segments.next().filter(|s| !s.is_empty()) else {
        return (None, None);
    };
    let model = percent_encoding::percent_decode_str(id)
        .decode_utf8_lossy()
        .into_owned();
    (Some(model), segments.next())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formats::{from_json, WireFormat};

    #[test]
    fn the_model_and_the_operation_come_from_the_path() {
        let facts = Bedrock.request(
            "/model/anthropic.claude-3-haiku-20240307-v1%3A0/converse-stream",
            b"{}",
        );
        assert_eq!(
            facts.model.as_deref(),
            Some("anthropic.claude-3-haiku-20240307-v1:0")
        );
        assert!(facts.stream);
        let facts = Bedrock.request("/model/amazon.nova-lite-v1%3A0/invoke", b"{}");
        assert!(!facts.stream);
        assert_eq!(model_and_operation("/model/"), (None, None));
        assert_eq!(model_and_operation("/guardrail/x"), (None, None));
    }

    /// Converse's answer, from the Bedrock API reference (Converse, "Response Syntax").
    #[test]
    fn converse_usage_excludes_the_cache_from_input_tokens() {
        let body = br#"{"output":{"message":{"role":"assistant","content":[{"text":"Hi"}]}},
            "stopReason":"end_turn","usage":{"inputTokens":30,"outputTokens":12,"totalTokens":1042,
            "cacheReadInputTokens":1000,"cacheWriteInputTokens":0},"metrics":{"latencyMs":412}}"#;
        let o = from_json(WireFormat::Bedrock, body);
        let t = o.tokens.expect("usage");
        assert_eq!((t.prompt, t.completion, t.cache_read), (1030, 12, 1000));
        assert!(o.usage_final);
    }

    #[test]
    fn invoke_model_bodies_of_each_family_are_read() {
        let llama = br#"{"generation":"Hi","prompt_token_count":9,"generation_token_count":4,"stop_reason":"stop"}"#;
        let t = from_json(WireFormat::Bedrock, llama).tokens.expect("llama");
        assert_eq!((t.prompt, t.completion), (9, 4));
        let titan = br#"{"inputTextTokenCount":5,"results":[{"tokenCount":7,"outputText":"x","completionReason":"FINISH"}]}"#;
        let t = from_json(WireFormat::Bedrock, titan).tokens.expect("titan");
        assert_eq!((t.prompt, t.completion), (5, 7));
        let claude = br#"{"id":"msg_bdrk_1","type":"message","model":"claude-3-haiku-20240307","content":[{"type":"text","text":"Hi"}],
            "usage":{"input_tokens":10,"output_tokens":3,"cache_creation_input_tokens":2,"cache_read_input_tokens":0}}"#;
        let o = from_json(WireFormat::Bedrock, claude);
        let t = o.tokens.expect("claude");
        assert_eq!((t.prompt, t.completion, t.cache_write), (12, 3, 2));
        assert_eq!(o.response_model.as_deref(), Some("claude-3-haiku-20240307"));
        let err = from_json(
            WireFormat::Bedrock,
            br#"{"message":"The security token included in the request is invalid."}"#,
        );
        assert!(err.error.is_some_and(|e| e.contains("security token")));
    }

    #[test]
    fn stream_events_end_at_metadata_or_the_invocation_metrics() {
        let mut o = Observed::default();
        let ev = |event, data: &'static [u8]| Event { event, data };
        Bedrock.on_event(
            &mut o,
            ev("messageStart", br#"{"role":"assistant","p":"abc"}"#),
        );
        Bedrock.on_event(&mut o, ev("messageStop", br#"{"stopReason":"end_turn"}"#));
        assert!(!o.ended, "the usage comes after messageStop");
        Bedrock.on_event(
            &mut o,
            ev(
                "metadata",
                br#"{"usage":{"inputTokens":8,"outputTokens":2,"totalTokens":10},"metrics":{"latencyMs":5}}"#,
            ),
        );
        assert!(o.ended && o.usage_final);
        assert_eq!(o.tokens.map(|t| (t.prompt, t.completion)), Some((8, 2)));

        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let chunk = |inner: &str| format!(r#"{{"bytes":"{}","p":"ab"}}"#, b64(inner));
        let mut o = Observed::default();
        let start = chunk(
            r#"{"type":"message_start","message":{"id":"msg_1","model":"claude-3-haiku-20240307","usage":{"input_tokens":25,"output_tokens":1}}}"#,
        );
        let stop = chunk(
            r#"{"type":"message_stop","amazon-bedrock-invocationMetrics":{"inputTokenCount":25,"outputTokenCount":9,"invocationLatency":300,"firstByteLatency":100}}"#,
        );
        Bedrock.on_event(
            &mut o,
            Event {
                event: "chunk",
                data: start.as_bytes(),
            },
        );
        assert_eq!(o.body_id.as_deref(), Some("msg_1"));
        assert!(!o.usage_final && !o.ended);
        Bedrock.on_event(
            &mut o,
            Event {
                event: "chunk",
                data: stop.as_bytes(),
            },
        );
        assert!(o.ended && o.usage_final);
        assert_eq!(o.tokens.map(|t| (t.prompt, t.completion)), Some((25, 9)));

        let mut o = Observed::default();
        Bedrock.on_event(
            &mut o,
            ev("throttlingException", br#"{"message":"Too many requests"}"#),
        );
        assert_eq!(
            o.error.as_deref(),
            Some("throttlingException: Too many requests")
        );
    }

    #[test]
    fn invoke_model_headers_carry_the_counts() {
        let mut h = HeaderMap::new();
        h.insert("x-amzn-bedrock-input-token-count", "11".parse().expect("v"));
        h.insert("x-amzn-bedrock-output-token-count", "4".parse().expect("v"));
        let t = Bedrock.header_usage(&h).expect("counts");
        assert_eq!((t.prompt, t.completion), (11, 4));
        h.remove("x-amzn-bedrock-output-token-count");
        assert_eq!(Bedrock.header_usage(&h), None);
    }
}
