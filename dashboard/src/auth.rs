//! Dashboard authentication: a bearer token or HTTP basic auth, checked on every route but
//! `/healthz`. Browsers get the basic-auth prompt (`WWW-Authenticate`), so no login page or
//! session cookie is needed. Secrets are compared in constant time.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use subtle::ConstantTimeEq;

/// The configured credential.
#[derive(Clone)]
pub enum Auth {
    /// `Authorization: Bearer <token>`, or basic auth with any user name and the token as the
    /// password.
    Token(String),
    /// Basic auth with exactly this user and password.
    Basic {
        /// User name.
        user: String,
        /// Password.
        password: String,
    },
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Auth::Token(_) => f.write_str("Auth::Token(…)"),
            Auth::Basic { user, .. } => write!(f, "Auth::Basic({user}, …)"),
        }
    }
}

fn same(a: &str, b: &str) -> bool {
    a.as_bytes().ct_eq(b.as_bytes()).into()
}

impl Auth {
    /// Whether an `Authorization` header value carries this credential.
    pub fn allows(&self, authorization: &str) -> bool {
        let (scheme, rest) = authorization.trim().split_once(' ').unwrap_or(("", ""));
        let rest = rest.trim();
        if scheme.eq_ignore_ascii_case("bearer") {
            return matches!(self, Auth::Token(t) if same(rest, t));
        }
        if !scheme.eq_ignore_ascii_case("basic") {
            return false;
        }
        let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(rest) else {
            return false;
        };
        let Ok(decoded) = String::from_utf8(decoded) else {
            return false;
        };
        let Some((u, p)) = decoded.split_once(':') else {
            return false;
        };
        match self {
            Auth::Token(t) => same(p, t),
            Auth::Basic { user, password } => same(u, user) & same(p, password),
        }
    }
}

/// Middleware: passes the request on when no auth is configured or the credential matches,
/// else answers 401 with a basic-auth challenge.
pub async fn require(State(auth): State<Option<Arc<Auth>>>, req: Request, next: Next) -> Response {
    let Some(auth) = auth else {
        return next.run(req).await;
    };
    let ok = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| auth.allows(v));
    if ok {
        return next.run(req).await;
    }
    (
        StatusCode::UNAUTHORIZED,
        [(
            header::WWW_AUTHENTICATE,
            "Basic realm=\"Tally\", charset=\"UTF-8\"",
        )],
        "authentication required\n",
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(s: &str) -> String {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(s)
        )
    }

    #[test]
    fn credentials() {
        let t = Auth::Token("s3cret".into());
        assert!(t.allows("Bearer s3cret"));
        assert!(t.allows(&basic("anyone:s3cret")));
        assert!(!t.allows("Bearer s3cre"));
        assert!(!t.allows(&basic("s3cret:")));
        assert!(!t.allows("Basic !!!"));
        assert!(!t.allows(""));
        let b = Auth::Basic {
            user: "ops".into(),
            password: "pw".into(),
        };
        assert!(b.allows(&basic("ops:pw")));
        assert!(!b.allows(&basic("ops:pX")));
        assert!(!b.allows(&basic("opz:pw")));
        assert!(!b.allows("Bearer pw"));
    }
}
