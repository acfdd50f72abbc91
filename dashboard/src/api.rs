//! The JSON API: requests (the contract in the design brief) and one endpoint per dashboard
//! page, each returning the numbers that page shows.

use std::collections::BTreeMap;

use axum::extract::{Path, Query, State};
use axum::response::IntoResponse;
use axum::Json;
use serde_json::{json, Value};
use tally_ingest::Record;

use crate::error::ApiError;
use crate::query::{parse_filter, ViewQuery};
use crate::store::GroupBy;
use crate::{views, AppState};

/// Milliseconds since the epoch as RFC 3339 UTC with milliseconds: `2026-11-22T02:31:10.123Z`.
pub fn format_ts(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
        .unwrap_or_default()
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
        "router": r.router,
        "attempts": r.attempts,
        "parent_request_id": r.parent_request_id,
        "cost_saved_usd": r.cost_saved_usd,
    });
    if with_bodies {
        if let Some(o) = v.as_object_mut() {
            o.insert("request_body".into(), r.request_body.clone().into());
            o.insert("response_body".into(), r.response_body.clone().into());
        }
    }
    v
}

/// `GET /api/requests`.
pub async fn list_requests(
    State(state): State<AppState>,
    Query(q): Query<BTreeMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    // The contract's endpoint has no default time range; `range` narrows it when given.
    let filter = if q.contains_key("range") {
        ViewQuery::parse(&q, &[], now_ms())?.filter
    } else {
        parse_filter(&q, &[], &[])?
    };
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

/// `GET /api/overview`: the overview page's numbers.
pub async fn overview(
    State(state): State<AppState>,
    Query(q): Query<BTreeMap<String, String>>,
) -> Result<axum::response::Response, ApiError> {
    let v = ViewQuery::parse(&q, &[], now_ms())?;
    match views::overview(&state.reader, &v, state.ingest.as_ref()).await {
        Ok(o) => Ok(Json(o).into_response()),
        // The store is down: the error still carries what the ingest side knows.
        Err(e @ ApiError::Store(_)) => {
            let (status, message) = e.status_and_message();
            let ingest = views::IngestHealth::read(state.ingest.as_ref());
            Ok((
                status,
                Json(json!({ "error": { "message": message }, "ingest": ingest })),
            )
                .into_response())
        }
        Err(e) => Err(e),
    }
}

/// `GET /api/models`: models and providers side by side.
pub async fn models(
    State(state): State<AppState>,
    Query(q): Query<BTreeMap<String, String>>,
) -> Result<Json<views::ModelsView>, ApiError> {
    let v = ViewQuery::parse(&q, &[], now_ms())?;
    Ok(Json(views::models(&state.reader, &v).await?))
}

/// `GET /api/sessions`.
pub async fn sessions(
    State(state): State<AppState>,
    Query(q): Query<BTreeMap<String, String>>,
) -> Result<Json<views::ListView>, ApiError> {
    let v = ViewQuery::parse(&q, &[], now_ms())?;
    Ok(Json(
        views::list(&state.reader, &v, GroupBy::Session).await?,
    ))
}

/// `GET /api/sessions/<id>`.
pub async fn session(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<views::SessionView>, ApiError> {
    Ok(Json(views::session(&state.reader, &id).await?))
}

/// `GET /api/users`.
pub async fn users(
    State(state): State<AppState>,
    Query(q): Query<BTreeMap<String, String>>,
) -> Result<Json<views::ListView>, ApiError> {
    let v = ViewQuery::parse(&q, &[], now_ms())?;
    Ok(Json(views::list(&state.reader, &v, GroupBy::User).await?))
}

/// `GET /api/users/<id>`.
pub async fn user(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<BTreeMap<String, String>>,
) -> Result<Json<views::UserView>, ApiError> {
    let v = ViewQuery::parse(&q, &[], now_ms())?;
    Ok(Json(views::user(&state.reader, &v, &id).await?))
}

/// `GET /api/properties?key=`.
pub async fn properties(
    State(state): State<AppState>,
    Query(q): Query<BTreeMap<String, String>>,
) -> Result<Json<views::PropertiesView>, ApiError> {
    let v = ViewQuery::parse(&q, &["key"], now_ms())?;
    Ok(Json(views::properties(&state.reader, &v).await?))
}

/// The wall clock, ms since the epoch.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// `GET /api/budgets`: budgets with live spend, projections and exhaustion, and the newest
/// fired alerts with their deliveries.
pub async fn budgets(State(state): State<AppState>) -> Result<Json<views::BudgetsView>, ApiError> {
    Ok(Json(
        views::budgets(state.alerts.as_deref(), now_ms()).await?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ts_format() {
        assert_eq!(format_ts(1_795_305_600_123), "2026-11-22T00:00:00.123Z");
    }
}
