//! One API across providers, on the proxy path: a request in the client's dialect sent to a
//! provider that speaks another, and its answer translated back as it passes.
//!
//! The shapes themselves are `tally-translate`'s (a pure crate); this module is the part that
//! knows HTTP and Tally's providers: which dialect a provider's wire format is, the path, query
//! and headers a target wants ([`outbound`]), and the response side ([`ResponseTranslator`]),
//! which the exchange runs on each upstream chunk before the client, the record's copy and the
//! stages see it. Usage is still read from the upstream's own bytes, in its own format, so the
//! record keeps what the serving provider reported.
//!
//! Passthrough stays the default: nothing here runs unless the request came in on
//! `/unified/…` or a router sends it to a target whose format differs from the route's.

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::StatusCode;
use serde_json::{json, Value};
use tally_translate::{Dialect, StreamTranslator};

use crate::formats::{self, Framing, Observed, WireFormat};
use crate::phases::Refusal;
use crate::providers::Provider;

/// The prefix of the unified routes.
pub(crate) const UNIFIED_PREFIX: &str = "/unified/";

/// The endpoints a translated request may call, as the client spells them.
pub(crate) const ENDPOINTS: [&str; 2] = ["/v1/chat/completions", "/v1/messages"];

/// The Anthropic API version Tally asks for when it writes an Anthropic request itself.
const ANTHROPIC_VERSION: &str = "2023-06-01";

/// Azure OpenAI's GA data-plane version, for requests Tally addresses to a deployment.
const AZURE_API_VERSION: &str = "2024-10-21";

/// The Vertex AI version of Anthropic's API that Claude on Vertex takes in the body.
const VERTEX_ANTHROPIC_VERSION: &str = "vertex-2023-10-16";

/// The dialect a wire format's chat API speaks.
pub(crate) fn dialect(format: WireFormat) -> Option<Dialect> {
    Some(match format {
        WireFormat::OpenAi | WireFormat::Azure => Dialect::OpenAi,
        WireFormat::Anthropic | WireFormat::VertexAnthropic => Dialect::Anthropic,
        WireFormat::Gemini | WireFormat::Vertex => Dialect::Gemini,
        WireFormat::Bedrock => Dialect::Converse,
    })
}

/// The wire format `provider` serves `model` in: a Vertex provider serves Gemini in Google's
/// shape and Claude in Anthropic's.
fn serving_format(provider: &Provider, model: &str) -> WireFormat {
    match provider.format {
        WireFormat::Vertex if model.starts_with("claude") => WireFormat::VertexAnthropic,
        f => f,
    }
}

/// Where a Vertex provider's models live: the project its service-account key file names and
/// its configured location. A client on its own Vertex route names both in the path; through
/// the unified API only the model is named, so both must come from config.
fn vertex_place(provider: &Provider) -> Result<(&str, &str), Refusal> {
    let project = provider
        .service_account
        .as_ref()
        .and_then(|sa| sa.as_ref().ok())
        .and_then(|sa| sa.project_id());
    match (project, provider.location.as_deref()) {
        (Some(p), Some(l)) => Ok((p, l)),
        _ => Err(Refusal::new(
            StatusCode::BAD_REQUEST,
            "tally_untranslatable",
            format!(
                "the unified API calls {} models under the project of providers.{}.service_account_file and its location; set both, or call it on its own route",
                provider.name, provider.name
            ),
        )),
    }
}

/// The dialect a client speaks on a chat path (`…/chat/completions` or `…/messages`).
pub(crate) fn client_format(path: &str) -> Option<WireFormat> {
    if path.ends_with("/chat/completions") {
        Some(WireFormat::OpenAi)
    } else if path.ends_with("/v1/messages") {
        Some(WireFormat::Anthropic)
    } else {
        None
    }
}

/// What the response side needs to know about a translated attempt.
#[derive(Debug, Clone)]
pub(crate) struct ResponsePlan {
    pub(crate) upstream: Dialect,
    pub(crate) client: Dialect,
    /// The format the upstream's bytes are read in, for usage.
    pub(crate) upstream_format: WireFormat,
    /// The model called, for answers that do not name it.
    pub(crate) model: String,
    /// The OpenAI client's `stream_options.include_usage`.
    pub(crate) include_usage: bool,
}

impl ResponsePlan {
    /// Whether the answer's shape changes on the way back (an OpenAI client served by Azure
    /// reads Azure's answer as it is).
    pub(crate) fn rewrites(&self) -> bool {
        self.upstream != self.client
    }

    /// `openai>anthropic`, for the record's `translated` property.
    pub(crate) fn label(&self) -> String {
        format!("{}>{}", self.client.name(), self.upstream.name())
    }
}

/// A request ready for a target: where it goes and what it carries.
pub(crate) struct Translated {
    pub(crate) path: String,
    pub(crate) query: Option<String>,
    pub(crate) body: Bytes,
    pub(crate) plan: ResponsePlan,
}

/// Translates a request in `client`'s format (whose whole body is `body`) for `provider`,
/// calling `model` there. Fixes the headers: the client's provider keys go (they were for
/// another API; Tally's held credentials sign the request), and the target's required ones
/// are added.
pub(crate) fn outbound(
    client: WireFormat,
    provider: &Provider,
    model: &str,
    body: &[u8],
    headers: &mut HeaderMap,
) -> Result<Translated, Refusal> {
    let format = serving_format(provider, model);
    let (Some(from), Some(to)) = (dialect(client), dialect(format)) else {
        return Err(Refusal::new(
            StatusCode::BAD_REQUEST,
            "tally_untranslatable",
            format!(
                "the unified API cannot translate for provider {}",
                provider.name
            ),
        ));
    };
    let place = match format {
        WireFormat::Vertex | WireFormat::VertexAnthropic => Some(vertex_place(provider)?),
        _ => None,
    };
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        Refusal::new(
            StatusCode::BAD_REQUEST,
            "tally_invalid_json",
            format!("the request body is not valid JSON, so it cannot be translated: {e}"),
        )
    })?;
    let mut translated = tally_translate::request(from, to, &value, model).map_err(|u| {
        Refusal::new(
            StatusCode::BAD_REQUEST,
            "tally_unsupported_feature",
            u.to_string(),
        )
        .details(json!({ "feature": u.feature, "target": u.target }))
    })?;
    // OpenAI's own reasoning models refuse `max_tokens`; every OpenAI chat model takes
    // `max_completion_tokens`. Compatible servers (Ollama, vLLM, Groq…) may know only the
    // older name, so only OpenAI and Azure get the new one.
    if from != to && (provider.name == "openai" || provider.format == WireFormat::Azure) {
        if let Some(n) = translated
            .as_object_mut()
            .and_then(|o| o.remove("max_tokens"))
        {
            translated["max_completion_tokens"] = n;
        }
    }
    let stream = value.get("stream").and_then(Value::as_bool) == Some(true);
    let include_usage = value.pointer("/stream_options/include_usage") == Some(&json!(true));
    let (path, query) = target_path(provider, format, place, model, stream);
    if format == WireFormat::VertexAnthropic {
        // Claude on Vertex: the model is in the path and the API version in the body.
        if let Some(o) = translated.as_object_mut() {
            o.remove("model");
            o.insert("anthropic_version".into(), json!(VERTEX_ANTHROPIC_VERSION));
        }
    }
    if from != to {
        for h in crate::headers::SDK_KEY_HEADERS {
            headers.remove(h);
        }
        let theirs: Vec<_> = headers
            .keys()
            .filter(|k| k.as_str().starts_with("anthropic-") || k.as_str().starts_with("openai-"))
            .cloned()
            .collect();
        for k in theirs {
            headers.remove(k);
        }
    }
    // The answer is read (and, across dialects, rewritten) as it passes: it must come as is.
    headers.remove(header::ACCEPT_ENCODING);
    headers.remove(header::CONTENT_LENGTH);
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if format == WireFormat::Anthropic && !headers.contains_key("anthropic-version") {
        headers.insert(
            "anthropic-version",
            HeaderValue::from_static(ANTHROPIC_VERSION),
        );
    }
    let body = serde_json::to_vec(&translated).map_err(|e| {
        Refusal::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "tally_internal",
            format!("could not write the translated request: {e}"),
        )
    })?;
    Ok(Translated {
        path,
        query,
        body: body.into(),
        plan: ResponsePlan {
            upstream: to,
            client: from,
            upstream_format: format,
            model: model.to_owned(),
            include_usage,
        },
    })
}

/// A path segment: model ids may hold `/` and `:` (Bedrock ARNs, inference profiles).
const SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Whether an OpenAI-compatible base path already ends in its API's version (`/v1`,
/// `/api/v3`, `/v1beta/openai`), so the chat endpoint follows it without another `/v1`.
fn versioned(base_path: &str) -> bool {
    let base = base_path.trim_end_matches('/');
    base.ends_with("/openai")
        || base.rsplit('/').next().is_some_and(|s| {
            let mut c = s.chars();
            c.next() == Some('v') && c.next().is_some_and(|d| d.is_ascii_digit())
        })
}

/// The chat endpoint of `provider` for `model` served in `format`, relative to its base URL;
/// `place` is a Vertex model's project and location.
fn target_path(
    provider: &Provider,
    format: WireFormat,
    place: Option<(&str, &str)>,
    model: &str,
    stream: bool,
) -> (String, Option<String>) {
    let m = percent_encoding::utf8_percent_encode(model, SEGMENT);
    let vertex = |publisher: &str, method: &str| {
        let (p, l) = place.unwrap_or_default();
        let (p, l) = (
            percent_encoding::utf8_percent_encode(p, SEGMENT),
            percent_encoding::utf8_percent_encode(l, SEGMENT),
        );
        format!("/v1/projects/{p}/locations/{l}/publishers/{publisher}/models/{m}:{method}")
    };
    match format {
        WireFormat::OpenAi => {
            // A base URL that already ends in its API's version (`…/v1beta/openai`, `…/v1`)
            // takes the endpoint without another `/v1`.
            let path = if versioned(provider.base_path()) {
                "/chat/completions"
            } else {
                "/v1/chat/completions"
            };
            (path.to_owned(), None)
        }
        WireFormat::Azure => (
            format!("/openai/deployments/{m}/chat/completions"),
            Some(format!("api-version={AZURE_API_VERSION}")),
        ),
        WireFormat::Anthropic => ("/v1/messages".to_owned(), None),
        WireFormat::VertexAnthropic => match stream {
            true => (vertex("anthropic", "streamRawPredict"), None),
            false => (vertex("anthropic", "rawPredict"), None),
        },
        WireFormat::Vertex => match stream {
            true => (
                vertex("google", "streamGenerateContent"),
                Some("alt=sse".to_owned()),
            ),
            false => (vertex("google", "generateContent"), None),
        },
        WireFormat::Gemini => match stream {
            true => (
                format!("/v1beta/models/{m}:streamGenerateContent"),
                Some("alt=sse".to_owned()),
            ),
            false => (format!("/v1beta/models/{m}:generateContent"), None),
        },
        WireFormat::Bedrock => match stream {
            true => (format!("/model/{m}/converse-stream"), None),
            false => (format!("/model/{m}/converse"), None),
        },
    }
}

/// Rewrites one answer from the upstream's dialect to the client's. A stream is rewritten
/// event by event as its chunks arrive; a whole answer (or an error) is kept until it ends,
/// since a JSON document cannot be rewritten before it is whole, then written out at once.
pub(crate) enum ResponseTranslator {
    Stream {
        framing: Framing,
        inner: Box<StreamTranslator>,
        out: Vec<u8>,
    },
    Whole {
        plan: ResponsePlan,
        status: u16,
        buffer: Vec<u8>,
        limit: usize,
        overflow: bool,
    },
}

impl ResponseTranslator {
    /// For an answer with `status` that is an event stream when `stream`; `limit` bounds a
    /// whole answer kept for rewriting.
    pub(crate) fn new(plan: &ResponsePlan, status: u16, stream: bool, limit: usize) -> Self {
        if stream && (200..300).contains(&status) {
            let framing = plan.upstream_format.framing();
            let inner =
                StreamTranslator::new(plan.upstream, plan.client, plan.include_usage, &plan.model);
            return Self::Stream {
                framing,
                inner: Box::new(inner),
                out: Vec::new(),
            };
        }
        Self::Whole {
            plan: plan.clone(),
            status,
            buffer: Vec::new(),
            limit,
            overflow: false,
        }
    }

    /// The content type of what the client gets.
    pub(crate) fn content_type(&self) -> &'static str {
        match self {
            Self::Stream { .. } => "text/event-stream",
            Self::Whole { .. } => "application/json",
        }
    }

    /// One upstream chunk in; the client's bytes for it out (empty while a whole answer is
    /// still arriving, or when the chunk ended no event).
    pub(crate) fn chunk(&mut self, chunk: &[u8]) -> Bytes {
        match self {
            Self::Stream {
                framing,
                inner,
                out,
            } => {
                let mut on_event = |e: crate::sse::Event<'_>| inner.event(e.event, e.data, out);
                match framing {
                    Framing::Sse(p) => p.feed(chunk, &mut on_event),
                    Framing::EventStream(p) => {
                        if let Some(why) = p.feed(chunk, &mut on_event) {
                            tracing::warn!(reason = %why, "a translated event stream became unreadable");
                        }
                    }
                }
                Bytes::from(std::mem::take(out))
            }
            Self::Whole {
                buffer,
                limit,
                overflow,
                ..
            } => {
                if buffer.len() + chunk.len() > *limit {
                    *overflow = true;
                } else {
                    buffer.extend_from_slice(chunk);
                }
                Bytes::new()
            }
        }
    }

    /// The upstream ended: the client's last bytes, and for a whole answer what its usage
    /// said (read from the upstream's own body, in its own format).
    pub(crate) fn finish(&mut self) -> (Bytes, Option<Observed>) {
        match self {
            Self::Stream { inner, out, .. } => {
                inner.finish(out);
                (Bytes::from(std::mem::take(out)), None)
            }
            Self::Whole {
                plan,
                status,
                buffer,
                limit,
                overflow,
            } => {
                let body = std::mem::take(buffer);
                let (client, observed) = if *overflow {
                    let message = format!(
                        "the {} answer was larger than proxy.max_body_bytes ({limit} bytes), the most Tally keeps to translate",
                        plan.upstream.name()
                    );
                    let e = tally_translate::error(plan.client, 502, &message);
                    (
                        e,
                        Observed {
                            error: Some(message),
                            ..Default::default()
                        },
                    )
                } else if (200..300).contains(status) {
                    let answer =
                        tally_translate::response(plan.upstream, plan.client, &body, &plan.model);
                    (answer, formats::from_json(plan.upstream_format, &body))
                } else {
                    let message = tally_translate::error_message(&body);
                    let e = tally_translate::error(plan.client, *status, &message);
                    (e, formats::from_json(plan.upstream_format, &body))
                };
                let bytes = serde_json::to_vec(&client).unwrap_or_default();
                (bytes.into(), Some(observed))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_versioned_base_path_takes_the_endpoint_without_another_v1() {
        for (base, yes) in [
            ("", false),
            ("/", false),
            ("/proxy", false),
            ("/v", false),
            ("/video", false),
            ("/v1", true),
            ("/v1/", true),
            ("/api/v3", true),
            ("/v1beta/openai", true),
            ("/openai", true),
        ] {
            assert_eq!(versioned(base), yes, "{base:?}");
        }
    }

    fn plan(upstream: WireFormat, client: WireFormat) -> ResponsePlan {
        ResponsePlan {
            upstream: dialect(upstream).expect("translatable"),
            client: dialect(client).expect("translatable"),
            upstream_format: upstream,
            model: "m".into(),
            include_usage: true,
        }
    }

    fn sse(events: &[(&str, Value)]) -> Vec<u8> {
        events
            .iter()
            .map(|(name, v)| match name {
                &"" => format!("data: {v}\n\n"),
                name => format!("event: {name}\ndata: {v}\n\n"),
            })
            .collect::<String>()
            .into_bytes()
    }

    /// Upstream streams with text, two tool calls whose arguments arrive in pieces, and usage:
    /// (upstream format, client format, bytes, what the client must find in its stream).
    fn streams() -> Vec<(WireFormat, WireFormat, Vec<u8>, &'static str)> {
        let anthropic = sse(&[
            (
                "message_start",
                json!({"type": "message_start", "message": {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude", "content": [], "usage": {"input_tokens": 3, "output_tokens": 1}}}),
            ),
            (
                "content_block_start",
                json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
            ),
            (
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Héllo ✓"}}),
            ),
            (
                "content_block_stop",
                json!({"type": "content_block_stop", "index": 0}),
            ),
            (
                "content_block_start",
                json!({"type": "content_block_start", "index": 1, "content_block": {"type": "tool_use", "id": "tu_1", "name": "weather", "input": {}}}),
            ),
            (
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "{\"city\":"}}),
            ),
            (
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "\"Paris\"}"}}),
            ),
            (
                "content_block_stop",
                json!({"type": "content_block_stop", "index": 1}),
            ),
            (
                "message_delta",
                json!({"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 7}}),
            ),
            ("message_stop", json!({"type": "message_stop"})),
        ]);
        let chunk = |delta: Value, finish: Value| {
            (
                "",
                json!({"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "gpt", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}),
            )
        };
        let mut openai = sse(&[
            chunk(
                json!({"role": "assistant", "content": "Héllo ✓"}),
                Value::Null,
            ),
            chunk(
                json!({"tool_calls": [{"index": 0, "id": "call_1", "type": "function", "function": {"name": "weather", "arguments": ""}}]}),
                Value::Null,
            ),
            chunk(
                json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"city\":"}}]}),
                Value::Null,
            ),
            chunk(
                json!({"tool_calls": [{"index": 0, "function": {"arguments": "\"Paris\"}"}}]}),
                Value::Null,
            ),
            chunk(json!({}), json!("tool_calls")),
            (
                "",
                json!({"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "gpt", "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 7, "total_tokens": 10}}),
            ),
        ]);
        openai.extend_from_slice(b"data: [DONE]\n\n");
        let gemini = sse(&[
            (
                "",
                json!({"candidates": [{"content": {"role": "model", "parts": [{"text": "Héllo ✓"}]}, "index": 0}], "usageMetadata": {"promptTokenCount": 3}}),
            ),
            (
                "",
                json!({"candidates": [{"content": {"role": "model", "parts": [{"functionCall": {"name": "weather", "args": {"city": "Paris"}}}]}, "finishReason": "STOP", "index": 0}], "usageMetadata": {"promptTokenCount": 3, "candidatesTokenCount": 7, "totalTokenCount": 10}}),
            ),
        ]);
        let mut bedrock = Vec::new();
        for (event, payload) in [
            ("messageStart", json!({"role": "assistant"})),
            (
                "contentBlockDelta",
                json!({"contentBlockIndex": 0, "delta": {"text": "Héllo ✓"}}),
            ),
            ("contentBlockStop", json!({"contentBlockIndex": 0})),
            (
                "contentBlockStart",
                json!({"contentBlockIndex": 1, "start": {"toolUse": {"toolUseId": "tu_1", "name": "weather"}}}),
            ),
            (
                "contentBlockDelta",
                json!({"contentBlockIndex": 1, "delta": {"toolUse": {"input": "{\"city\":"}}}),
            ),
            (
                "contentBlockDelta",
                json!({"contentBlockIndex": 1, "delta": {"toolUse": {"input": "\"Paris\"}"}}}),
            ),
            ("contentBlockStop", json!({"contentBlockIndex": 1})),
            ("messageStop", json!({"stopReason": "tool_use"})),
            (
                "metadata",
                json!({"usage": {"inputTokens": 3, "outputTokens": 7, "totalTokens": 10}}),
            ),
        ] {
            bedrock.extend(crate::eventstream::frame(event, &payload.to_string()));
        }
        use WireFormat::*;
        vec![
            (Anthropic, OpenAi, anthropic, "Paris"),
            (OpenAi, Anthropic, openai, "Paris"),
            (Gemini, OpenAi, gemini.clone(), "Paris"),
            (Gemini, Anthropic, gemini, "Paris"),
            (Bedrock, OpenAi, bedrock.clone(), "Paris"),
            (Bedrock, Anthropic, bedrock, "Paris"),
        ]
    }

    /// The client's stream, its events parsed and the members that carry the time of day
    /// (`created`, ids made from it) left out.
    fn translate(plan: &ResponsePlan, stream: &[u8], cuts: &[usize]) -> Vec<Value> {
        let mut t = ResponseTranslator::new(plan, 200, true, 1 << 20);
        let mut out = Vec::new();
        let mut at = 0;
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (stream.len() + 1)).collect();
        cuts.sort_unstable();
        for c in cuts {
            out.extend_from_slice(&t.chunk(&stream[at..c]));
            at = c;
        }
        out.extend_from_slice(&t.chunk(&stream[at..]));
        out.extend_from_slice(&t.finish().0);
        let text = String::from_utf8(out).expect("the client's stream is UTF-8");
        text.split("\n\n")
            .filter(|e| !e.is_empty())
            .map(|e| {
                let data = e
                    .lines()
                    .find_map(|l| l.strip_prefix("data: "))
                    .unwrap_or("");
                let mut v: Value = serde_json::from_str(data).unwrap_or(json!(data));
                for p in ["/created", "/id", "/message/id"] {
                    if let Some(x) = v.pointer_mut(p) {
                        *x = Value::Null;
                    }
                }
                v
            })
            .collect()
    }

    #[test]
    fn each_translated_stream_carries_its_tool_call_and_usage() {
        for (up, client, bytes, needle) in streams() {
            let events = translate(&plan(up, client), &bytes, &[]);
            let all = serde_json::to_string(&events).expect("json");
            assert!(all.contains(needle), "{up:?}>{client:?}: {all}");
            assert!(all.contains("Héllo ✓"), "{up:?}>{client:?}: {all}");
            let usage = match client {
                WireFormat::OpenAi => "\"completion_tokens\":7",
                _ => "\"output_tokens\":7",
            };
            assert!(all.contains(usage), "{up:?}>{client:?}: {all}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Chunks cut anywhere, inside a frame, a UTF-8 character or a JSON string, give the
        /// client the same events as the stream in one piece.
        #[test]
        fn a_translated_stream_does_not_depend_on_where_chunks_are_cut(
            cuts in prop::collection::vec(0usize..4096, 0..16)
        ) {
            for (up, client, bytes, _) in streams() {
                let plan = plan(up, client);
                prop_assert_eq!(translate(&plan, &bytes, &[]), translate(&plan, &bytes, &cuts));
            }
        }
    }
}
