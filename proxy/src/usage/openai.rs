//! OpenAI-format usage: chat completions, the Responses API, legacy completions, embeddings, and
//! the OpenAI-compatible providers (DeepSeek's cache fields included).

use serde::Deserialize;
use tally_ingest::Tokens;

use super::{has_usage_object, ErrorField, Observed};
use crate::sse::Event;

#[derive(Debug, Default, Deserialize)]
struct Details {
    cached_tokens: Option<u64>,
    reasoning_tokens: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
struct Usage {
    // Chat, completions, embeddings.
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
    prompt_tokens_details: Option<Details>,
    completion_tokens_details: Option<Details>,
    // Responses API (here `input_tokens` includes cached tokens, unlike Anthropic).
    input_tokens: Option<u64>,
    output_tokens: Option<u64>,
    input_tokens_details: Option<Details>,
    output_tokens_details: Option<Details>,
    // DeepSeek reports cache hits outside the details object.
    prompt_cache_hit_tokens: Option<u64>,
}

impl Usage {
    fn tokens(self) -> Tokens {
        let input_details = self.prompt_tokens_details.or(self.input_tokens_details);
        let output_details = self
            .completion_tokens_details
            .or(self.output_tokens_details);
        Tokens {
            prompt: self.prompt_tokens.or(self.input_tokens).unwrap_or(0),
            completion: self.completion_tokens.or(self.output_tokens).unwrap_or(0),
            cache_read: input_details
                .and_then(|d| d.cached_tokens)
                .or(self.prompt_cache_hit_tokens)
                .unwrap_or(0),
            cache_write: 0,
            reasoning: output_details.and_then(|d| d.reasoning_tokens).unwrap_or(0),
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
}

fn apply(observed: &mut Observed, body: Body) {
    if let Some(inner) = body.response {
        apply(observed, *inner);
    }
    if observed.response_model.is_none() {
        observed.response_model = body.model;
    }
    if observed.body_id.is_none() {
        observed.body_id = body.id;
    }
    if let Some(u) = body.usage {
        observed.tokens = Some(u.tokens());
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

static ERROR_KEY: super::Needle = super::Needle::new(|| memchr::memmem::Finder::new(b"\"error\""));

pub(super) fn on_event(observed: &mut Observed, event: Event<'_>) {
    let wanted = match event.event {
        // Chat and legacy completions send bare `data:` lines.
        "" | "message" => {
            event.data.first() == Some(&b'{')
                && (observed.response_model.is_none()
                    || has_usage_object(event.data)
                    || ERROR_KEY.find(event.data).is_some())
        }
        "response.created"
        | "response.completed"
        | "response.incomplete"
        | "response.failed"
        | "error" => true,
        _ => false,
    };
    if wanted {
        if let Ok(body) = serde_json::from_slice::<Body>(event.data) {
            apply(observed, body);
        }
    }
}
