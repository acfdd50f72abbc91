//! The JSON API: `GET /api/requests` and `GET /api/requests/<id>`.

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::Json;
use serde_json::{json, Value};
use tally_ingest::Record;

use crate::error::ApiError;
use crate::store::{Cursor, RequestFilter, StatusFilter};
use crate::AppState;

/// Page size when `limit` is unset.
pub const DEFAULT_LIMIT: usize = 50;
/// Largest page a client may ask for.
pub const MAX_LIMIT: usize = 1000;

/// Milliseconds since the epoch as RFC 3339 UTC with milliseconds: `2026-11-22T02:31:10.123Z`.
pub fn format_ts(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
        .unwrap_or_default()
}

/// Accepts RFC 3339 (`2026-11-22T00:00:00Z`) or milliseconds since the epoch.
fn parse_time(name: &str, v: &str) -> Result<i64, ApiError> {
    if let Ok(ms) = v.parse::<i64>() {
        return Ok(ms);
    }
    chrono::DateTime::parse_from_rfc3339(v)
        .map(|t| t.timestamp_millis())
        .map_err(|_| {
            ApiError::BadRequest(format!(
                "{name}: expected RFC 3339 time or epoch milliseconds, got {v:?}"
            ))
        })
}

/// A record as the API shows it: the contract's flat field names.
pub fn record_json(r: &Record, with_bodies: bool) -> Value {
    let t = r.tokens;
    let mut v = json!({
        "request_id": r.request_id.to_string(),
        "ts": format_ts(r.ts),
        "provider": r.provider,
        "endpoint": r.endpoint,
        "method": r.method,
        "model": r.model,
        "response_model": r.response_model,
        "status": r.status,
        "stream": r.stream,
        "latency_ms": r.latency_ms,
        "ttft_ms": r.ttft_ms,
        "prompt_tokens": t.map(|t| t.prompt),
        "completion_tokens": t.map(|t| t.completion),
        "cache_read_tokens": t.map(|t| t.cache_read),
        "cache_write_tokens": t.map(|t| t.cache_write),
        "reasoning_tokens": t.map(|t| t.reasoning),
        "total_tokens": t.map(|t| t.total()),
        "tokens_estimated": r.tokens_estimated,
        "cost_usd": r.cost_usd,
        "user_id": r.user_id,
        "session_id": r.session_id,
        "session_path": r.session_path,
        "session_name": r.session_name,
        "properties": r.properties,
        "cache_status": r.cache_status.as_str(),
        "error": r.error,
        "request_bytes": r.request_bytes,
        "response_bytes": r.response_bytes,
        "api_key_hint": r.api_key_hint,
        "provider_request_id": r.provider_request_id,
        "request_body_truncated": r.request_body_truncated,
        "response_body_truncated": r.response_body_truncated,
    });
    if with_bodies {
        if let Some(o) = v.as_object_mut() {
            o.insert("request_body".into(), r.request_body.clone().into());
            o.insert("response_body".into(), r.response_body.clone().into());
        }
    }
    v
}

fn filter_from_query(q: &HashMap<String, String>) -> Result<RequestFilter, ApiError> {
    let mut f = RequestFilter {
        limit: DEFAULT_LIMIT,
        ..RequestFilter::default()
    };
    let text = |v: &String| (!v.is_empty()).then(|| v.clone());
    for (k, v) in q {
        match k.as_str() {
            "limit" => {
                f.limit = v
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=MAX_LIMIT).contains(n))
                    .ok_or_else(|| {
                        ApiError::BadRequest(format!("limit: expected 1..={MAX_LIMIT}, got {v:?}"))
                    })?
            }
            "cursor" => {
                f.cursor = Some(Cursor::decode(v).ok_or_else(|| {
                    ApiError::BadRequest("cursor: not a cursor from next_cursor".into())
                })?)
            }
            "from" => f.from_ms = Some(parse_time("from", v)?),
            "to" => f.to_ms = Some(parse_time("to", v)?),
            "user_id" => f.user_id = text(v),
            "session_id" => f.session_id = text(v),
            "model" => f.model = text(v),
            "provider" => f.provider = text(v),
            "status" => {
                f.status = Some(StatusFilter::parse(v).ok_or_else(|| {
                    ApiError::BadRequest(format!(
                        "status: expected a code like 429 or a class like 5xx, got {v:?}"
                    ))
                })?)
            }
            other => {
                if let Some(name) = other.strip_prefix("property.") {
                    if name.is_empty() {
                        return Err(ApiError::BadRequest("property.: name is empty".into()));
                    }
                    f.properties.push((name.to_ascii_lowercase(), v.clone()));
                } else {
                    return Err(ApiError::BadRequest(format!("unknown parameter {other:?}")));
                }
            }
        }
    }
    f.properties.sort();
    Ok(f)
}

/// `GET /api/requests`.
pub async fn list_requests(
    State(state): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let filter = filter_from_query(&q)?;
    let page = state.reader.list(filter).await?;
    let requests: Vec<Value> = page.records.iter().map(|r| record_json(r, false)).collect();
    Ok(Json(json!({
        "requests": requests,
        "next_cursor": page.next_cursor.map(|c| c.encode()),
    })))
}

/// `GET /api/requests/<id>`.
pub async fn get_request(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = uuid::Uuid::parse_str(&id)
        .map_err(|_| ApiError::BadRequest(format!("{id:?} is not a request id")))?
        .to_string();
    match state.reader.get(id.clone()).await? {
        Some(r) => Ok(Json(record_json(&r, true))),
        None => Err(ApiError::NotFound(format!("no request {id}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parsing() {
        let q: HashMap<String, String> = [
            ("limit", "10"),
            ("status", "5xx"),
            ("from", "2026-11-22T00:00:00Z"),
            ("property.Env", "prod"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let f = filter_from_query(&q).expect("valid");
        assert_eq!(f.limit, 10);
        assert_eq!(f.status, Some(StatusFilter::Class(5)));
        assert_eq!(f.from_ms, Some(1_795_305_600_000));
        assert_eq!(f.properties, vec![("env".into(), "prod".into())]);
        for bad in [
            ("limit", "0"),
            ("status", "abc"),
            ("from", "yesterday"),
            ("nope", "1"),
            ("cursor", "x"),
        ] {
            let q: HashMap<String, String> = [(bad.0.to_string(), bad.1.to_string())].into();
            assert!(filter_from_query(&q).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn ts_format() {
        assert_eq!(format_ts(1_795_305_600_123), "2026-11-22T00:00:00.123Z");
    }
}
