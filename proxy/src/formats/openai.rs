//! OpenAI and the OpenAI-compatible APIs: chat completions, the Responses API, legacy
//! completions and embeddings, as OpenAI, Groq, Mistral, DeepSeek, Together, Fireworks,
//! OpenRouter, xAI, Gemini's compatible endpoint and Ollama speak them.
//!
//! Usage is read by the shape of the JSON rather than the endpoint. Compatible providers agree
//! on the field names but not always on their meaning; what this reader normalises, so that
//! `prompt + completion` is what the provider bills:
//! - the Responses API's `input_tokens`/`output_tokens` are chat's `prompt_tokens` and
//!   `completion_tokens` (cache reads included, as in chat);
//! - DeepSeek reports cache hits as `prompt_cache_hit_tokens`, outside the details object;
//! - xAI reports `reasoning_tokens` outside `completion_tokens` (a grok-3-mini answer: completion
//!   1, reasoning 290, total 303), and Gemini's compatible endpoint leaves its thinking tokens
//!   out of `completion_tokens` while counting them in `total_tokens`. Both bill that output, so
//!   whatever `total_tokens` holds beyond `prompt + completion` is counted as output, and as
//!   reasoning when the provider named none. OpenAI, Groq, Mistral, Together, Fireworks,
//!   OpenRouter and DeepSeek keep `total = prompt + completion` (reasoning inside completion),
//!   where the rule changes nothing.

use bytes::{Bytes, BytesMut};
use serde::Deserialize;
use serde_json::{json, Value};
use tally_ingest::Tokens;

use super::{json, ErrorField, Format, Needle, Observed, RequestFacts, Units};
use crate::sse::Event;

pub(super) struct OpenAi;

#[derive(Debug, Default, Deserialize)]
struct Details {
    #[serde(default, deserialize_with = "super::count")]
    cached_tokens: Option<u64>,
    #[serde(default, deserialize_with = "super::count")]
    reasoning_tokens: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
struct Usage {
    // Chat, completions, embeddings.
    #[serde(default, deserialize_with = "super::count")]
    prompt_tokens: Option<u64>,
    #[serde(default, deserialize_with = "super::count")]
    completion_tokens: Option<u64>,
    prompt_tokens_details: Option<Details>,
    completion_tokens_details: Option<Details>,
    // Responses API (here `input_tokens` includes cached tokens, unlike Anthropic).
    #[serde(default, deserialize_with = "super::count")]
    input_tokens: Option<u64>,
    #[serde(default, deserialize_with = "super::count")]
    output_tokens: Option<u64>,
    input_tokens_details: Option<Details>,
    output_tokens_details: Option<Details>,
    #[serde(default, deserialize_with = "super::count")]
    total_tokens: Option<u64>,
    // DeepSeek reports cache hits outside the details object.
    #[serde(default, deserialize_with = "super::count")]
    prompt_cache_hit_tokens: Option<u64>,
    // Audio transcriptions billed by the second: `{"type": "duration", "seconds": 3}`.
    seconds: Option<f64>,
}

impl Usage {
    fn tokens(self) -> Tokens {
        let input_details = self.prompt_tokens_details.or(self.input_tokens_details);
        let output_details = self
            .completion_tokens_details
            .or(self.output_tokens_details);
        let prompt = self.prompt_tokens.or(self.input_tokens).unwrap_or(0);
        let mut completion = self.completion_tokens.or(self.output_tokens).unwrap_or(0);
        let mut reasoning = output_details.and_then(|d| d.reasoning_tokens).unwrap_or(0);
        // Output the provider billed but left out of `completion_tokens` (see the module docs).
        let unreported = self.total_tokens.map_or(0, |total| {
            total.saturating_sub(prompt.saturating_add(completion))
        });
        if unreported > 0 {
            completion = completion.saturating_add(unreported);
            if reasoning == 0 {
                reasoning = unreported;
            }
        }
        Tokens {
            prompt,
            completion,
            cache_read: input_details
                .and_then(|d| d.cached_tokens)
                .or(self.prompt_cache_hit_tokens)
                .unwrap_or(0),
            cache_write: 0,
            cache_write_1h: 0,
            reasoning: reasoning.min(completion),
        }
    }
}

/// The fields we read from a chat/completions/embeddings body, a stream chunk, or a
/// Responses-API object.
#[derive(Debug, Deserialize)]
struct Body {
    id: Option<String>,
    model: Option<String>,
    usage: Option<Usage>,
    error: Option<ErrorField>,
    /// Responses API stream events wrap the response object.
    response: Option<Box<Body>>,
    /// Images: one entry per image made (embeddings have one too; the request says which).
    #[serde(default)]
    data: Vec<serde::de::IgnoredAny>,
    /// Images (`gpt-image-1` echoes what it made).
    size: Option<String>,
    quality: Option<String>,
    /// Transcriptions: `verbose_json`'s measured length, and the transcript.
    duration: Option<f64>,
    text: Option<String>,
    /// Moderations: free.
    results: Option<serde::de::IgnoredAny>,
    /// Responses API: `queued`, `in_progress`, `completed`, …, and whether in background mode.
    status: Option<String>,
    background: Option<bool>,
    /// `default`, `flex`, `priority`, …: which rates the request is billed at.
    service_tier: Option<String>,
}

/// Speech is about 150 words a minute: the estimate of a transcript's length when the
/// response says nothing of it.
const WORDS_PER_SECOND: f64 = 2.5;

fn apply(observed: &mut Observed, body: Body) {
    if let Some(inner) = body.response {
        apply(observed, *inner);
    }
    let seconds = body
        .duration
        .or(body.usage.as_ref().and_then(|u| u.seconds));
    observed.units = match (seconds, &body.text, &body.usage) {
        (Some(seconds), ..) => Some(Units::AudioSeconds {
            seconds,
            estimated: false,
        }),
        (None, Some(text), None) => Some(Units::AudioSeconds {
            seconds: text.split_whitespace().count() as f64 / WORDS_PER_SECOND,
            estimated: true,
        }),
        _ if !body.data.is_empty() => Some(Units::Images {
            n: body.data.len() as u64,
            size: body.size.clone().unwrap_or_default(),
            quality: body.quality.clone().unwrap_or_default(),
        }),
        _ => None,
    };
    if body.background == Some(true) {
        let running = matches!(body.status.as_deref(), Some("queued" | "in_progress"));
        observed.background_done = Some(!running);
    }
    if body.results.is_some() && body.usage.is_none() {
        // Moderations cost nothing: an estimate would invent a price.
        observed.final_tokens(Tokens::default());
    }
    if observed.response_model.is_none() {
        observed.response_model = body.model;
    }
    if observed.body_id.is_none() {
        observed.body_id = body.id;
    }
    if body.service_tier.is_some() {
        observed.service_tier = body.service_tier;
    }
    if let Some(u) = body.usage {
        // Every OpenAI-style usage object is a count of what was generated so far, never a
        // placeholder; the last one of a stream is the total.
        observed.final_tokens(u.tokens());
    }
    if let Some(e) = body.error.and_then(ErrorField::message) {
        observed.error = Some(e);
    }
}

static USAGE_KEY: Needle = Needle::new(|| memchr::memmem::Finder::new(b"\"usage\""));
static ERROR_KEY: Needle = Needle::new(|| memchr::memmem::Finder::new(b"\"error\""));

/// True when `data` has a `"usage"` key whose value is an object (not `null`).
pub(crate) fn has_usage_object(data: &[u8]) -> bool {
    let mut rest = data;
    while let Some(i) = USAGE_KEY.find(rest) {
        rest = &rest[i + 7..];
        let after = rest
            .iter()
            .copied()
            .skip_while(|b| b.is_ascii_whitespace() || *b == b':')
            .find(|b| !b.is_ascii_whitespace());
        if after == Some(b'{') {
            return true;
        }
    }
    false
}

/// The value of the single `data:` line of an SSE event, as a range of `event`; `None` when
/// the event has no data line or several.
fn data_line(event: &[u8]) -> Option<std::ops::Range<usize>> {
    let mut found = None;
    let mut start = 0;
    for line in event.split(|b| *b == b'\n') {
        let end = start + line.len();
        let line_end = if line.last() == Some(&b'\r') {
            end - 1
        } else {
            end
        };
        if let Some(v) = event[start..line_end].strip_prefix(b"data:") {
            if found.is_some() {
                return None;
            }
            let skip = usize::from(v.first() == Some(&b' '));
            found = Some(line_end - v.len() + skip..line_end);
        }
        start = end + 1;
    }
    found
}

fn is_empty_array(v: &[u8]) -> bool {
    let inner = v.strip_prefix(b"[").and_then(|v| v.strip_suffix(b"]"));
    inner.is_some_and(|i| i.iter().all(u8::is_ascii_whitespace))
}

impl Format for OpenAi {
    fn key_headers(&self) -> &'static [&'static str] {
        &crate::headers::SDK_KEY_HEADERS
    }

    fn request(&self, path: &str, body: &[u8]) -> RequestFacts {
        if let Some(facts) = per_unit_request(path, body) {
            return facts;
        }
        let f = json::fields(body, &["model", "stream", "user", "stream_options"]);
        RequestFacts {
            model: f.str("model").map(str::to_owned),
            stream: f.get("stream").and_then(Value::as_bool) == Some(true),
            user: f.str("user").map(str::to_owned),
            stream_options: f.get("stream_options").is_some(),
            json: f.object,
            deployment: None,
            units: None,
        }
    }

    fn request_head(&self, path: &str, head: &[u8]) -> RequestFacts {
        // An audio upload is often larger than the body Tally reads; its fields come first.
        match audio_operation(path) {
            true => per_unit_request(path, head).unwrap_or_default(),
            false => RequestFacts::default(),
        }
    }

    fn read_json(&self, body: &[u8]) -> Observed {
        let mut observed = Observed::default();
        if let Ok(body) = serde_json::from_slice::<Body>(body) {
            apply(&mut observed, body);
        }
        observed
    }

    fn on_event(&self, observed: &mut Observed, event: Event<'_>) {
        let wanted = match event.event {
            // Chat and legacy completions send bare `data:` lines, and end with `[DONE]`.
            "" | "message" => {
                if event.data == b"[DONE]" {
                    observed.ended = true;
                    return;
                }
                event.data.first() == Some(&b'{')
                    && (observed.response_model.is_none()
                        || has_usage_object(event.data)
                        || ERROR_KEY.find(event.data).is_some())
            }
            "response.completed" | "response.incomplete" | "response.failed" | "error" => {
                observed.ended = true;
                true
            }
            "response.created" => true,
            _ => false,
        };
        if wanted {
            if let Ok(body) = serde_json::from_slice::<Body>(event.data) {
                apply(observed, body);
            }
        }
    }

    fn can_inject(&self, path: &str) -> bool {
        path.ends_with("/chat/completions") || path.ends_with("/completions")
    }

    /// Adds `"stream_options":{"include_usage":true}` at the end of the object, textually, so
    /// every other byte the client sent reaches the upstream unchanged.
    fn inject(&self, body: &[u8]) -> Option<Bytes> {
        let end = body.iter().rposition(|b| !b.is_ascii_whitespace())?;
        if body[end] != b'}' {
            return None;
        }
        let inner_empty = body[..end]
            .iter()
            .rposition(|b| !b.is_ascii_whitespace())
            .is_some_and(|i| body[i] == b'{');
        let insert: &[u8] = if inner_empty {
            br#""stream_options":{"include_usage":true}"#
        } else {
            br#","stream_options":{"include_usage":true}"#
        };
        let mut out = Vec::with_capacity(body.len() + insert.len());
        out.extend_from_slice(&body[..end]);
        out.extend_from_slice(insert);
        out.extend_from_slice(&body[end..]);
        Some(out.into())
    }

    /// `include_usage` makes the upstream add a usage-only chunk (`choices` empty, `usage` an
    /// object) before `[DONE]` and a `usage: null` member to every other chunk. The decision
    /// is made on the parsed chunk, whatever its key order or whitespace; the `usage` member
    /// is cut out by its exact position, and every other byte is forwarded as it came.
    fn strip_event(&self, event: &[u8], out: &mut BytesMut) {
        let edited = data_line(event).and_then(|data| {
            let text = &event[data.clone()];
            USAGE_KEY.find(text)?;
            // OpenAI writes compact JSON with `usage` last. In a JSON object, a text ending in
            // `,"usage":null}` can only be its last member, so that is cut without a parse (it
            // is every chunk of an injected stream); anything else is decided on the parse.
            const COMPACT_TAIL: &[u8] = b",\"usage\":null}";
            let end = text.len()
                - text
                    .iter()
                    .rev()
                    .take_while(|b| b.is_ascii_whitespace())
                    .count();
            if text[..end].ends_with(COMPACT_TAIL) {
                let at = data.start + end - COMPACT_TAIL.len();
                return Some(Some(at..at + COMPACT_TAIL.len() - 1));
            }
            let members = json::members(text)?;
            let i = members.iter().rposition(|m| m.key == "usage")?;
            let usage = &text[members[i].value.clone()];
            if usage.first() == Some(&b'{') {
                let choices = members.iter().find(|m| m.key == "choices")?;
                // The usage-only chunk: the client would not have had it at all.
                return is_empty_array(&text[choices.value.clone()]).then_some(None);
            }
            if usage != b"null" {
                return None;
            }
            let cut = json::removal(&members, i);
            Some(Some((data.start + cut.start)..(data.start + cut.end)))
        });
        match edited {
            None => out.extend_from_slice(event),
            Some(None) => {}
            Some(Some(cut)) => {
                out.extend_from_slice(&event[..cut.start]);
                out.extend_from_slice(&event[cut.end..]);
            }
        }
    }

    fn error_body(&self, code: &str, message: &str, details: Option<Value>) -> Value {
        let error = json!({ "message": message, "type": code, "param": null, "code": code });
        json!({ "error": super::with_details(error, details) })
    }

    fn response_text(&self, v: &Value, out: &mut String) {
        for c in choices(v) {
            if let Some(s) = c.pointer("/message/content").and_then(Value::as_str) {
                out.push_str(s);
            }
            if let Some(s) = c.get("text").and_then(Value::as_str) {
                out.push_str(s);
            }
        }
        if let Some(output) = v.get("output") {
            super::collect_strings(output, out);
        }
    }

    fn delta_text(&self, event: &str, v: &Value, out: &mut String) {
        for c in choices(v) {
            for p in ["/delta/content", "/delta/reasoning_content", "/text"] {
                if let Some(s) = c.pointer(p).and_then(Value::as_str) {
                    out.push_str(s);
                }
            }
        }
        if event == "response.output_text.delta" {
            if let Some(s) = v.get("delta").and_then(Value::as_str) {
                out.push_str(s);
            }
        }
    }
}

/// The `choices` array of an OpenAI-format body or chunk; empty when absent.
fn choices(v: &Value) -> impl Iterator<Item = &Value> {
    v.get("choices")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
}

/// Transcription and translation: billed by the minute of audio.
fn audio_operation(path: &str) -> bool {
    path.ends_with("/audio/transcriptions") || path.ends_with("/audio/translations")
}

/// The facts of a request to an endpoint billed by the unit: images (per image, by size and
/// quality), speech (per character), transcription and translation (per minute). Images and
/// speech take JSON; edits, variations and audio take `multipart/form-data`. Each defaults as
/// OpenAI's API reference says the endpoint does.
fn per_unit_request(path: &str, body: &[u8]) -> Option<RequestFacts> {
    let images = ["/images/generations", "/images/edits", "/images/variations"]
        .iter()
        .any(|e| path.ends_with(e));
    let speech = path.ends_with("/audio/speech");
    if !images && !speech && !audio_operation(path) {
        return None;
    }
    let f = json::fields(body, &["model", "n", "size", "quality", "input", "user"]);
    let field = |name: &str| -> Option<String> {
        match f.object {
            true => f.get(name).map(|v| match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            }),
            false => multipart_field(body, name).map(str::to_owned),
        }
    };
    let model = field("model");
    let units = if images {
        Units::Images {
            n: field("n").and_then(|n| n.parse().ok()).unwrap_or(1),
            size: field("size").unwrap_or_else(|| "1024x1024".to_owned()),
            quality: field("quality").unwrap_or_else(|| "standard".to_owned()),
        }
    } else if speech {
        Units::Characters(field("input").map_or(0, |t| t.chars().count() as u64))
    } else {
        Units::AudioSeconds {
            seconds: 0.0,
            estimated: true,
        }
    };
    Some(RequestFacts {
        model: model.or_else(|| images.then(|| "dall-e-2".to_owned())),
        user: field("user"),
        json: f.object,
        units: Some(units),
        ..RequestFacts::default()
    })
}

/// The value of a plain (non-file) field of a `multipart/form-data` body:
/// `Content-Disposition: form-data; name="model"`, a blank line, the value.
fn multipart_field<'a>(body: &'a [u8], name: &str) -> Option<&'a str> {
    let needle = format!("name=\"{name}\"");
    let at = memchr::memmem::find(body, needle.as_bytes())?;
    let after = &body[at + needle.len()..];
    // The field's own headers end at the blank line; a `filename=` there makes it a file.
    let blank = memchr::memmem::find(after, b"\r\n\r\n")?;
    if memchr::memmem::find(&after[..blank], b"filename=").is_some() {
        return None;
    }
    let value = &after[blank + 4..];
    let end = memchr::memmem::find(value, b"\r\n").unwrap_or(value.len());
    std::str::from_utf8(&value[..end]).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strip(text: &str) -> String {
        let mut out = BytesMut::new();
        OpenAi.strip_event(text.as_bytes(), &mut out);
        String::from_utf8(out.to_vec()).expect("utf8")
    }

    #[test]
    fn injection_is_textual_and_minimal() {
        let b = OpenAi
            .inject(b"{\"model\":\"m\",\"stream\":true}\n")
            .expect("object");
        assert_eq!(
            &b[..],
            b"{\"model\":\"m\",\"stream\":true,\"stream_options\":{\"include_usage\":true}}\n"
        );
        let v: Value = serde_json::from_slice(&b).expect("still JSON");
        assert_eq!(v["stream_options"]["include_usage"], true);
        assert_eq!(
            &OpenAi.inject(b"{ }").expect("empty")[..],
            b"{ \"stream_options\":{\"include_usage\":true}}"
        );
        assert!(OpenAi.inject(b"[1,2]").is_none());
        assert!(OpenAi.inject(b"").is_none());
    }

    #[test]
    fn stripping_decides_on_the_parsed_chunk_whatever_its_formatting() {
        // The usage-only chunk goes, in any key order and spacing.
        for usage_only in [
            "data: {\"id\":\"c\",\"choices\":[],\"usage\":{\"prompt_tokens\":1}}\n\n",
            "data: {\"id\": \"c\", \"choices\": [], \"usage\": {\"prompt_tokens\": 1}}\n\n",
            "data: {\"usage\": {\"prompt_tokens\": 1}, \"choices\" : [ ] }\r\n\r\n",
        ] {
            assert_eq!(strip(usage_only), "", "{usage_only:?}");
        }
        // `usage: null` is cut out; everything else stays byte for byte.
        for (with, without) in [
            (
                "data: {\"id\":\"c\",\"choices\":[{\"delta\":{}}],\"usage\":null}\n\n",
                "data: {\"id\":\"c\",\"choices\":[{\"delta\":{}}]}\n\n",
            ),
            (
                "data: {\"usage\": null, \"id\": \"c\", \"choices\": []}\n\n",
                "data: {\"id\": \"c\", \"choices\": []}\n\n",
            ),
            (
                "data: { \"id\": \"c\", \"choices\": [ {\"delta\": {\"content\": \"usage: null\"}} ], \"usage\": null }\n\n",
                "data: { \"id\": \"c\", \"choices\": [ {\"delta\": {\"content\": \"usage: null\"}} ] }\n\n",
            ),
        ] {
            assert_eq!(strip(with), without);
        }
        // A chunk with choices and a usage object (a provider's own) is the client's.
        let own = "data: {\"choices\":[{\"delta\":{}}],\"usage\":{\"prompt_tokens\":1}}\n\n";
        assert_eq!(strip(own), own);
        for untouched in [
            "data: [DONE]\n\n",
            "data: {\"id\":\"c\",\"choices\":[]}\n\n",
            ": keep-alive\n\n",
            "data: {\"broken\": \"usage\"\n\n",
        ] {
            assert_eq!(strip(untouched), untouched);
        }
    }

    #[test]
    fn reasoning_outside_completion_is_counted_as_output() {
        // xAI grok-3-mini: completion 1, reasoning 290, total 303.
        let o = OpenAi.read_json(
            br#"{"model":"grok-3-mini","usage":{"prompt_tokens":12,"completion_tokens":1,
                "total_tokens":303,"completion_tokens_details":{"reasoning_tokens":290}}}"#,
        );
        let t = o.tokens.expect("usage");
        assert_eq!((t.prompt, t.completion, t.reasoning), (12, 291, 290));
        assert_eq!(t.total(), 303);
        // Gemini's compatible endpoint: thinking counted only in the total.
        let o = OpenAi.read_json(
            br#"{"usage":{"prompt_tokens":8,"completion_tokens":1,"total_tokens":1180}}"#,
        );
        let t = o.tokens.expect("usage");
        assert_eq!((t.completion, t.reasoning, t.total()), (1172, 1171, 1180));
        // OpenAI: reasoning is inside completion, total agrees, nothing changes.
        let o = OpenAi.read_json(
            br#"{"usage":{"prompt_tokens":21,"completion_tokens":5,"total_tokens":26,
                "completion_tokens_details":{"reasoning_tokens":2}}}"#,
        );
        let t = o.tokens.expect("usage");
        assert_eq!((t.completion, t.reasoning, t.total()), (5, 2, 26));
    }

    #[test]
    fn per_unit_endpoints_say_what_they_bill() {
        let f = OpenAi.request(
            "/v1/images/generations",
            br#"{"model":"dall-e-3","prompt":"a cat","n":2,"size":"1792x1024","quality":"hd"}"#,
        );
        assert_eq!(f.model.as_deref(), Some("dall-e-3"));
        let Some(Units::Images { n, size, quality }) = &f.units else {
            panic!("{:?}", f.units)
        };
        assert_eq!(
            (*n, size.as_str(), quality.as_str()),
            (2, "1792x1024", "hd")
        );
        let f = OpenAi.request("/v1/images/generations", br#"{"prompt":"a cat"}"#);
        assert_eq!(f.model.as_deref(), Some("dall-e-2"), "the API's default");
        let f = OpenAi.request(
            "/v1/audio/speech",
            r#"{"model":"tts-1","input":"Héllo there","voice":"alloy"}"#.as_bytes(),
        );
        assert_eq!(f.units, Some(Units::Characters(11)));
        let multipart = b"--XyZ\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nwhisper-1\r\n--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.mp3\"\r\nContent-Type: audio/mpeg\r\n\r\nID3\x00\xff";
        let f = OpenAi.request_head("/v1/audio/transcriptions", multipart);
        assert_eq!(f.model.as_deref(), Some("whisper-1"));
        assert_eq!(
            multipart_field(multipart, "file"),
            None,
            "a file is not a field"
        );

        let o = OpenAi.read_json(
            br#"{"text":"one two three four five","usage":{"type":"duration","seconds":3}}"#,
        );
        assert_eq!(
            o.units,
            Some(Units::AudioSeconds {
                seconds: 3.0,
                estimated: false
            })
        );
        let o = OpenAi.read_json(br#"{"text":"one two three four five"}"#);
        assert_eq!(
            o.units,
            Some(Units::AudioSeconds {
                seconds: 2.0,
                estimated: true
            })
        );
        let o = OpenAi.read_json(
            br#"{"created":1,"data":[{"url":"https://x/1.png"},{"url":"https://x/2.png"}]}"#,
        );
        assert!(matches!(o.units, Some(Units::Images { n: 2, .. })));
        let o = OpenAi.read_json(
            br#"{"id":"modr-1","model":"omni-moderation-latest","results":[{"flagged":false}]}"#,
        );
        assert_eq!(o.tokens, Some(Tokens::default()), "moderations are free");
    }

    #[test]
    fn request_fields_are_read_as_the_upstream_reads_them() {
        let f = OpenAi.request(
            "/v1/chat/completions",
            br#"{"model":"gpt-4o-mini","stream":true,"stream":true,"temperature":NaN,"user":"u"}"#,
        );
        assert_eq!(f.model.as_deref(), Some("gpt-4o-mini"));
        assert!(f.stream && f.json && !f.stream_options);
        assert_eq!(f.user.as_deref(), Some("u"));
    }
}
