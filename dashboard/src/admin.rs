//! The admin API: the `tally keys` operations over HTTP, on the dashboard port.
//!
//! It takes its own token (`[auth] admin_token`), distinct from the dashboard's read token:
//! whoever may read the dashboard must not thereby mint keys. Without an admin token it
//! answers only on a loopback listen; on any other it refuses everything with 403.
//!
//! | route | does |
//! |---|---|
//! | `GET /api/admin/keys` | every key (never a hash or a secret) |
//! | `POST /api/admin/keys` | creates one: the body is `tally keys create`'s options as JSON; answers the secret once |
//! | `GET /api/admin/keys/{id}` | one key, by id or name |
//! | `POST /api/admin/keys/{id}/revoke` | revokes it |
//! | `POST /api/admin/keys/{id}/rotate` | a new secret; `{"grace_secs": N}` keeps the old one valid N seconds |

use std::sync::Arc;

use axum::extract::{Path, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use subtle::ConstantTimeEq;
use tally_keys::admin::{Issued, KeyView};
use tally_keys::{Admin, AdminError, CreateOptions, Keyring};

/// What the admin API needs.
pub struct KeysAdmin {
    /// The operations.
    pub admin: Admin,
    /// The keyring of this process, reloaded after each change so this replica applies it
    /// at once (others within their refresh interval).
    pub keyring: Arc<Keyring>,
    /// `[auth] admin_token`.
    pub token: Option<String>,
    /// Whether the dashboard listens on loopback (the API is open there without a token).
    pub loopback: bool,
    /// Grace period of a rotation when the request names none, ms.
    pub default_grace_ms: i64,
}

/// The admin routes, with their own guard.
pub fn routes(admin: Arc<KeysAdmin>) -> Router {
    Router::new()
        .route("/api/admin/keys", get(list).post(create))
        .route("/api/admin/keys/{id}", get(show))
        .route("/api/admin/keys/{id}/revoke", post(revoke))
        .route("/api/admin/keys/{id}/rotate", post(rotate))
        .route_layer(axum::middleware::from_fn_with_state(admin.clone(), guard))
        .with_state(admin)
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (
        status,
        Json(json!({ "error": { "message": message.into() } })),
    )
        .into_response()
}

async fn guard(State(a): State<Arc<KeysAdmin>>, req: Request, next: Next) -> Response {
    match &a.token {
        Some(token) => {
            let presented = req
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| {
                    v.strip_prefix("Bearer ")
                        .or_else(|| v.strip_prefix("bearer "))
                })
                .unwrap_or("");
            if !bool::from(presented.trim().as_bytes().ct_eq(token.as_bytes())) {
                return error(
                    StatusCode::UNAUTHORIZED,
                    "the admin API needs Authorization: Bearer <auth.admin_token>",
                );
            }
        }
        None if !a.loopback => {
            return error(
                StatusCode::FORBIDDEN,
                "the admin API is off: the dashboard listens beyond loopback and \
                 auth.admin_token is not set",
            )
        }
        None => {}
    }
    next.run(req).await
}

fn failed(e: AdminError) -> Response {
    let status = match &e {
        AdminError::Invalid(_) => StatusCode::BAD_REQUEST,
        AdminError::NotFound(_) => StatusCode::NOT_FOUND,
        AdminError::NameTaken(_) => StatusCode::CONFLICT,
        _ => {
            tracing::error!(error = %e, "admin API: key operation failed");
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the key store could not answer; see Tally's log",
            );
        }
    };
    error(status, e.to_string())
}

/// Applies a change to this replica's keyring now.
async fn reload(a: &KeysAdmin) {
    if let Err(e) = a.keyring.refresh(a.admin.store()).await {
        tracing::warn!(error = %e, "admin API: reloading the keys failed; the next refresh will");
    }
}

fn issued(i: &Issued) -> serde_json::Value {
    json!({ "secret": i.secret.text, "key": KeyView::of(&i.key, tally_keys::now_ms()) })
}

async fn list(State(a): State<Arc<KeysAdmin>>) -> Response {
    match a.admin.list().await {
        Ok(keys) => {
            let now = tally_keys::now_ms();
            let views: Vec<KeyView> = keys.iter().map(|k| KeyView::of(k, now)).collect();
            Json(json!({ "keys": views })).into_response()
        }
        Err(e) => failed(e),
    }
}

async fn show(State(a): State<Arc<KeysAdmin>>, Path(id): Path<String>) -> Response {
    match a.admin.show(&id).await {
        Ok(k) => Json(KeyView::of(&k, tally_keys::now_ms())).into_response(),
        Err(e) => failed(e),
    }
}

async fn create(State(a): State<Arc<KeysAdmin>>, body: axum::body::Bytes) -> Response {
    let opts: CreateOptions = match serde_json::from_slice(&body) {
        Ok(o) => o,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("invalid key options: {e}")),
    };
    match a.admin.create(&opts).await {
        Ok(i) => {
            reload(&a).await;
            tracing::info!(key_id = %i.key.id, name = %i.key.name, "admin API: key created");
            (StatusCode::CREATED, Json(issued(&i))).into_response()
        }
        Err(e) => failed(e),
    }
}

async fn revoke(State(a): State<Arc<KeysAdmin>>, Path(id): Path<String>) -> Response {
    match a.admin.revoke(&id).await {
        Ok(k) => {
            reload(&a).await;
            tracing::info!(key_id = %k.id, name = %k.name, "admin API: key revoked");
            Json(KeyView::of(&k, tally_keys::now_ms())).into_response()
        }
        Err(e) => failed(e),
    }
}

async fn rotate(
    State(a): State<Arc<KeysAdmin>>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    #[derive(serde::Deserialize, Default)]
    #[serde(deny_unknown_fields)]
    struct Rotate {
        grace_secs: Option<u64>,
    }
    let r: Rotate = if body.iter().all(u8::is_ascii_whitespace) {
        Rotate::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(r) => r,
            Err(e) => return error(StatusCode::BAD_REQUEST, format!("invalid rotate body: {e}")),
        }
    };
    let grace = r
        .grace_secs
        .map_or(a.default_grace_ms, |s| s.min(366 * 86_400) as i64 * 1000);
    match a.admin.rotate(&id, grace).await {
        Ok(i) => {
            reload(&a).await;
            tracing::info!(key_id = %i.key.id, name = %i.key.name, "admin API: key rotated");
            Json(issued(&i)).into_response()
        }
        Err(e) => failed(e),
    }
}
