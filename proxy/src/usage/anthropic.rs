//! Anthropic Messages usage. Anthropic's `input_tokens` excludes cache reads and writes, so the
//! prompt total is the sum of the three.

use serde::Deserialize;
use tally_ingest::Tokens;

use super::{ErrorField, Observed};
use crate::sse::Event;

#[derive(Debug, Default, Deserialize)]
struct Usage {
    input_tokens: Option<u64>,
    output_tokens: Option<u64>,
    cache_creation_input_tokens: Option<u64>,
    cache_read_input_tokens: Option<u64>,
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
fn merge(tokens: &mut Option<Tokens>, u: Usage) {
    let t = tokens.get_or_insert_with(Tokens::default);
    let uncached = u.input_tokens;
    if let Some(v) = u.cache_read_input_tokens {
        t.cache_read = v;
    }
    if let Some(v) = u.cache_creation_input_tokens {
        t.cache_write = v;
    }
    if let Some(v) = uncached {
        t.prompt = v + t.cache_read + t.cache_write;
    } else if u.cache_read_input_tokens.is_some() || u.cache_creation_input_tokens.is_some() {
        // Should not happen, but keep the invariant prompt >= cache_read + cache_write.
        t.prompt = t.prompt.max(t.cache_read + t.cache_write);
    }
    if let Some(v) = u.output_tokens {
        t.completion = v;
    }
}

fn apply(observed: &mut Observed, body: Body) {
    if let Some(m) = body.message {
        observed.response_model = observed.response_model.take().or(m.model);
        observed.body_id = observed.body_id.take().or(m.id);
        if let Some(u) = m.usage {
            merge(&mut observed.tokens, u);
        }
    }
    if observed.response_model.is_none() {
        observed.response_model = body.model;
    }
    if observed.body_id.is_none() {
        observed.body_id = body.id;
    }
    if let Some(u) = body.usage {
        merge(&mut observed.tokens, u);
    }
    if let Some(e) = body.error.and_then(ErrorField::message) {
        observed.error = Some(e);
    }
}

pub(super) fn from_json(bytes: &[u8]) -> Observed {
    let mut observed = Observed::default();
    if let Ok(body) = serde_json::from_slice::<Body>(bytes) {
        apply(&mut observed, body);
    }
    observed
}

pub(super) fn on_event(observed: &mut Observed, event: Event<'_>) {
    // Content deltas are the bulk of a stream and carry nothing we need.
    if matches!(event.event, "message_start" | "message_delta" | "error") {
        if let Ok(body) = serde_json::from_slice::<Body>(event.data) {
            apply(observed, body);
        }
    }
}
