//! A Google service account Tally holds for Vertex AI: the OAuth access tokens it mints from
//! the account's JSON key file, cached until shortly before they expire.
//!
//! The flow is Google's "OAuth 2.0 for server to server applications": a JWT naming the
//! account (`iss`), the scope and the token endpoint (`aud`), signed RS256 with the file's
//! `private_key`, is exchanged at the file's `token_uri` for an access token with an
//! `expires_in`. The signing is `ring`'s (already Tally's TLS crypto); the JWT is three
//! base64url parts and is written here rather than through a JWT crate for that reason.
//!
//! One token serves every request of every event loop; one refresh runs at a time, and a token
//! is replaced when less than a quarter of its life (at most a minute) is left, so requests do
//! not wait on Google while it is still good.

use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine;
use bytes::Bytes;
use http::{HeaderValue, Method, Request, Uri};
use http_body_util::BodyExt;
use ring::signature::{RsaKeyPair, RSA_PKCS1_SHA256};
use serde::Deserialize;

use crate::client::UpstreamClient;

/// What Vertex AI needs.
const SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";

/// How long a minted JWT asks to be good for: Google's maximum.
const ASSERTION_LIFETIME_SECS: u64 = 3600;

/// How long the token endpoint may take.
const TOKEN_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Deserialize)]
struct KeyFile {
    #[serde(rename = "type")]
    kind: Option<String>,
    client_email: String,
    private_key: String,
    private_key_id: Option<String>,
    token_uri: Option<String>,
    project_id: Option<String>,
}

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: String,
    #[serde(default)]
    expires_in: Option<u64>,
}

struct Cached {
    header: HeaderValue,
    refresh_at: Instant,
    expires_at: Instant,
}

/// A service account and its current token; see the module docs.
pub struct ServiceAccount {
    provider: String,
    email: String,
    project_id: Option<String>,
    key_id: Option<String>,
    key: RsaKeyPair,
    token_uri: Uri,
    cached: Mutex<Option<Cached>>,
    refreshing: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for ServiceAccount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceAccount")
            .field("email", &self.email)
            .field("token_uri", &self.token_uri)
            .finish_non_exhaustive()
    }
}

impl ServiceAccount {
    /// Reads a service-account key file. The error names the provider, the setting and the
    /// file, never the key.
    pub fn load(provider: &str, path: &std::path::Path) -> Result<Self, String> {
        let setting = format!(
            "providers.{provider}.service_account_file ({})",
            path.display()
        );
        let text = std::fs::read(path).map_err(|e| format!("{setting} cannot be read: {e}"))?;
        let file: KeyFile = serde_json::from_slice(&text).map_err(|e| {
            // serde's message may quote the input; say where, not what.
            format!(
                "{setting} is not a service-account key file (line {}, column {})",
                e.line(),
                e.column()
            )
        })?;
        if file.kind.as_deref().is_some_and(|k| k != "service_account") {
            return Err(format!(
                "{setting} is not a service-account key (its type is not service_account)"
            ));
        }
        let der = pem_body(&file.private_key)
            .ok_or_else(|| format!("{setting}: private_key is not a PEM PKCS#8 key"))?;
        let key = RsaKeyPair::from_pkcs8(&der)
            .map_err(|e| format!("{setting}: private_key is not a usable RSA key ({e})"))?;
        let token_uri = file
            .token_uri
            .as_deref()
            .unwrap_or("https://oauth2.googleapis.com/token")
            .parse::<Uri>()
            .map_err(|_| format!("{setting}: token_uri is not a URL"))?;
        Ok(Self {
            provider: provider.to_owned(),
            email: file.client_email,
            project_id: file.project_id,
            key_id: file.private_key_id,
            key,
            token_uri,
            cached: Mutex::new(None),
            refreshing: tokio::sync::Mutex::new(()),
        })
    }

    /// The account's e-mail address, the hint a record gets.
    pub fn email(&self) -> &str {
        &self.email
    }

    /// The project the key file names: where the unified API calls Vertex models.
    pub fn project_id(&self) -> Option<&str> {
        self.project_id.as_deref()
    }

    fn current(&self, fresh_only: bool) -> Option<HeaderValue> {
        let now = Instant::now();
        let guard = self.cached.lock().unwrap_or_else(|p| p.into_inner());
        guard
            .as_ref()
            .filter(|c| {
                now < if fresh_only {
                    c.refresh_at
                } else {
                    c.expires_at
                }
            })
            .map(|c| c.header.clone())
    }

    /// An `Authorization` value with a token that is still good, minting one if needed.
    pub async fn authorization(&self, client: &UpstreamClient) -> Result<HeaderValue, String> {
        if let Some(h) = self.current(true) {
            return Ok(h);
        }
        let _one_at_a_time = self.refreshing.lock().await;
        if let Some(h) = self.current(true) {
            return Ok(h);
        }
        match self.mint(client).await {
            Ok(h) => Ok(h),
            // Still valid, just due for refresh: use it, and try again on the next request.
            Err(e) => match self.current(false) {
                Some(h) => {
                    tracing::warn!(provider = %self.provider, error = %e, "could not refresh the service-account token; using the current one");
                    Ok(h)
                }
                None => Err(e),
            },
        }
    }

    async fn mint(&self, client: &UpstreamClient) -> Result<HeaderValue, String> {
        let fail = |why: String| {
            format!(
                "provider {}: no access token for service account {} from {}: {why}",
                self.provider, self.email, self.token_uri
            )
        };
        let assertion = self.assertion().map_err(fail)?;
        let form = format!(
            "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer&assertion={assertion}"
        );
        let mut req = Request::new(crate::phases::send::full(Bytes::from(form)));
        *req.method_mut() = Method::POST;
        *req.uri_mut() = self.token_uri.clone();
        req.headers_mut().insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-www-form-urlencoded"),
        );
        let started = Instant::now();
        let answer = tokio::time::timeout(TOKEN_TIMEOUT, async {
            let resp = client
                .request(req)
                .await
                .map_err(|e| crate::body::error_chain(&e))?;
            let status = resp.status();
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| e.to_string())?
                .to_bytes();
            Ok::<_, String>((status, body))
        })
        .await
        .map_err(|_| fail(format!("no answer within {} s", TOKEN_TIMEOUT.as_secs())))?
        .map_err(fail)?;
        let (status, body) = answer;
        if !status.is_success() {
            // Google's error bodies (`invalid_grant`, …) name the problem and hold no secret.
            let text: String = String::from_utf8_lossy(&body).chars().take(300).collect();
            return Err(fail(format!("HTTP {status}: {text}")));
        }
        let t: TokenAnswer = serde_json::from_slice(&body)
            .map_err(|_| fail("the answer has no access_token".to_owned()))?;
        let lifetime = Duration::from_secs(t.expires_in.unwrap_or(3600));
        let margin = (lifetime / 4).min(Duration::from_secs(60));
        let mut header = HeaderValue::from_str(&format!("Bearer {}", t.access_token))
            .map_err(|_| fail("the access token is not a valid header value".to_owned()))?;
        header.set_sensitive(true);
        *self.cached.lock().unwrap_or_else(|p| p.into_inner()) = Some(Cached {
            header: header.clone(),
            refresh_at: started + lifetime - margin,
            expires_at: started + lifetime,
        });
        tracing::info!(provider = %self.provider, account = %self.email, expires_in_s = lifetime.as_secs(), "minted a service-account access token");
        Ok(header)
    }

    fn assertion(&self) -> Result<String, String> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_err(|_| "the clock is before 1970".to_owned())?
            .as_secs();
        let mut header = serde_json::json!({"alg": "RS256", "typ": "JWT"});
        if let Some(kid) = &self.key_id {
            header["kid"] = kid.clone().into();
        }
        let claims = serde_json::json!({
            "iss": self.email,
            "scope": SCOPE,
            "aud": self.token_uri.to_string(),
            "iat": now,
            "exp": now + ASSERTION_LIFETIME_SECS,
        });
        let signing_input = format!(
            "{}.{}",
            B64URL.encode(header.to_string()),
            B64URL.encode(claims.to_string())
        );
        let mut signature = vec![0; self.key.public().modulus_len()];
        self.key
            .sign(
                &RSA_PKCS1_SHA256,
                &ring::rand::SystemRandom::new(),
                signing_input.as_bytes(),
                &mut signature,
            )
            .map_err(|_| "signing the JWT failed".to_owned())?;
        Ok(format!("{signing_input}.{}", B64URL.encode(signature)))
    }
}

/// The DER bytes of a `-----BEGIN PRIVATE KEY-----` block.
fn pem_body(pem: &str) -> Option<Vec<u8>> {
    let start = pem.find("-----BEGIN PRIVATE KEY-----")? + "-----BEGIN PRIVATE KEY-----".len();
    let end = pem[start..].find("-----END PRIVATE KEY-----")? + start;
    let b64: String = pem[start..end]
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    base64::engine::general_purpose::STANDARD.decode(b64).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key_file(dir: &std::path::Path, private_key: &str) -> std::path::PathBuf {
        let path = dir.join("sa.json");
        let v = serde_json::json!({"type": "service_account", "project_id": "p",
            "private_key_id": "kid1", "private_key": private_key,
            "client_email": "tally@p.iam.gserviceaccount.com",
            "token_uri": "http://127.0.0.1:1/token"});
        std::fs::write(&path, v.to_string()).expect("write");
        path
    }

    #[test]
    fn a_bad_key_file_is_named_without_its_contents() {
        let dir = tempfile_dir();
        let path = key_file(
            &dir,
            "-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n",
        );
        let e = ServiceAccount::load("vertex", &path).expect_err("refused");
        assert!(e.contains("providers.vertex.service_account_file"), "{e}");
        assert!(e.contains("not a usable RSA key"), "{e}");
        assert!(!e.contains("bm90IGEga2V5"));
        std::fs::write(&path, "{\"private_key\": \"secret-ish\"").expect("write");
        let e = ServiceAccount::load("vertex", &path).expect_err("refused");
        assert!(!e.contains("secret-ish"), "{e}");
        let e = ServiceAccount::load("vertex", &dir.join("absent.json")).expect_err("refused");
        assert!(e.contains("cannot be read"), "{e}");
    }

    fn tempfile_dir() -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("tally-sa-{}", uuid::Uuid::now_v7()));
        std::fs::create_dir_all(&d).expect("dir");
        d
    }
}
