//! Tally's dashboard server: health, Prometheus metrics and the JSON API over the store.
//!
//! [`app`] builds the axum `Router` from an [`AppState`]; `tally` serves it on the dashboard
//! port. All store reads go through [`store`], one module per store, and run on blocking
//! threads so a slow query never stalls the runtime. The server-rendered pages come with the
//! dashboard issue; this crate already holds the read model they will use.
#![deny(missing_docs)]

pub mod api;
mod error;
pub mod store;

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use prometheus_client::registry::Registry;

pub use error::ApiError;
use store::Reader;

/// Shared state of every dashboard handler.
#[derive(Clone)]
pub struct AppState {
    /// The store's read side.
    pub reader: Reader,
    /// Every metric of the process, rendered by `/metrics`.
    pub registry: Arc<Registry>,
}

/// The dashboard's routes.
pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/api/requests", get(api::list_requests))
        .route("/api/requests/{id}", get(api::get_request))
        .with_state(state)
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
