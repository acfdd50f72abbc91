//! Wire formats: everything Tally knows about the shape of one provider API, one module each.
//!
//! A format answers the questions the request path asks, and nothing else does:
//! - where the model, the stream flag and the end user are in a request ([`Format::request`]);
//! - which headers carry the caller's key ([`Format::key_headers`]);
//! - how usage, the response model and errors are read from a JSON body ([`Format::read_json`])
//!   and from its event stream ([`Format::on_event`]), including what marks the stream's end and
//!   whether a usage report is final;
//! - how the provider's usage fields map to the priced token classes (inside those readers:
//!   Anthropic's `input_tokens` exclude cache reads, xAI's reasoning is outside
//!   `completion_tokens`, …);
//! - whether usage can be requested for a stream that did not ask for it, and how the client is
//!   then shown exactly the stream it would have had ([`Format::inject`], [`Format::strip_event`]);
//! - how an error Tally answers itself is shaped, so the client's SDK raises its usual exception
//!   ([`Format::error_body`]);
//! - where generated text is, for token estimates ([`Format::response_text`]).
//!
//! A new provider API is one new module implementing [`Format`], one [`WireFormat`] variant and
//! its arm in each `match self` of `impl WireFormat` (the adapter, and the two per-event calls
//! dispatched statically); no phase of the request path changes.

mod anthropic;
mod azure;
mod bedrock;
mod gemini;
pub mod json;
mod openai;
mod vertex;

use serde::Deserialize;
use serde_json::Value;
use tally_ingest::Tokens;

use crate::eventstream::EventStreamParser;
use crate::sse::{Event, SseParser};

/// The wire format a provider speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WireFormat {
    /// OpenAI and every OpenAI-compatible API.
    #[serde(rename = "openai")]
    OpenAi,
    /// Anthropic's Messages API.
    Anthropic,
    /// Google's Gemini API (`generateContent`, `streamGenerateContent`, …).
    Gemini,
    /// Azure OpenAI: OpenAI's shapes, addressed by deployment and keyed by `api-key`.
    Azure,
    /// Vertex AI's Gemini endpoints: Gemini's shapes under a project and location.
    Vertex,
    /// Claude on Vertex AI: Anthropic's shapes, the model in the path. Chosen by path on a
    /// `vertex` provider, never configured.
    #[serde(skip)]
    VertexAnthropic,
    /// AWS Bedrock's runtime API; its streams are AWS's binary event stream, not SSE.
    Bedrock,
}

impl WireFormat {
    /// The module that knows this format.
    pub(crate) fn adapter(self) -> &'static dyn Format {
        match self {
            WireFormat::OpenAi => &openai::OpenAi,
            WireFormat::Anthropic => &anthropic::Anthropic,
            WireFormat::Gemini => &gemini::Gemini,
            WireFormat::Azure => &azure::Azure,
            WireFormat::Vertex => &vertex::Vertex,
            WireFormat::VertexAnthropic => &vertex::VertexAnthropic,
            WireFormat::Bedrock => &bedrock::Bedrock,
        }
    }

    /// [`Format::on_event`], dispatched statically: it runs on every event of every stream,
    /// where a virtual call cost measurably more than the event's own check (BENCHMARKS.md).
    fn on_event(self, observed: &mut Observed, event: Event<'_>) {
        match self {
            WireFormat::OpenAi => openai::OpenAi.on_event(observed, event),
            WireFormat::Anthropic => anthropic::Anthropic.on_event(observed, event),
            WireFormat::Gemini => gemini::Gemini.on_event(observed, event),
            WireFormat::Azure => azure::Azure.on_event(observed, event),
            WireFormat::Vertex => gemini::Gemini.on_event(observed, event),
            WireFormat::VertexAnthropic => anthropic::Anthropic.on_event(observed, event),
            WireFormat::Bedrock => bedrock::Bedrock.on_event(observed, event),
        }
    }

    /// [`Format::strip_event`], dispatched statically for the same reason.
    pub(crate) fn strip_event(self, event: &[u8], out: &mut bytes::BytesMut) {
        match self {
            WireFormat::OpenAi => openai::OpenAi.strip_event(event, out),
            WireFormat::Anthropic => anthropic::Anthropic.strip_event(event, out),
            WireFormat::Gemini => gemini::Gemini.strip_event(event, out),
            WireFormat::Azure => openai::OpenAi.strip_event(event, out),
            WireFormat::Vertex => gemini::Gemini.strip_event(event, out),
            WireFormat::VertexAnthropic => anthropic::Anthropic.strip_event(event, out),
            WireFormat::Bedrock => bedrock::Bedrock.strip_event(event, out),
        }
    }

    /// How this format's streams are framed.
    pub(crate) fn framing(self) -> Framing {
        match self {
            WireFormat::Bedrock => Framing::EventStream(EventStreamParser::new()),
            _ => Framing::Sse(SseParser::new()),
        }
    }
}

/// A stream's framing: SSE for every provider but Bedrock, whose streams are AWS's binary
/// event stream.
#[derive(Debug)]
pub(crate) enum Framing {
    Sse(SseParser),
    EventStream(EventStreamParser),
}

/// What a request says about itself, read the way its upstream will read it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RequestFacts {
    /// The requested model.
    pub model: Option<String>,
    /// The client asked for a stream.
    pub stream: bool,
    /// The end user named in the body (OpenAI `user`, Anthropic `metadata.user_id`).
    pub user: Option<String>,
    /// The client set the stream options itself; Tally then leaves them alone.
    pub stream_options: bool,
    /// The body is a JSON object (possibly after reading it leniently); false for anything
    /// Tally could not read, whose cost it therefore cannot foresee.
    pub json: bool,
    /// The deployment the request addresses (Azure), which names no model by itself: the
    /// provider's `deployments` map says which model it serves.
    pub deployment: Option<String>,
    /// What a per-unit endpoint is asked for (images, speech, transcription).
    pub units: Option<Units>,
}

/// What an endpoint that bills by the unit rather than the token bills for.
#[derive(Debug, Clone, PartialEq)]
pub enum Units {
    /// Images generated: how many, at which size and quality.
    Images {
        /// How many.
        n: u64,
        /// `1024x1024`, `1792x1024`, …
        size: String,
        /// `standard`, `hd`, …
        quality: String,
    },
    /// Audio transcribed or translated.
    AudioSeconds {
        /// Its length.
        seconds: f64,
        /// The response gave no duration: estimated from the transcript's words.
        estimated: bool,
    },
    /// Characters of text turned into speech.
    Characters(u64),
}

impl Units {
    /// What the request said, refined by what the response said: the response's count of
    /// images and its measured duration win. The request decides the kind.
    pub fn merge(request: Option<Units>, response: Option<Units>) -> Option<Units> {
        match (request?, response) {
            (
                Units::Images { size, quality, .. },
                Some(Units::Images {
                    n,
                    size: rs,
                    quality: rq,
                }),
            ) => Some(Units::Images {
                n,
                size: if rs.is_empty() { size } else { rs },
                quality: if rq.is_empty() { quality } else { rq },
            }),
            (Units::AudioSeconds { .. }, Some(a @ Units::AudioSeconds { .. })) => Some(a),
            (request, _) => Some(request),
        }
    }

    /// What [`Units::properties`] wrote, read back from a stored record (for `tally reprice`).
    pub fn from_properties(p: &std::collections::BTreeMap<String, String>) -> Option<Units> {
        if let Some(n) = p.get("billed_images").and_then(|n| n.parse().ok()) {
            let text = |k: &str| p.get(k).cloned().unwrap_or_default();
            return Some(Units::Images {
                n,
                size: text("image_size"),
                quality: text("image_quality"),
            });
        }
        if let Some(seconds) = p.get("billed_audio_seconds").and_then(|s| s.parse().ok()) {
            return Some(Units::AudioSeconds {
                seconds,
                estimated: p.contains_key("billed_audio_seconds_estimated"),
            });
        }
        p.get("billed_characters")
            .and_then(|n| n.parse().ok())
            .map(Units::Characters)
    }

    /// The record properties that say what was billed.
    pub fn properties(&self) -> Vec<(&'static str, String)> {
        match self {
            Units::Images { n, size, quality } => vec![
                ("billed_images", n.to_string()),
                ("image_size", size.clone()),
                ("image_quality", quality.clone()),
            ],
            Units::AudioSeconds { seconds, estimated } => {
                let mut v = vec![("billed_audio_seconds", format!("{seconds:.1}"))];
                if *estimated {
                    v.push(("billed_audio_seconds_estimated", "true".to_owned()));
                }
                v
            }
            Units::Characters(n) => vec![("billed_characters", n.to_string())],
        }
    }
}

/// What the response told us.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Observed {
    /// Token counts, if the provider reported any.
    pub tokens: Option<Tokens>,
    /// `tokens` are the provider's count for the whole response, not a report made while the
    /// answer was still being generated (Anthropic's `message_start` says `output_tokens: 1`).
    pub usage_final: bool,
    /// The model the provider says answered.
    pub response_model: Option<String>,
    /// The id in the body (`chatcmpl-…`, `msg_…`, `resp_…`).
    pub body_id: Option<String>,
    /// An error message the provider put in the body or stream.
    pub error: Option<String>,
    /// The format's end-of-stream event went by (`[DONE]`, `message_stop`,
    /// `response.completed`, …): the answer is complete even if the connection is not.
    pub ended: bool,
    /// What a per-unit endpoint's answer says it billed (images made, audio seconds).
    pub units: Option<Units>,
    /// A Responses-API object made in background mode: `Some(false)` while it is queued or
    /// running (its usage is not known yet), `Some(true)` once it is finished.
    pub background_done: Option<bool>,
    /// What the provider's content filter said (Azure), kept in the record's properties
    /// `content_filter` (the verdict) and `content_filter_findings`.
    pub content_filter: Option<ContentFilter>,
    /// The service tier the provider says served the request (OpenAI's `service_tier`,
    /// Anthropic's `usage.service_tier`).
    pub service_tier: Option<String>,
    /// Server-side web search calls the provider billed (Anthropic's
    /// `usage.server_tool_use.web_search_requests`), as reported; see [`plausible`].
    pub web_search_calls: u64,
}

/// A provider's content-filter verdict over the prompt and the answer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContentFilter {
    /// Something was filtered (the request refused, or the answer cut).
    pub filtered: bool,
    /// Findings that were not `safe`: `prompt.violence=medium`, `completion.jailbreak=detected`,
    /// with `(filtered)` where the filter acted on them.
    pub findings: std::collections::BTreeSet<String>,
}

impl ContentFilter {
    /// `filtered`, `flagged` (something found, nothing filtered) or `safe`.
    pub fn verdict(&self) -> &'static str {
        if self.filtered {
            "filtered"
        } else if self.findings.is_empty() {
            "safe"
        } else {
            "flagged"
        }
    }
}

impl Observed {
    /// Records a usage report that is the final count.
    fn final_tokens(&mut self, t: Tokens) {
        self.tokens = Some(t);
        self.usage_final = true;
    }
}

/// One provider API's shape; see the module docs. Implementations are unit structs, reached
/// through [`WireFormat::adapter`].
pub(crate) trait Format: Sync {
    /// Headers that may carry the caller's provider key, in the order they are tried.
    fn key_headers(&self) -> &'static [&'static str];

    /// Reads the request's model, stream flag and user from its body head (and path, for APIs
    /// that name the model there).
    fn request(&self, path: &str, body: &[u8]) -> RequestFacts;

    /// Reads what it can from the head of a request body too large to read whole (an audio
    /// upload's fields); nothing by default.
    fn request_head(&self, _path: &str, _head: &[u8]) -> RequestFacts {
        RequestFacts::default()
    }

    /// Reads a complete (non-streamed) JSON response body. Anything unparseable yields nothing.
    fn read_json(&self, body: &[u8]) -> Observed;

    /// Reads one event of the response stream.
    fn on_event(&self, observed: &mut Observed, event: Event<'_>);

    /// Whether Tally can ask this endpoint for stream usage the client did not request.
    fn can_inject(&self, _path: &str) -> bool {
        false
    }

    /// The request body asking for stream usage, every other byte unchanged; `None` when the
    /// body is not something the request can be added to.
    fn inject(&self, _body: &[u8]) -> Option<bytes::Bytes> {
        None
    }

    /// Appends one event of an injected stream to `out` as the client would have received it
    /// without the injection (possibly nothing). Only called when [`Format::inject`] was used.
    fn strip_event(&self, event: &[u8], out: &mut bytes::BytesMut) {
        out.extend_from_slice(event);
    }

    /// The error body of an answer Tally gives itself: `code` is Tally's code, `details` extra
    /// fields for the error object.
    fn error_body(&self, code: &str, message: &str, details: Option<Value>) -> Value;

    /// Appends the generated text of a complete JSON response to `out`.
    fn response_text(&self, body: &Value, out: &mut String);

    /// Appends the generated text one stream event carries to `out`.
    fn delta_text(&self, event: &str, data: &Value, out: &mut String);

    /// For a JSON body too large to keep whole: the members read from its head (model, id)
    /// and the one read from its tail (usage), where every provider puts them.
    fn tail_keys(&self) -> (&'static [&'static str], &'static str) {
        (&["model", "id"], "usage")
    }

    /// The format a request on `path` is read in, when this provider serves more than one
    /// (Vertex: Gemini, or Claude under `publishers/anthropic`).
    fn for_path(&self, _path: &str) -> Option<WireFormat> {
        None
    }

    /// Record properties the request path carries (Vertex's project and location).
    fn path_properties(&self, _path: &str) -> Vec<(&'static str, String)> {
        Vec::new()
    }

    /// The header a key Tally holds for the provider goes in, and whether as `Bearer <key>`.
    fn held_key_header(&self) -> (&'static str, bool) {
        ("authorization", true)
    }

    /// Usage the response head reports (Bedrock's `x-amzn-bedrock-*-token-count`), used when
    /// the body reports none.
    fn header_usage(&self, _headers: &http::HeaderMap) -> Option<Tokens> {
        None
    }
}

/// Merges `details` (an object) into `error`.
fn with_details(mut error: Value, details: Option<Value>) -> Value {
    if let (Some(Value::Object(extra)), Some(obj)) = (details, error.as_object_mut()) {
        obj.extend(extra);
    }
    error
}

/// Reads a complete (non-streamed) JSON response body. Anything unparseable yields nothing.
pub fn from_json(format: WireFormat, body: &[u8]) -> Observed {
    format.adapter().read_json(body)
}

/// Reads a request body head the way `format`'s upstream will.
pub fn request_facts(format: WireFormat, path: &str, body: &[u8]) -> RequestFacts {
    format.adapter().request(path, body)
}

/// Reads usage from a JSON body too large to capture whole: `model` and `id` from the first
/// bytes (where every provider puts them) and `usage` from the last ones (likewise).
pub fn from_truncated_json(format: WireFormat, head: &[u8], tail: &[u8]) -> Observed {
    let mut partial = serde_json::Map::new();
    let (head_keys, tail_key) = format.adapter().tail_keys();
    let wanted = head_keys
        .iter()
        .map(|k| (*k, head, false))
        .chain([(tail_key, tail, true)]);
    for (key, bytes, last) in wanted {
        if let Some(v) = value_after_key(bytes, key, last) {
            partial.insert(key.to_owned(), v);
        }
    }
    if partial.is_empty() {
        return Observed::default();
    }
    let rebuilt = Value::Object(partial).to_string();
    from_json(format, rebuilt.as_bytes())
}

/// The JSON value following the first (or last) `"key":` in `bytes`, if it parses.
fn value_after_key(bytes: &[u8], key: &str, last: bool) -> Option<Value> {
    let needle = format!("\"{key}\"");
    let finder = memchr::memmem::Finder::new(needle.as_bytes());
    let positions: Vec<usize> = finder.find_iter(bytes).collect();
    let candidates: Box<dyn Iterator<Item = &usize>> = if last {
        Box::new(positions.iter().rev())
    } else {
        Box::new(positions.iter())
    };
    for &i in candidates {
        let rest = &bytes[i + needle.len()..];
        let start = rest.iter().position(|b| !b.is_ascii_whitespace())?;
        if rest[start] != b':' {
            continue;
        }
        let value = &rest[start + 1..];
        let mut de = serde_json::Deserializer::from_slice(value).into_iter::<Value>();
        if let Some(Ok(v)) = de.next() {
            return Some(v);
        }
    }
    None
}

/// Calls `f` for each event of a whole captured stream, in the format's framing.
pub(crate) fn each_event(format: WireFormat, body: &[u8], f: impl FnMut(Event<'_>)) {
    match format.framing() {
        Framing::Sse(mut p) => p.feed(body, f),
        Framing::EventStream(mut p) => {
            let _ = p.feed(body, f);
        }
    }
}

/// Follows an event stream chunk by chunk, parsing only the few events that carry usage,
/// model, errors or the end, so a long stream costs a substring check per event and little else.
#[derive(Debug)]
pub struct StreamObserver {
    format: WireFormat,
    parser: Framing,
    observed: Observed,
    events: u64,
}

impl StreamObserver {
    /// A fresh observer for one stream.
    pub fn new(format: WireFormat) -> Self {
        Self {
            format,
            parser: format.framing(),
            observed: Observed::default(),
            events: 0,
        }
    }

    /// Feeds the next chunk of the stream, exactly as received.
    pub fn feed(&mut self, chunk: &[u8]) {
        let Self {
            format,
            parser,
            observed,
            events,
        } = self;
        let format = *format;
        let on_event = |event: Event<'_>| {
            *events += 1;
            format.on_event(observed, event);
        };
        match parser {
            Framing::Sse(p) => p.feed(chunk, on_event),
            Framing::EventStream(p) => {
                if let Some(why) = p.feed(chunk, on_event) {
                    // The bytes still reach the client; the record says where reading stopped.
                    observed.error.get_or_insert(why);
                }
            }
        }
    }

    /// Number of events seen so far.
    pub fn events(&self) -> u64 {
        self.events
    }

    /// Whether the format's end-of-stream event has gone by.
    pub fn ended(&self) -> bool {
        self.observed.ended
    }

    /// What the stream told us.
    pub fn finish(self) -> Observed {
        self.observed
    }
}

/// More tokens than any request can have: no model reads or writes a billion tokens in one
/// call. A provider reporting more (a `u64::MAX` from an overflow, a `1e30` from a float, a
/// negative count) has a bug, and its number is not recorded.
pub const MAX_PLAUSIBLE_TOKENS: u64 = 1_000_000_000;

/// More server-side searches than one request can make: Anthropic's `max_uses` caps them per
/// request, and no model makes a hundred thousand.
pub const MAX_PLAUSIBLE_SEARCHES: u64 = 100_000;

/// Whether a usage report can be believed; see [`MAX_PLAUSIBLE_TOKENS`].
pub fn plausible(t: &Tokens) -> bool {
    [
        t.prompt,
        t.completion,
        t.cache_read,
        t.cache_write,
        t.cache_write_1h,
        t.reasoning,
    ]
    .iter()
    .all(|n| *n <= MAX_PLAUSIBLE_TOKENS)
}

/// A token count as providers write it: any JSON number. Counts that are not whole
/// non-negative numbers (`-5`, `1e30`, `2.5`) read as `u64::MAX`, so [`plausible`] rejects the
/// report instead of the whole body failing to parse (and the usage being estimated).
fn count<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    let n: Option<serde_json::Number> = Deserialize::deserialize(d)?;
    Ok(n.map(|n| n.as_u64().unwrap_or(u64::MAX)))
}

/// Substring searchers are built once: `memmem::find` builds one per call, which cost more
/// than the search itself on every event of a stream (seen in a profile of the streaming load).
pub(crate) type Needle = std::sync::LazyLock<memchr::memmem::Finder<'static>>;

/// An error message from `{"error": {"message": …}}` or `{"error": "…"}`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum ErrorField {
    Object {
        message: Option<String>,
        #[serde(rename = "type")]
        kind: Option<String>,
    },
    Text(String),
    Other(serde::de::IgnoredAny),
}

impl ErrorField {
    fn message(self) -> Option<String> {
        match self {
            ErrorField::Object { message, kind } => message.or(kind),
            ErrorField::Text(s) => Some(s),
            ErrorField::Other(_) => None,
        }
    }
}

/// Every string under `v`, skipping structural fields that are not read as text.
pub(crate) fn collect_strings(v: &Value, out: &mut String) {
    match v {
        Value::String(s) => {
            out.push_str(s);
            out.push('\n');
        }
        Value::Array(a) => a.iter().for_each(|x| collect_strings(x, out)),
        Value::Object(o) => {
            for (k, x) in o {
                if !matches!(
                    k.as_str(),
                    "role"
                        | "type"
                        | "id"
                        | "image_url"
                        | "url"
                        | "cache_control"
                        | "source"
                        | "model"
                ) {
                    collect_strings(x, out);
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests;
