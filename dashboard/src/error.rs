//! API errors: bad input keeps its status and message; internal errors show generic text and
//! are logged here.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::store::StoreError;

/// What a handler can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The client asked for something malformed.
    #[error("{0}")]
    BadRequest(String),
    /// The thing asked for does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The store could not answer.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The alert log could not be read.
    #[error(transparent)]
    Alerts(#[from] tally_budgets::store::StoreError),
}

impl ApiError {
    /// The HTTP status and the message a client may see (internal detail is logged instead).
    pub fn status_and_message(&self) -> (StatusCode, String) {
        match self {
            ApiError::BadRequest(m) => (StatusCode::BAD_REQUEST, m.clone()),
            ApiError::NotFound(m) => (StatusCode::NOT_FOUND, m.clone()),
            ApiError::Store(_) | ApiError::Alerts(_) => {
                tracing::error!(error = %self, "dashboard request failed");
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the store could not answer; see Tally's log".to_owned(),
                )
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, message) = self.status_and_message();
        (status, Json(json!({ "error": { "message": message } }))).into_response()
    }
}
