use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::record::{CacheStatus, Record, Tokens};

/// The `requests` table's row, in column order, as the `clickhouse` crate encodes it
/// (RowBinary; validated against the table's schema on first insert).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, clickhouse::Row)]
pub struct RequestRow {
    #[serde(with = "clickhouse::serde::uuid")]
    request_id: Uuid,
    #[serde(with = "clickhouse::serde::chrono::datetime64::millis")]
    ts: DateTime<Utc>,
    provider: String,
    endpoint: String,
    method: String,
    model: Option<String>,
    response_model: Option<String>,
    status: u16,
    stream: bool,
    latency_ms: u64,
    ttft_ms: Option<u64>,
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
    cache_read_tokens: Option<u64>,
    cache_write_tokens: Option<u64>,
    reasoning_tokens: Option<u64>,
    total_tokens: Option<u64>,
    tokens_estimated: bool,
    cost_usd: Option<f64>,
    user_id: Option<String>,
    session_id: Option<String>,
    session_path: Option<String>,
    session_name: Option<String>,
    properties: Vec<(String, String)>,
    cache_status: String,
    error: Option<String>,
    request_bytes: u64,
    response_bytes: u64,
    api_key_hint: Option<String>,
    provider_request_id: Option<String>,
    request_body: Option<String>,
    response_body: Option<String>,
    request_body_truncated: bool,
    response_body_truncated: bool,
    router: Option<String>,
    attempts: u32,
    #[serde(with = "clickhouse::serde::uuid::option")]
    parent_request_id: Option<Uuid>,
    cost_saved_usd: Option<f64>,
    refusal: Option<String>,
    key_id: Option<String>,
    key_name: Option<String>,
    upstream_request_body: Option<String>,
    upstream_response_body: Option<String>,
    cache_write_1h_tokens: Option<u64>,
    service_tier: Option<String>,
    web_search_calls: u32,
}

impl From<&Record> for RequestRow {
    fn from(r: &Record) -> Self {
        let t = r.tokens;
        Self {
            request_id: r.request_id,
            ts: DateTime::from_timestamp_millis(r.ts).unwrap_or_default(),
            provider: r.provider.clone(),
            endpoint: r.endpoint.clone(),
            method: r.method.clone(),
            model: r.model.clone(),
            response_model: r.response_model.clone(),
            status: r.status,
            stream: r.stream,
            latency_ms: r.latency_ms,
            ttft_ms: r.ttft_ms,
            prompt_tokens: t.map(|t| t.prompt),
            completion_tokens: t.map(|t| t.completion),
            cache_read_tokens: t.map(|t| t.cache_read),
            cache_write_tokens: t.map(|t| t.cache_write),
            reasoning_tokens: t.map(|t| t.reasoning),
            total_tokens: t.map(|t| t.total()),
            tokens_estimated: r.tokens_estimated,
            cost_usd: r.cost_usd,
            user_id: r.user_id.clone(),
            session_id: r.session_id.clone(),
            session_path: r.session_path.clone(),
            session_name: r.session_name.clone(),
            properties: r
                .properties
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            cache_status: r.cache_status.as_str().to_owned(),
            error: r.error.clone(),
            request_bytes: r.request_bytes,
            response_bytes: r.response_bytes,
            api_key_hint: r.api_key_hint.clone(),
            provider_request_id: r.provider_request_id.clone(),
            request_body: r.request_body.clone(),
            response_body: r.response_body.clone(),
            request_body_truncated: r.request_body_truncated,
            response_body_truncated: r.response_body_truncated,
            router: r.router.clone(),
            attempts: r.attempts,
            parent_request_id: r.parent_request_id,
            cost_saved_usd: r.cost_saved_usd,
            refusal: r.refusal.clone(),
            key_id: r.key_id.clone(),
            key_name: r.key_name.clone(),
            upstream_request_body: r.upstream_request_body.clone(),
            upstream_response_body: r.upstream_response_body.clone(),
            cache_write_1h_tokens: r.tokens.map(|t| t.cache_write_1h),
            service_tier: r.service_tier.clone(),
            web_search_calls: r.web_search_calls,
        }
    }
}

impl From<RequestRow> for Record {
    fn from(r: RequestRow) -> Self {
        let tokens = Tokens::from_columns(
            r.prompt_tokens,
            r.completion_tokens,
            r.cache_read_tokens,
            r.cache_write_tokens,
            r.reasoning_tokens,
        )
        .map(|t| Tokens {
            cache_write_1h: r.cache_write_1h_tokens.unwrap_or(0),
            ..t
        });
        Record {
            request_id: r.request_id,
            ts: r.ts.timestamp_millis(),
            provider: r.provider,
            endpoint: r.endpoint,
            method: r.method,
            model: r.model,
            response_model: r.response_model,
            status: r.status,
            stream: r.stream,
            latency_ms: r.latency_ms,
            ttft_ms: r.ttft_ms,
            tokens,
            tokens_estimated: r.tokens_estimated,
            cost_usd: r.cost_usd,
            user_id: r.user_id,
            session_id: r.session_id,
            session_path: r.session_path,
            session_name: r.session_name,
            properties: r.properties.into_iter().collect(),
            cache_status: CacheStatus::parse(&r.cache_status),
            error: r.error,
            request_bytes: r.request_bytes,
            response_bytes: r.response_bytes,
            api_key_hint: r.api_key_hint,
            provider_request_id: r.provider_request_id,
            request_body: r.request_body,
            response_body: r.response_body,
            request_body_truncated: r.request_body_truncated,
            response_body_truncated: r.response_body_truncated,
            router: r.router,
            attempts: r.attempts,
            parent_request_id: r.parent_request_id,
            cost_saved_usd: r.cost_saved_usd,
            refusal: r.refusal,
            key_id: r.key_id,
            key_name: r.key_name,
            upstream_request_body: r.upstream_request_body,
            upstream_response_body: r.upstream_response_body,
            service_tier: r.service_tier,
            web_search_calls: r.web_search_calls,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trips_through_the_row() {
        let r = crate::tests::record(7);
        assert_eq!(Record::from(RequestRow::from(&r)), r);
    }
}
