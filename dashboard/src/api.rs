//! The JSON API: requests (the contract in the design brief) and one endpoint per dashboard
//! page, each returning the numbers that page shows.

use std::collections::BTreeMap;

use axum::extract::{Path, Query, State};
use axum::response::IntoResponse;
use axum::Json;
use serde_json::{json, Value};

use crate::error::ApiError;
use crate::format::now_ms;
use crate::query::{parse_filter, ViewQuery};
use crate::store::GroupBy;
use crate::views::record_json;
use crate::{views, AppState};

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

/// `GET /api/keys`.
pub async fn keys(
    State(state): State<AppState>,
    Query(q): Query<BTreeMap<String, String>>,
) -> Result<Json<views::KeysView>, ApiError> {
    let v = ViewQuery::parse(&q, &[], now_ms())?;
    Ok(Json(views::keys(&state.reader, &v).await?))
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
/// `GET /api/budgets`: budgets with live spend, projections and exhaustion, and the newest
/// fired alerts with their deliveries.
pub async fn budgets(State(state): State<AppState>) -> Result<Json<views::BudgetsView>, ApiError> {
    Ok(Json(
        views::budgets(state.alerts.as_deref(), now_ms()).await?,
    ))
}

/// `GET /api/reconcile`: each provider's newest `tally reconcile` report.
pub async fn reconcile(
    State(state): State<AppState>,
) -> Result<Json<views::ReconcileView>, ApiError> {
    Ok(Json(views::reconcile(&state.reader).await?))
}
