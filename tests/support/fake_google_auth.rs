//! The fake upstream's Google OAuth token endpoint (`POST /token`) and its check of the tokens
//! it minted, as developers.google.com/identity/protocols/oauth2/service-account describes the
//! exchange: a form with `grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer` and an RS256
//! `assertion` naming the account, the cloud-platform scope and this endpoint. The assertion's
//! signature is checked against the public half of `tests/fixtures/vertex`'s key.
//!
//! Minted tokens (`ya29.fake-minted-<n>`) live `expires_in` seconds (the `?expires_in=` of the
//! token URL, else 3599); a Vertex request presenting one that has expired is refused with
//! Google's 401. Tokens the fake did not mint (a client's own) are accepted as they are.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine;
use http::{request::Parts, Response, StatusCode};
use serde_json::{json, Value};

use super::fake_upstream::{full, Body};

const MINTED_PREFIX: &str = "ya29.fake-minted-";
static MINTED: LazyLock<Mutex<HashMap<String, Instant>>> = LazyLock::new(Default::default);
static NEXT: AtomicU64 = AtomicU64::new(1);

/// The e-mail of the test service account.
pub const ACCOUNT: &str = "tally-test@fake-project.iam.gserviceaccount.com";

/// A service-account key file for the test key, its `token_uri` at `token_url`.
pub fn key_file(token_url: &str) -> String {
    let pem = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/vertex/test-service-account-key.pem"),
    )
    .expect("the test key");
    json!({"type": "service_account", "project_id": "fake-project", "private_key_id": "k1",
        "private_key": pem, "client_email": ACCOUNT, "client_id": "1",
        "token_uri": token_url})
    .to_string()
}

/// Whether a path is the token endpoint's.
pub fn serves(path: &str) -> bool {
    path == "/token"
}

/// Answers `POST /token`.
pub fn token(parts: &Parts, body: &[u8]) -> Response<Body> {
    let refuse = |why: &str| {
        full(
            StatusCode::BAD_REQUEST,
            "application/json",
            json!({"error": "invalid_grant", "error_description": why}).to_string(),
        )
    };
    let form: HashMap<String, String> = String::from_utf8_lossy(body)
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| {
            let v = percent_decode(v);
            (k.to_owned(), v)
        })
        .collect();
    if form.get("grant_type").map(String::as_str)
        != Some("urn:ietf:params:oauth:grant-type:jwt-bearer")
    {
        return refuse("unsupported grant_type");
    }
    let Some(jwt) = form.get("assertion") else {
        return refuse("no assertion");
    };
    let pieces: Vec<&str> = jwt.split('.').collect();
    let [head, claims, signature] = pieces[..] else {
        return refuse("the assertion is not a JWT");
    };
    let public = std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/vertex/test-service-account-key.pub.der"),
    )
    .expect("the test public key");
    let key = ring::signature::UnparsedPublicKey::new(
        &ring::signature::RSA_PKCS1_2048_8192_SHA256,
        public,
    );
    let Ok(sig) = B64URL.decode(signature) else {
        return refuse("bad signature encoding");
    };
    if key
        .verify(format!("{head}.{claims}").as_bytes(), &sig)
        .is_err()
    {
        return refuse("Invalid JWT Signature.");
    }
    let decode = |p: &str| -> Value {
        B64URL
            .decode(p)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(Value::Null)
    };
    let (head, claims) = (decode(head), decode(claims));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let url = format!(
        "http://{}{}",
        parts
            .headers
            .get("host")
            .and_then(|h| h.to_str().ok())
            .unwrap_or(""),
        parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("")
    );
    let checks = [
        (head["alg"] == "RS256", "alg must be RS256"),
        (claims["iss"] == ACCOUNT, "unknown issuer"),
        (
            claims["aud"] == url.as_str(),
            "aud must be the token endpoint",
        ),
        (
            claims["scope"]
                .as_str()
                .is_some_and(|s| s.split(' ').any(|s| s.ends_with("/auth/cloud-platform"))),
            "scope must include cloud-platform",
        ),
        (
            claims["exp"]
                .as_u64()
                .is_some_and(|e| e > now && e <= now + 3600 + 5),
            "exp must be within the hour",
        ),
    ];
    if let Some((_, why)) = checks.iter().find(|(ok, _)| !ok) {
        return refuse(why);
    }
    let lifetime: u64 = parts
        .uri
        .query()
        .and_then(|q| q.strip_prefix("expires_in="))
        .and_then(|v| v.parse().ok())
        .unwrap_or(3599);
    let token = format!("{MINTED_PREFIX}{}", NEXT.fetch_add(1, Ordering::Relaxed));
    MINTED.lock().expect("lock").insert(
        token.clone(),
        Instant::now() + Duration::from_secs(lifetime),
    );
    full(
        StatusCode::OK,
        "application/json",
        json!({"access_token": token, "expires_in": lifetime, "token_type": "Bearer"}).to_string(),
    )
}

/// Google's 401 for a minted token that has expired (or that the fake never minted); `None`
/// for a request the fake accepts.
pub fn refuse_expired(parts: &Parts) -> Option<Response<Body>> {
    let auth = parts.headers.get("authorization")?.to_str().ok()?;
    let token = auth.strip_prefix("Bearer ")?;
    if !token.starts_with(MINTED_PREFIX) {
        return None;
    }
    let good = MINTED
        .lock()
        .expect("lock")
        .get(token)
        .is_some_and(|expiry| Instant::now() < *expiry);
    (!good).then(|| {
        full(
            StatusCode::UNAUTHORIZED,
            "application/json",
            json!({"error": {"code": 401, "message": "Request had invalid authentication credentials. Expected OAuth 2 access token.", "status": "UNAUTHENTICATED"}}).to_string(),
        )
    })
}

fn percent_decode(v: &str) -> String {
    percent_encoding::percent_decode_str(&v.replace('+', " "))
        .decode_utf8_lossy()
        .into_owned()
}
