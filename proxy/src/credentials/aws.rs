//! AWS credentials Tally holds for Bedrock, and the SigV4 signature it makes with them.
//!
//! A client such as boto3 signs its request for the host it calls, Tally's: the signature
//! covers the `Host` header, so it is no use upstream. Tally therefore signs each request again
//! for the real host, with AWS's own signer (`aws-sigv4`, what the Rust SDK signs with). SigV4
//! covers the payload's SHA-256, so the whole body must be in hand before the headers leave:
//! a Bedrock request must fit in `proxy.max_body_bytes`.
//!
//! Where the credentials come from, first found wins, read once at start:
//! 1. `[providers.bedrock] aws_access_key_id`, `aws_secret_access_key` (and
//!    `aws_session_token`), each `{ env = … }` or `{ file = … }`;
//! 2. the standard `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`;
//! 3. a profile in the shared credentials file (`AWS_SHARED_CREDENTIALS_FILE`, else
//!    `~/.aws/credentials`), named by `aws_profile`, else `AWS_PROFILE`, else `default`.
//!
//! The profile file is read here rather than through `aws-config`: that crate is the whole
//! SDK's runtime (its own HTTP stack, IMDS, SSO), for what is three keys of an INI section.

use std::time::SystemTime;

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::identity::Identity;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Uri};

use crate::providers::SecretSource;

/// The signing name of Bedrock's runtime endpoints.
const SERVICE: &str = "bedrock";

/// The request headers the signature covers besides `host` and the `x-amz-*` ones: what
/// boto3 signs, minus what a hop may change (`user-agent`, `content-length`).
const SIGNED: &[&str] = &["content-type", "accept"];

/// The credentials configured for one provider.
#[derive(Debug, Clone, Default)]
pub struct AwsConfig {
    /// `aws_access_key_id`.
    pub access_key_id: Option<SecretSource>,
    /// `aws_secret_access_key`.
    pub secret_access_key: Option<SecretSource>,
    /// `aws_session_token`, for temporary credentials.
    pub session_token: Option<SecretSource>,
    /// `aws_profile`: the shared credentials file's section.
    pub profile: Option<String>,
}

/// What signs a provider's requests: a region and credentials, or why there are none.
#[derive(Clone)]
pub struct AwsSigner {
    region: String,
    identity: Result<Identity, String>,
    hint: Option<String>,
}

impl std::fmt::Debug for AwsSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AwsSigner")
            .field("region", &self.region)
            .field("access_key", &self.hint)
            .field("missing", &self.identity.as_ref().err())
            .finish()
    }
}

impl AwsSigner {
    /// Resolves the credentials for `provider` (see the module docs); never fails, a signer
    /// without credentials refuses each request it is asked to sign, saying which settings.
    pub fn resolve(provider: &str, region: String, config: &AwsConfig) -> Self {
        let identity = credentials(provider, config);
        let hint = identity
            .as_ref()
            .ok()
            .and_then(|c| crate::headers::hint_of(c.access_key_id()));
        Self {
            region,
            identity: identity.map(Identity::from),
            hint,
        }
    }

    /// The region requests are signed for.
    pub fn region(&self) -> &str {
        &self.region
    }

    /// The hint of the access key Tally signs with.
    pub fn hint(&self) -> Option<String> {
        self.hint.clone()
    }

    /// Replaces the client's signature on a request for `uri` with Tally's. `headers` are the
    /// ones that will be sent; `body` the whole body.
    pub fn sign(
        &self,
        method: &Method,
        uri: &Uri,
        headers: &mut HeaderMap,
        body: &[u8],
    ) -> Result<(), String> {
        let identity = self.identity.as_ref().map_err(Clone::clone)?;
        for h in [
            "authorization",
            "x-amz-date",
            "x-amz-security-token",
            "x-amz-content-sha256",
        ] {
            headers.remove(h);
        }
        let signed: Vec<(&str, &str)> = headers
            .iter()
            .filter(|(k, _)| {
                let k = k.as_str();
                SIGNED.contains(&k) || k.starts_with("x-amz-") || k.starts_with("x-amzn-")
            })
            .filter_map(|(k, v)| Some((k.as_str(), v.to_str().ok()?)))
            .collect();
        let params = v4::SigningParams::builder()
            .identity(identity)
            .region(&self.region)
            .name(SERVICE)
            .time(SystemTime::now())
            .settings(SigningSettings::default())
            .build()
            .map_err(|e| format!("cannot sign the request: {e}"))?
            .into();
        let uri = uri.to_string();
        let request = SignableRequest::new(
            method.as_str(),
            uri.as_str(),
            signed.into_iter(),
            SignableBody::Bytes(body),
        )
        .map_err(|e| format!("cannot sign the request: {e}"))?;
        let (instructions, _) = sign(request, &params)
            .map_err(|e| format!("cannot sign the request: {e}"))?
            .into_parts();
        let (new_headers, _) = instructions.into_parts();
        for h in new_headers {
            let name = HeaderName::from_static(h.name());
            let mut value = HeaderValue::from_str(h.value())
                .map_err(|_| "the signature is not a valid header value".to_owned())?;
            value.set_sensitive(h.sensitive() || name == http::header::AUTHORIZATION);
            headers.insert(name, value);
        }
        Ok(())
    }
}

fn read(source: &SecretSource, setting: &str) -> Result<String, String> {
    let v = match source {
        SecretSource::Env(var) => std::env::var(var)
            .map_err(|_| format!("{setting} names environment variable {var}, which is not set"))?,
        SecretSource::File(path) => std::fs::read_to_string(path)
            .map_err(|e| format!("{setting}: the file {} cannot be read: {e}", path.display()))?,
    };
    let v = v.trim();
    if v.is_empty() {
        return Err(format!("{setting} is empty"));
    }
    Ok(v.to_owned())
}

fn credentials(provider: &str, c: &AwsConfig) -> Result<Credentials, String> {
    let setting = |name: &str| format!("providers.{provider}.{name}");
    let refuse = |why: String| {
        Err(format!(
            "provider {provider}: requests are signed for Tally's host, so Tally signs them again with AWS credentials it holds, and {why}"
        ))
    };
    match (&c.access_key_id, &c.secret_access_key) {
        (Some(id), Some(secret)) => {
            let id = read(id, &setting("aws_access_key_id"));
            let secret = read(secret, &setting("aws_secret_access_key"));
            let token = c
                .session_token
                .as_ref()
                .map(|t| read(t, &setting("aws_session_token")))
                .transpose();
            return match (id, secret, token) {
                (Ok(id), Ok(secret), Ok(token)) => {
                    Ok(Credentials::new(id, secret, token, None, "tally-config"))
                }
                (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => refuse(e),
            };
        }
        (Some(_), None) | (None, Some(_)) => {
            return refuse(format!(
                "only one of {} and {} is set",
                setting("aws_access_key_id"),
                setting("aws_secret_access_key")
            ))
        }
        (None, None) => {}
    }
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
    if let (Some(id), Some(secret)) = (env("AWS_ACCESS_KEY_ID"), env("AWS_SECRET_ACCESS_KEY")) {
        return Ok(Credentials::new(
            id.trim(),
            secret.trim(),
            env("AWS_SESSION_TOKEN"),
            None,
            "environment",
        ));
    }
    let file = env("AWS_SHARED_CREDENTIALS_FILE")
        .map(std::path::PathBuf::from)
        .or_else(|| env("HOME").map(|h| std::path::Path::new(&h).join(".aws/credentials")));
    let profile = c
        .profile
        .clone()
        .or_else(|| env("AWS_PROFILE"))
        .unwrap_or_else(|| "default".to_owned());
    let none_found = format!(
        "none is configured: set {} and {}, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or profile {profile:?} in the shared credentials file",
        setting("aws_access_key_id"),
        setting("aws_secret_access_key"),
    );
    let Some(file) = file else {
        return refuse(none_found);
    };
    let Ok(text) = std::fs::read_to_string(&file) else {
        return refuse(format!("{none_found} ({} cannot be read)", file.display()));
    };
    let section = profile_section(&text, &profile);
    match (
        section.get("aws_access_key_id"),
        section.get("aws_secret_access_key"),
    ) {
        (Some(id), Some(secret)) => Ok(Credentials::new(
            id.clone(),
            secret.clone(),
            section.get("aws_session_token").cloned(),
            None,
            "profile",
        )),
        _ => refuse(format!(
            "{none_found} ({} has no keys for it)",
            file.display()
        )),
    }
}

/// The `key = value` lines of `[profile]` in an AWS shared credentials file.
fn profile_section(text: &str, profile: &str) -> std::collections::HashMap<String, String> {
    let mut out = std::collections::HashMap::new();
    let mut inside = false;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            let name = name.trim();
            inside = name == profile || name.strip_prefix("profile ") == Some(profile);
            continue;
        }
        if inside {
            if let Some((k, v)) = line.split_once('=') {
                out.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_profile_section_is_read_and_others_ignored() {
        let text = "[default]\naws_access_key_id = AKIADEFAULT\n\n[profile work]\n# note\naws_access_key_id=AKIAWORK\naws_secret_access_key = s3cr3t\n[other]\naws_access_key_id = AKIAOTHER\n";
        let s = profile_section(text, "work");
        assert_eq!(
            s.get("aws_access_key_id").map(String::as_str),
            Some("AKIAWORK")
        );
        assert_eq!(
            s.get("aws_secret_access_key").map(String::as_str),
            Some("s3cr3t")
        );
        assert_eq!(
            profile_section(text, "default")
                .get("aws_access_key_id")
                .map(String::as_str),
            Some("AKIADEFAULT")
        );
    }

    #[test]
    fn half_configured_credentials_name_the_missing_setting() {
        let c = AwsConfig {
            access_key_id: Some(SecretSource::Env("TALLY_TEST_NO_SUCH_VAR_1".into())),
            ..Default::default()
        };
        let e = credentials("bedrock", &c).expect_err("refused");
        assert!(e.contains("providers.bedrock.aws_secret_access_key"), "{e}");
    }

    #[test]
    fn a_signature_replaces_the_clients_and_covers_the_real_host() {
        let signer = AwsSigner {
            region: "us-east-1".into(),
            identity: Ok(Credentials::new("AKIDEXAMPLE", "secret", None, None, "test").into()),
            hint: None,
        };
        let mut h = HeaderMap::new();
        h.insert(
            "authorization",
            HeaderValue::from_static(
                "AWS4-HMAC-SHA256 Credential=CLIENT/x, SignedHeaders=host, Signature=00",
            ),
        );
        h.insert("x-amz-date", HeaderValue::from_static("20000101T000000Z"));
        h.insert("content-type", HeaderValue::from_static("application/json"));
        let uri: Uri = "https://bedrock-runtime.us-east-1.amazonaws.com/model/m%3A0/converse"
            .parse()
            .expect("uri");
        signer
            .sign(&Method::POST, &uri, &mut h, b"{}")
            .expect("signed");
        let auth = h["authorization"].to_str().expect("ascii");
        assert!(
            auth.starts_with("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/"),
            "{auth}"
        );
        assert!(auth.contains("/us-east-1/bedrock/aws4_request"), "{auth}");
        assert!(
            auth.contains("SignedHeaders=content-type;host;x-amz-date"),
            "{auth}"
        );
        assert_ne!(h["x-amz-date"], "20000101T000000Z");
    }
}
