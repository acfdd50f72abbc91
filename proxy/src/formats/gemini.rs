//! Google's Gemini API (`generativelanguage.googleapis.com`), as the `google-genai` SDKs speak
//! it. The model is in the path (`/v1beta/models/{model}:{method}`), not the body, and so is
//! the choice of a stream (`:streamGenerateContent`). A stream is SSE with `?alt=sse` (what
//! the SDKs ask for), else one JSON array sent piece by piece; both carry the same
//! `GenerateContentResponse` objects.
//!
//! Usage is `usageMetadata`, repeated on every chunk of a stream with the counts so far; the
//! chunk whose candidate has a `finishReason` has the final ones, and ends the answer (there is
//! no `[DONE]`). The token classes: `promptTokenCount` includes `cachedContentTokenCount`;
//! `toolUsePromptTokenCount` (tool results read back) and `thoughtsTokenCount` (thinking) are
//! outside `promptTokenCount` and `candidatesTokenCount`, and are billed as input and output.

use serde::Deserialize;
use serde_json::{json, Value};
use tally_ingest::Tokens;

use super::{json, ErrorField, Format, Needle, Observed, RequestFacts};
use crate::sse::Event;

pub(super) struct Gemini;

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Usage {
    #[serde(default, deserialize_with = "super::count")]
    prompt_token_count: Option<u64>,
    #[serde(default, deserialize_with = "super::count")]
    candidates_token_count: Option<u64>,
    #[serde(default, deserialize_with = "super::count")]
    cached_content_token_count: Option<u64>,
    #[serde(default, deserialize_with = "super::count")]
    thoughts_token_count: Option<u64>,
    #[serde(default, deserialize_with = "super::count")]
    tool_use_prompt_token_count: Option<u64>,
}

impl Usage {
    fn tokens(&self) -> Tokens {
        let n = |v: Option<u64>| v.unwrap_or(0);
        let thoughts = n(self.thoughts_token_count);
        Tokens {
            prompt: n(self.prompt_token_count).saturating_add(n(self.tool_use_prompt_token_count)),
            completion: n(self.candidates_token_count).saturating_add(thoughts),
            cache_read: n(self.cached_content_token_count),
            cache_write: 0,
            cache_write_1h: 0,
            reasoning: thoughts,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Candidate {
    finish_reason: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Response {
    #[serde(default)]
    candidates: Vec<Candidate>,
    usage_metadata: Option<Usage>,
    model_version: Option<String>,
    response_id: Option<String>,
    error: Option<ErrorField>,
    /// `countTokens` answers with this alone.
    #[serde(default, deserialize_with = "super::count")]
    total_tokens: Option<u64>,
}

impl Response {
    fn finished(&self) -> bool {
        self.candidates.iter().any(|c| c.finish_reason.is_some())
    }
}

/// Applies one response object (a whole answer, or one chunk of a stream).
fn apply(observed: &mut Observed, r: Response, stream: bool) {
    let finished = r.finished();
    if observed.response_model.is_none() {
        observed.response_model = r.model_version;
    }
    if observed.body_id.is_none() {
        observed.body_id = r.response_id;
    }
    if let Some(u) = &r.usage_metadata {
        observed.tokens = Some(u.tokens());
        observed.usage_final = !stream || finished;
    } else if r.total_tokens.is_some() && r.candidates.is_empty() {
        // countTokens is free: nothing was generated, and an estimate would invent a cost.
        observed.tokens = Some(Tokens::default());
        observed.usage_final = true;
    }
    if finished {
        observed.ended = true;
    }
    if let Some(e) = r.error.and_then(ErrorField::message) {
        observed.error = Some(e);
        observed.ended = true;
    }
}

static FINISH: Needle = Needle::new(|| memchr::memmem::Finder::new(b"\"finishReason\""));
static ERROR: Needle = Needle::new(|| memchr::memmem::Finder::new(b"\"error\""));

impl Format for Gemini {
    fn key_headers(&self) -> &'static [&'static str] {
        &["x-goog-api-key", "authorization"]
    }

    fn request(&self, path: &str, body: &[u8]) -> RequestFacts {
        let (model, method) = model_and_method(path);
        let f = json::fields(body, &[]);
        RequestFacts {
            model: model.map(str::to_owned),
            stream: method == Some("streamGenerateContent"),
            user: None,
            stream_options: false,
            json: f.object,
            deployment: None,
            units: None,
        }
    }

    fn read_json(&self, body: &[u8]) -> Observed {
        let mut observed = Observed::default();
        // A stream without `alt=sse` is one array of chunks; a plain answer is one object.
        match serde_json::from_slice::<Value>(body) {
            Ok(Value::Array(chunks)) => {
                for c in chunks {
                    if let Ok(r) = serde_json::from_value::<Response>(c) {
                        apply(&mut observed, r, true);
                    }
                }
            }
            Ok(v @ Value::Object(_)) => {
                if let Ok(r) = serde_json::from_value::<Response>(v) {
                    apply(&mut observed, r, false);
                }
            }
            _ => {}
        }
        observed
    }

    fn on_event(&self, observed: &mut Observed, event: Event<'_>) {
        // Every chunk repeats usageMetadata; only the first (model, prompt count) and the
        // last (final counts, the end) are worth parsing, and errors.
        let first = observed.response_model.is_none() && observed.tokens.is_none();
        if !first && FINISH.find(event.data).is_none() && ERROR.find(event.data).is_none() {
            return;
        }
        if let Ok(r) = serde_json::from_slice::<Response>(event.data) {
            apply(observed, r, true);
        }
    }

    fn error_body(&self, code: &str, message: &str, details: Option<Value>) -> Value {
        // google.genai's APIError reads `error.message` and `error.status`; the HTTP status is
        // the code.
        let error = json!({ "message": message, "status": code });
        json!({ "error": super::with_details(error, details) })
    }

    fn response_text(&self, v: &Value, out: &mut String) {
        let chunks: &[Value] = match v {
            Value::Array(a) => a,
            other => std::slice::from_ref(other),
        };
        for c in chunks {
            candidate_text(c, out);
        }
    }

    fn delta_text(&self, _event: &str, v: &Value, out: &mut String) {
        candidate_text(v, out);
    }

    fn tail_keys(&self) -> (&'static [&'static str], &'static str) {
        (&["modelVersion", "responseId"], "usageMetadata")
    }

    fn held_key_header(&self) -> (&'static str, bool) {
        ("x-goog-api-key", false)
    }
}

fn candidate_text(v: &Value, out: &mut String) {
    let Some(candidates) = v.get("candidates").and_then(Value::as_array) else {
        return;
    };
    for c in candidates {
        if let Some(parts) = c.pointer("/content/parts").and_then(Value::as_array) {
            for p in parts {
                if let Some(s) = p.get("text").and_then(Value::as_str) {
                    out.push_str(s);
                }
            }
        }
    }
}

/// `gemini-2.5-flash` and `generateContent` from `/v1beta/models/gemini-2.5-flash:generateContent`
/// (also `tunedModels/…`, and Vertex-style `…/publishers/google/models/…`).
pub(super) fn model_and_method(path: &str) -> (Option<&str>, Option<&str>) {
    let mut segments = path.split('/');
    let Some(named) = segments
        .by_ref()
        .skip_while(|s| !matches!(*s, "models" | "tunedModels"))
        .nth(1)
    else {
        return (None, None);
    };
    let (model, method) = match named.split_once(':') {
        Some((m, method)) => (m, Some(method)),
        None => (named, None),
    };
    if model.is_empty() {
        return (None, None);
    }
    (Some(model), method)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formats::{from_json, StreamObserver, WireFormat};

    #[test]
    fn the_model_and_the_method_come_from_the_path() {
        assert_eq!(
            model_and_method("/v1beta/models/gemini-2.5-flash:streamGenerateContent"),
            (Some("gemini-2.5-flash"), Some("streamGenerateContent"))
        );
        assert_eq!(
            model_and_method("/v1beta/tunedModels/my-tune:generateContent"),
            (Some("my-tune"), Some("generateContent"))
        );
        assert_eq!(model_and_method("/v1beta/models"), (None, None));
        assert_eq!(model_and_method("/v1beta/models/:x"), (None, None));
        let facts = Gemini.request(
            "/v1beta/models/gemini-2.0-flash:streamGenerateContent",
            b"{}",
        );
        assert!(facts.stream);
        assert_eq!(facts.model.as_deref(), Some("gemini-2.0-flash"));
    }

    /// From the Gemini API reference (ai.google.dev/api/generate-content), a thinking model's
    /// answer: thoughts and tool-use prompts are outside the prompt and candidate counts.
    #[test]
    fn usage_metadata_maps_to_the_priced_classes() {
        let body = br#"{"candidates":[{"content":{"parts":[{"text":"Hi"}],"role":"model"},"finishReason":"STOP"}],
            "usageMetadata":{"promptTokenCount":120,"candidatesTokenCount":30,"cachedContentTokenCount":100,
            "thoughtsTokenCount":50,"toolUsePromptTokenCount":7,"totalTokenCount":207},
            "modelVersion":"gemini-2.5-flash","responseId":"abc123"}"#;
        let o = from_json(WireFormat::Gemini, body);
        let t = o.tokens.expect("usage");
        assert_eq!(
            (t.prompt, t.completion, t.cache_read, t.reasoning),
            (127, 80, 100, 50)
        );
        assert_eq!(t.prompt + t.completion, 207, "the total Google reports");
        assert_eq!(o.response_model.as_deref(), Some("gemini-2.5-flash"));
        assert_eq!(o.body_id.as_deref(), Some("abc123"));
    }

    #[test]
    fn a_stream_is_final_at_its_finish_reason_in_either_framing() {
        let chunk = |text: &str, out: u64, finish: bool| {
            let finish = if finish {
                r#","finishReason":"STOP""#
            } else {
                ""
            };
            format!(
                r#"{{"candidates":[{{"content":{{"parts":[{{"text":"{text}"}}],"role":"model"}}{finish}}}],"usageMetadata":{{"promptTokenCount":9,"candidatesTokenCount":{out},"totalTokenCount":{}}},"modelVersion":"gemini-2.0-flash","responseId":"r1"}}"#,
                9 + out
            )
        };
        let sse = format!(
            "data: {}\r\n\r\ndata: {}\r\n\r\ndata: {}\r\n\r\n",
            chunk("a", 1, false),
            chunk("b", 2, false),
            chunk("c", 3, true)
        );
        let mut o = StreamObserver::new(WireFormat::Gemini);
        for piece in sse.as_bytes().chunks(7) {
            o.feed(piece);
            assert!(!o.ended() || piece.ends_with(b"\n"));
        }
        assert!(o.ended());
        let o = o.finish();
        assert!(o.usage_final);
        assert_eq!(o.tokens.map(|t| (t.prompt, t.completion)), Some((9, 3)));

        let cut = format!(
            "data: {}\r\n\r\ndata: {}\r\n\r\n",
            chunk("a", 1, false),
            chunk("b", 2, false)
        );
        let mut o = StreamObserver::new(WireFormat::Gemini);
        o.feed(cut.as_bytes());
        assert!(!o.ended());
        let o = o.finish();
        assert!(!o.usage_final, "a cut stream has only the counts so far");
        assert_eq!(o.tokens.map(|t| t.prompt), Some(9));

        let array = format!("[{},\r\n{}]", chunk("a", 1, false), chunk("c", 3, true));
        let o = from_json(WireFormat::Gemini, array.as_bytes());
        assert!(o.ended && o.usage_final);
        assert_eq!(o.tokens.map(|t| t.completion), Some(3));
    }

    #[test]
    fn count_tokens_is_free_and_errors_are_read() {
        let o = from_json(WireFormat::Gemini, br#"{"totalTokens": 31}"#);
        assert_eq!(o.tokens, Some(Tokens::default()));
        let o = from_json(
            WireFormat::Gemini,
            br#"{"error":{"code":400,"message":"API key not valid.","status":"INVALID_ARGUMENT"}}"#,
        );
        assert_eq!(o.error.as_deref(), Some("API key not valid."));
    }
}
