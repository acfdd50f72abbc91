//! The record: one row per proxied request, the same field names in every store and the JSON API.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Whether a response cache stage answered this request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CacheStatus {
    /// No cache stage was consulted.
    #[default]
    None,
    /// Served from the cache; the upstream was not called.
    Hit,
    /// The cache was consulted and missed; the upstream answered.
    Miss,
}

impl CacheStatus {
    /// The stored text form: `none`, `hit` or `miss`.
    pub fn as_str(self) -> &'static str {
        match self {
            CacheStatus::None => "none",
            CacheStatus::Hit => "hit",
            CacheStatus::Miss => "miss",
        }
    }

    /// Parses the stored text form; anything unknown reads as `none`.
    pub fn parse(s: &str) -> Self {
        match s {
            "hit" => CacheStatus::Hit,
            "miss" => CacheStatus::Miss,
            _ => CacheStatus::None,
        }
    }
}

/// Token counts as the provider reported them (or as estimated, see [`Record::tokens_estimated`]).
///
/// `prompt` counts *all* input tokens, cache reads and writes included, whatever the provider's
/// own convention is; the adapters normalise to this.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Tokens {
    /// All input tokens, cache reads and cache writes included.
    pub prompt: u64,
    /// Output tokens, reasoning included.
    pub completion: u64,
    /// Input tokens read from the provider's prompt cache.
    pub cache_read: u64,
    /// Input tokens written to the provider's prompt cache.
    pub cache_write: u64,
    /// Of `cache_write`, those written for an hour rather than five minutes (Anthropic's
    /// `cache_creation.ephemeral_1h_input_tokens`), which cost more.
    #[serde(default)]
    pub cache_write_1h: u64,
    /// Output tokens spent on hidden reasoning (a subset of `completion`).
    pub reasoning: u64,
}

impl Tokens {
    /// Rebuilds token counts from a store's nullable columns, in the order prompt,
    /// completion, cache read, cache write, reasoning. No usage at all is stored as NULL
    /// prompt and completion; otherwise a NULL count reads as 0.
    pub fn from_columns(
        prompt: Option<u64>,
        completion: Option<u64>,
        cache_read: Option<u64>,
        cache_write: Option<u64>,
        reasoning: Option<u64>,
    ) -> Option<Self> {
        if prompt.is_none() && completion.is_none() {
            return None;
        }
        Some(Self {
            prompt: prompt.unwrap_or(0),
            completion: completion.unwrap_or(0),
            cache_read: cache_read.unwrap_or(0),
            cache_write: cache_write.unwrap_or(0),
            cache_write_1h: 0,
            reasoning: reasoning.unwrap_or(0),
        })
    }

    /// Input plus output.
    pub fn total(&self) -> u64 {
        self.prompt + self.completion
    }
}

/// One proxied request, as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// UUIDv7, also returned to the client as `Tally-Request-Id`.
    pub request_id: Uuid,
    /// Request start, milliseconds since the Unix epoch, UTC.
    pub ts: i64,
    /// Configured provider name (`openai`, `anthropic`, `groq`, …).
    pub provider: String,
    /// Path forwarded upstream, without the query string, e.g. `/v1/chat/completions`.
    pub endpoint: String,
    /// HTTP method.
    pub method: String,
    /// Model named in the request body, if any.
    pub model: Option<String>,
    /// Model named in the response, if any (often a dated snapshot).
    pub response_model: Option<String>,
    /// Upstream HTTP status; 0 when no upstream response arrived, which includes every
    /// request Tally answered itself (see [`Record::refusal`]).
    pub status: u16,
    /// Whether the response was a server-sent event stream.
    pub stream: bool,
    /// From request start to the end of the response body (or the failure).
    pub latency_ms: u64,
    /// From request start to the first response body byte; `None` when none arrived.
    pub ttft_ms: Option<u64>,
    /// Token counts; `None` when the response carried no usage and nothing could be estimated.
    pub tokens: Option<Tokens>,
    /// True when `tokens` were estimated with a tokenizer rather than reported by the provider.
    pub tokens_estimated: bool,
    /// Cost in USD; `None` when no price is known for the model (never a silent 0).
    pub cost_usd: Option<f64>,
    /// End user, from `Tally-User-Id` or the body's user field.
    pub user_id: Option<String>,
    /// From `Tally-Session-Id`.
    pub session_id: Option<String>,
    /// From `Tally-Session-Path`, e.g. `/plan/step-1`.
    pub session_path: Option<String>,
    /// From `Tally-Session-Name`.
    pub session_name: Option<String>,
    /// From `Tally-Property-<Name>` headers; names are lower-cased.
    pub properties: BTreeMap<String, String>,
    /// Cache stage outcome.
    pub cache_status: CacheStatus,
    /// What went wrong, if anything (upstream error message, disconnect, timeout…).
    pub error: Option<String>,
    /// Request body size in bytes as received from the client.
    pub request_bytes: u64,
    /// Response body size in bytes as sent by the upstream.
    pub response_bytes: u64,
    /// A hint of the provider key (`sk-…abcd`); the key itself is never stored.
    pub api_key_hint: Option<String>,
    /// The provider's own request id (`x-request-id`, `request-id`, or the body's id).
    pub provider_request_id: Option<String>,
    /// Logged request body, possibly truncated or omitted.
    pub request_body: Option<String>,
    /// Logged response body, possibly truncated or omitted.
    pub response_body: Option<String>,
    /// The logged request body was cut at the capture limit.
    pub request_body_truncated: bool,
    /// The logged response body was cut at the capture limit.
    pub response_body_truncated: bool,
    /// The router that sent the request (`/router/<name>/…`, `Tally-Router` or a model
    /// alias); `None` for a request sent straight to its provider.
    #[serde(default)]
    pub router: Option<String>,
    /// Attempts made up to and including this one: 1 unless a router retried or fell back.
    #[serde(default = "one")]
    pub attempts: u32,
    /// On a failed router attempt: the `request_id` of the request it was made for.
    #[serde(default)]
    pub parent_request_id: Option<Uuid>,
    /// On a cache hit (`cost_usd` 0): what the answer cost when it was first fetched.
    #[serde(default)]
    pub cost_saved_usd: Option<f64>,
    /// Tally's error code when Tally answered the request itself instead of the upstream
    /// (`tally_budget_exceeded`, `tally_upstream_unreachable`, …); `status` is then 0.
    #[serde(default)]
    pub refusal: Option<String>,
    /// The Tally key the request authenticated with (its id; never the secret).
    #[serde(default)]
    pub key_id: Option<String>,
    /// That key's name.
    #[serde(default)]
    pub key_name: Option<String>,
    /// The request body as the provider received it, when Tally translated it (the unified
    /// API, a router mixing formats) and `proxy.keep_translated_bodies` is on.
    #[serde(default)]
    pub upstream_request_body: Option<String>,
    /// The provider's answer before Tally translated it back, under the same condition.
    #[serde(default)]
    pub upstream_response_body: Option<String>,
    /// The service tier the provider says served the request (OpenAI's `service_tier`:
    /// `default`, `flex`, `priority`, …), which sets its price.
    #[serde(default)]
    pub service_tier: Option<String>,
    /// Server-side web search calls the answer reports (Anthropic's
    /// `usage.server_tool_use.web_search_requests`), billed per call.
    #[serde(default)]
    pub web_search_calls: u32,
}

fn one() -> u32 {
    1
}

/// The one definition of a failed request, as SQL over the `requests` columns: no upstream
/// answer, an HTTP error, or an error text (a stream that broke, an error event inside a 200).
/// [`Record::is_error`] is the same rule in Rust; the dashboard, the rollups and the budgets'
/// rules all use one of the two.
pub const IS_ERROR_SQL: &str = "(status = 0 OR status >= 400 OR error IS NOT NULL)";

/// [`IS_ERROR_SQL`] over a record's parts, for readers that hold only those.
pub fn is_error(status: u16, has_error: bool) -> bool {
    status == 0 || status >= 400 || has_error
}

impl Record {
    /// A record of a request that has just arrived: nothing known yet but its id and start
    /// time. Status 0 (no upstream answer yet), one attempt, no usage, no cost, no tags. Every
    /// record is built from this, so a new field needs a default in one place only.
    pub fn new(request_id: Uuid, ts: i64) -> Self {
        Self {
            request_id,
            ts,
            provider: String::new(),
            endpoint: String::new(),
            method: String::new(),
            model: None,
            response_model: None,
            status: 0,
            stream: false,
            latency_ms: 0,
            ttft_ms: None,
            tokens: None,
            tokens_estimated: false,
            cost_usd: None,
            user_id: None,
            session_id: None,
            session_path: None,
            session_name: None,
            properties: BTreeMap::new(),
            cache_status: CacheStatus::None,
            error: None,
            request_bytes: 0,
            response_bytes: 0,
            api_key_hint: None,
            provider_request_id: None,
            request_body: None,
            response_body: None,
            request_body_truncated: false,
            response_body_truncated: false,
            router: None,
            attempts: 1,
            parent_request_id: None,
            cost_saved_usd: None,
            refusal: None,
            key_id: None,
            key_name: None,
            upstream_request_body: None,
            upstream_response_body: None,
            service_tier: None,
            web_search_calls: 0,
        }
    }

    /// Whether this request failed; see [`IS_ERROR_SQL`].
    pub fn is_error(&self) -> bool {
        is_error(self.status, self.error.is_some())
    }

    /// Approximate heap size, used for byte-based batching and metrics.
    pub fn approx_bytes(&self) -> usize {
        fn s(o: &Option<String>) -> usize {
            o.as_ref().map_or(0, String::len)
        }
        256 + self.provider.len()
            + self.endpoint.len()
            + s(&self.model)
            + s(&self.response_model)
            + s(&self.user_id)
            + s(&self.session_id)
            + s(&self.session_path)
            + s(&self.session_name)
            + self
                .properties
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>()
            + s(&self.error)
            + s(&self.router)
            + s(&self.refusal)
            + s(&self.key_id)
            + s(&self.key_name)
            + s(&self.request_body)
            + s(&self.response_body)
            + s(&self.upstream_request_body)
            + s(&self.upstream_response_body)
            + s(&self.service_tier)
    }
}
