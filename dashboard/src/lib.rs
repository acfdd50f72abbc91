//! Tally's dashboard server: server-rendered pages, health, Prometheus metrics and the JSON
//! API over the store.
//!
//! [`app`] builds the axum `Router` from an [`AppState`]; `tally` serves it on the dashboard
//! port. The layers, top to bottom:
//! - [`pages`] renders HTML (askama templates in `templates/`, SVG from [`chart`]) and
//!   [`api`] answers JSON, both from the same view functions in [`views`];
//! - [`query`] turns a URL query into a time range and filters (the URL is the whole state);
//! - [`store`] holds every query, one module per store, behind one [`store::Reader`]; SQLite
//!   queries run on blocking threads so a slow scan never stalls the runtime.
//!
//! Pages need no JavaScript and load nothing from outside the binary.
#![deny(missing_docs)]

pub mod admin;
pub mod api;
pub mod auth;
pub mod chart;
mod error;
pub mod format;
pub mod pages;
pub mod query;
pub mod store;
pub mod views;

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use prometheus_client::registry::Registry;
use tally_ingest::metrics::IngestMetrics;

pub use auth::Auth;
pub use error::ApiError;
use store::Reader;

/// Shared state of every dashboard handler.
#[derive(Clone)]
pub struct AppState {
    /// The store's read side.
    pub reader: Reader,
    /// Every metric of the process, rendered by `/metrics`.
    pub registry: Arc<Registry>,
    /// Live ingest counters, for the overview's dropped/spooled warning.
    pub ingest: Option<IngestMetrics>,
    /// Required credential; `None` leaves the dashboard open (loopback only, unless
    /// `allow_public`).
    pub auth: Option<Arc<Auth>>,
    /// Budgets and alerts, when any are configured.
    pub alerts: Option<Arc<tally_budgets::Alerts>>,
    /// The admin API over Tally keys; absent, its routes are not served.
    pub keys: Option<Arc<admin::KeysAdmin>>,
}

/// The dashboard's routes. Everything but `/healthz` sits behind [`auth::require`].
pub fn app(state: AppState) -> Router {
    let auth = state.auth.clone();
    let protected = Router::new()
        .route("/", get(pages::overview))
        .route("/requests", get(pages::requests))
        .route("/requests/{id}", get(pages::request))
        .route("/sessions", get(pages::sessions))
        .route("/sessions/{id}", get(pages::session))
        .route("/users", get(pages::users))
        .route("/users/{id}", get(pages::user))
        .route("/models", get(pages::models))
        .route("/properties", get(pages::properties))
        .route("/keys", get(pages::keys))
        .route("/budgets", get(pages::budgets))
        .route("/reconcile", get(pages::reconcile))
        .route("/assets/{name}", get(pages::asset))
        .route("/metrics", get(metrics))
        .route("/api/requests", get(api::list_requests))
        .route("/api/requests/{id}", get(api::get_request))
        .route("/api/overview", get(api::overview))
        .route("/api/models", get(api::models))
        .route("/api/sessions", get(api::sessions))
        .route("/api/sessions/{id}", get(api::session))
        .route("/api/users", get(api::users))
        .route("/api/users/{id}", get(api::user))
        .route("/api/properties", get(api::properties))
        .route("/api/keys", get(api::keys))
        .route("/api/budgets", get(api::budgets))
        .route("/api/reconcile", get(api::reconcile))
        .route_layer(axum::middleware::from_fn_with_state(auth, auth::require));
    let admin = state.keys.clone();
    let app = Router::new()
        .route("/healthz", get(healthz))
        .merge(protected)
        .with_state(state);
    match admin {
        // Outside the dashboard's guard: the admin API has its own token.
        Some(a) => app.merge(admin::routes(a)),
        None => app,
    }
}

async fn healthz(State(state): State<AppState>) -> impl IntoResponse {
    match state.reader.ping().await {
        Ok(()) => (StatusCode::OK, "ok\n"),
        Err(e) => {
            tracing::warn!(error = %e, "health check: store unreadable");
            (StatusCode::SERVICE_UNAVAILABLE, "store unreadable\n")
        }
    }
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let mut out = String::new();
    match prometheus_client::encoding::text::encode(&mut out, &state.registry) {
        Ok(()) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            out,
        ),
        Err(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain")],
            "metrics encoding failed\n".to_owned(),
        ),
    }
}
