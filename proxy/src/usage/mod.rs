//! Usage capture: what the provider said about tokens, model and request id, read from a JSON
//! body or from an event stream.
//!
//! Extraction is driven by the shape of the JSON rather than by the endpoint, so chat
//! completions, the Responses API, legacy completions and embeddings all share one OpenAI reader;
//! only the meaning of `input_tokens` differs between OpenAI (cache included) and Anthropic
//! (cache excluded), which is why the wire format is the one thing the readers need to know.

mod anthropic;
mod openai;

use serde::Deserialize;
use tally_ingest::Tokens;

use crate::sse::SseParser;

/// The wire format a provider speaks; decides how usage is read and how errors are shaped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WireFormat {
    /// OpenAI and every OpenAI-compatible API.
    #[serde(rename = "openai")]
    OpenAi,
    /// Anthropic's Messages API.
    Anthropic,
}

/// What the response told us.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Observed {
    /// Token counts, if the provider reported any.
    pub tokens: Option<Tokens>,
    /// The model the provider says answered.
    pub response_model: Option<String>,
    /// The id in the body (`chatcmpl-…`, `msg_…`, `resp_…`).
    pub body_id: Option<String>,
    /// An error message the provider put in the body or stream.
    pub error: Option<String>,
}

/// Reads a complete (non-streamed) JSON response body. Anything unparseable yields nothing.
pub fn from_json(format: WireFormat, body: &[u8]) -> Observed {
    match format {
        WireFormat::OpenAi => openai::from_json(body),
        WireFormat::Anthropic => anthropic::from_json(body),
    }
}

/// Reads usage from a JSON body too large to capture whole: `model` and `id` from the first
/// bytes (where every provider puts them) and `usage` from the last ones (likewise).
pub fn from_truncated_json(format: WireFormat, head: &[u8], tail: &[u8]) -> Observed {
    let mut partial = serde_json::Map::new();
    for (key, bytes, last) in [
        ("model", head, false),
        ("id", head, false),
        ("usage", tail, true),
    ] {
        if let Some(v) = value_after_key(bytes, key, last) {
            partial.insert(key.to_owned(), v);
        }
    }
    if partial.is_empty() {
        return Observed::default();
    }
    let rebuilt = serde_json::Value::Object(partial).to_string();
    from_json(format, rebuilt.as_bytes())
}

/// The JSON value following the first (or last) `"key":` in `bytes`, if it parses.
fn value_after_key(bytes: &[u8], key: &str, last: bool) -> Option<serde_json::Value> {
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
        let mut de = serde_json::Deserializer::from_slice(value).into_iter::<serde_json::Value>();
        if let Some(Ok(v)) = de.next() {
            return Some(v);
        }
    }
    None
}

/// Follows an event stream chunk by chunk, parsing only the few events that carry usage,
/// model or errors, so a long stream costs a substring check per event and little else.
#[derive(Debug)]
pub struct StreamObserver {
    format: WireFormat,
    parser: SseParser,
    observed: Observed,
    events: u64,
}

impl StreamObserver {
    /// A fresh observer for one stream.
    pub fn new(format: WireFormat) -> Self {
        Self {
            format,
            parser: SseParser::new(),
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
        parser.feed(chunk, |event| {
            *events += 1;
            match format {
                WireFormat::OpenAi => openai::on_event(observed, event),
                WireFormat::Anthropic => anthropic::on_event(observed, event),
            }
        });
    }

    /// Number of events seen so far.
    pub fn events(&self) -> u64 {
        self.events
    }

    /// What the stream told us.
    pub fn finish(self) -> Observed {
        self.observed
    }
}

/// Substring searchers are built once: `memmem::find` builds one per call, which cost more
/// than the search itself on every event of a stream (seen in a profile of the streaming load).
pub(crate) type Needle = std::sync::LazyLock<memchr::memmem::Finder<'static>>;

static USAGE_KEY: Needle = Needle::new(|| memchr::memmem::Finder::new(b"\"usage\""));

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

#[cfg(test)]
mod tests;
