//! The providers Tally can forward to: built-in presets (a table of data), overridden or
//! extended by config, and routing of a request path to one of them.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use http::uri::{Authority, Scheme};
use http::Uri;
use serde::Deserialize;

use crate::credentials::aws::{AwsConfig, AwsSigner};
use crate::credentials::google::ServiceAccount;
use crate::formats::WireFormat;

/// The provider `/v1/...` goes to.
pub const DEFAULT_PROVIDER: &str = "openai";

/// Whether Tally may ask an OpenAI-format upstream to include usage in a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StreamUsage {
    /// Add `stream_options.include_usage` when the client did not, and hide the usage-only
    /// event (and the `"usage":null` members it causes) from the client.
    Inject,
    /// Forward the request as is; estimate tokens when the stream has no usage.
    Passthrough,
}

struct Preset {
    name: &'static str,
    format: WireFormat,
    base_url: &'static str,
    stream_usage: StreamUsage,
}

const fn preset(name: &'static str, format: WireFormat, base_url: &'static str) -> Preset {
    Preset {
        name,
        format,
        base_url,
        stream_usage: StreamUsage::Passthrough,
    }
}

/// Built-in providers. Adding one is a line here (and its prices in `prices.toml`).
const PRESETS: &[Preset] = &[
    Preset {
        stream_usage: StreamUsage::Inject,
        ..preset("openai", WireFormat::OpenAi, "https://api.openai.com")
    },
    preset(
        "anthropic",
        WireFormat::Anthropic,
        "https://api.anthropic.com",
    ),
    preset("groq", WireFormat::OpenAi, "https://api.groq.com"),
    preset("mistral", WireFormat::OpenAi, "https://api.mistral.ai"),
    preset("deepseek", WireFormat::OpenAi, "https://api.deepseek.com"),
    preset("together", WireFormat::OpenAi, "https://api.together.xyz"),
    preset(
        "openrouter",
        WireFormat::OpenAi,
        "https://openrouter.ai/api",
    ),
    preset(
        "fireworks",
        WireFormat::OpenAi,
        "https://api.fireworks.ai/inference",
    ),
    preset("xai", WireFormat::OpenAi, "https://api.x.ai"),
    preset(
        "gemini",
        WireFormat::OpenAi,
        "https://generativelanguage.googleapis.com/v1beta/openai",
    ),
    preset("ollama", WireFormat::OpenAi, "http://127.0.0.1:11434"),
    preset(
        "google",
        WireFormat::Gemini,
        "https://generativelanguage.googleapis.com",
    ),
];

/// Where a secret Tally holds comes from: `{ env = "VAR" }` or `{ file = "path" }`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum SecretSource {
    /// An environment variable, read at start.
    Env(String),
    /// A file holding the secret alone (surrounding whitespace ignored), read at start.
    File(std::path::PathBuf),
}

/// A provider key Tally holds. Its `Debug` shows only a hint, so config dumps and logs never
/// carry it.
#[derive(Clone)]
pub enum HeldKey {
    /// Ready: the header value to send.
    Ready(http::HeaderValue),
    /// Configured but not available; the text names the provider and the setting, and is
    /// what a request that needed it is told.
    Missing(String),
}

impl std::fmt::Debug for HeldKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HeldKey::Ready(_) => f.write_str("HeldKey(…)"),
            HeldKey::Missing(why) => write!(f, "HeldKey::Missing({why:?})"),
        }
    }
}

impl HeldKey {
    fn resolve(provider: &str, format: WireFormat, source: &SecretSource) -> Self {
        let setting = format!("providers.{provider}.api_key");
        let missing = |why: String| {
            HeldKey::Missing(format!(
                "provider {provider}: no API key in the request, and {why}"
            ))
        };
        let raw = match source {
            SecretSource::Env(var) => match std::env::var(var) {
                Ok(v) if !v.trim().is_empty() => v,
                _ => {
                    return missing(format!(
                        "the one Tally holds ({setting}, environment variable {var}) is not set"
                    ))
                }
            },
            SecretSource::File(path) => {
                let file = format!("the file Tally holds it in ({setting}, {})", path.display());
                match std::fs::read_to_string(path) {
                    Ok(v) if !v.trim().is_empty() => v,
                    Ok(_) => return missing(format!("{file} is empty")),
                    Err(e) => return missing(format!("{file} cannot be read: {e}")),
                }
            }
        };
        let key = raw.trim();
        let (_, bearer) = format.adapter().held_key_header();
        let value = if bearer {
            format!("Bearer {key}")
        } else {
            key.to_owned()
        };
        match http::HeaderValue::from_str(&value) {
            Ok(mut v) => {
                v.set_sensitive(true);
                HeldKey::Ready(v)
            }
            Err(_) => HeldKey::Missing(format!(
                "provider {provider}: the key Tally holds ({setting}) is not a valid header value"
            )),
        }
    }
}

/// One `[providers.<name>]` table. Every field is optional for a built-in provider (unset
/// fields keep the preset); a new provider needs `base_url`, and `kind` defaults to `openai`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    /// Wire format: `openai`, `anthropic`, `gemini`, `azure`, `vertex` or `bedrock`.
    pub kind: Option<WireFormat>,
    /// Scheme, host and optional path prefix, e.g. `https://api.groq.com`.
    pub base_url: Option<String>,
    /// `inject` or `passthrough`; only meaningful for the `openai` wire format.
    pub stream_usage: Option<StreamUsage>,
    /// A key Tally sends when a request carries none.
    pub api_key: Option<SecretSource>,
    /// Azure: deployment name → the model it serves, for the record and prices.
    #[serde(default)]
    pub deployments: BTreeMap<String, String>,
    /// Bedrock: the AWS region requests are signed for (else `AWS_REGION`, else
    /// `AWS_DEFAULT_REGION`); also the default base URL's. Vertex: the location, whose
    /// endpoint is the default base URL (`location` is the same setting).
    #[serde(alias = "location")]
    pub region: Option<String>,
    /// Bedrock: the access key Tally signs with (see `credentials::aws` for the fallbacks).
    pub aws_access_key_id: Option<SecretSource>,
    /// Bedrock: its secret.
    pub aws_secret_access_key: Option<SecretSource>,
    /// Bedrock: a session token, for temporary credentials.
    pub aws_session_token: Option<SecretSource>,
    /// Bedrock: the shared-credentials-file profile to use (else `AWS_PROFILE`, else `default`).
    pub aws_profile: Option<String>,
    /// Vertex: a service-account key file Tally mints access tokens from, for requests that
    /// carry no token of their own.
    pub service_account_file: Option<std::path::PathBuf>,
}

/// A provider ready to receive requests.
#[derive(Debug, Clone)]
pub struct Provider {
    /// Its name, the first path segment clients use.
    pub name: String,
    /// Its wire format.
    pub format: WireFormat,
    /// Stream-usage policy.
    pub stream_usage: StreamUsage,
    /// The key Tally sends when a request carries none.
    pub held_key: Option<HeldKey>,
    /// Deployment name → model (Azure).
    pub deployments: BTreeMap<String, String>,
    /// Signs each request for the real host (Bedrock).
    pub aws: Option<AwsSigner>,
    /// Mints access tokens for requests that carry none (Vertex), or why it cannot.
    pub service_account: Option<Result<Arc<ServiceAccount>, String>>,
    /// Vertex: the configured location, which the unified API puts in the model's path.
    pub location: Option<String>,
    scheme: Scheme,
    authority: Authority,
    base_path: String,
}

impl Provider {
    /// The upstream URI for a forwarded path and query.
    pub fn upstream_uri(&self, path: &str, query: Option<&str>) -> Result<Uri, http::Error> {
        let mut pq = String::with_capacity(self.base_path.len() + path.len() + 64);
        pq.push_str(&self.base_path);
        pq.push_str(path);
        if let Some(q) = query {
            pq.push('?');
            pq.push_str(q);
        }
        Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(pq)
            .build()
    }

    /// The base URL's path prefix (empty for a bare host).
    pub fn base_path(&self) -> &str {
        &self.base_path
    }

    /// The upstream's `scheme://host[:port]`, for logs.
    pub fn origin(&self) -> String {
        format!("{}://{}", self.scheme, self.authority)
    }

    /// The upstream as a span names it: `server.address`, `server.port` and the GenAI
    /// conventions' `gen_ai.provider.name`, which names APIs, not Tally's provider names.
    pub fn span_upstream(&self) -> tally_otel::Upstream {
        let known = match self.format {
            WireFormat::Anthropic => Some("anthropic"),
            WireFormat::Gemini => Some("gcp.gemini"),
            WireFormat::Vertex | WireFormat::VertexAnthropic => Some("gcp.vertex_ai"),
            WireFormat::Azure => Some("azure.ai.openai"),
            WireFormat::Bedrock => Some("aws.bedrock"),
            WireFormat::OpenAi => match self.name.as_str() {
                "openai" => Some("openai"),
                "groq" => Some("groq"),
                "mistral" => Some("mistral_ai"),
                "deepseek" => Some("deepseek"),
                "xai" => Some("x_ai"),
                "gemini" => Some("gcp.gemini"),
                _ => None,
            },
        };
        tally_otel::Upstream {
            host: self.authority.host().to_owned(),
            port: self.authority.port_u16(),
            provider: known,
        }
    }
}

/// A provider configuration that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProviderError {
    /// The base URL did not parse or is not http(s).
    #[error("provider {name}: invalid base_url {url:?}: {reason}")]
    BaseUrl {
        /// Provider name.
        name: String,
        /// The configured URL.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A new provider without a base URL.
    #[error("provider {0}: base_url is required for a provider that is not built in")]
    MissingBaseUrl(String),
    /// Bedrock without a region to sign for.
    #[error("provider {0}: region is required (or AWS_REGION / AWS_DEFAULT_REGION): requests are signed for it")]
    MissingRegion(String),
    /// A name that cannot be a path segment, or that collides with `/v1`.
    #[error("provider name {0:?} must be lower-case letters, digits, '-' or '_', and not 'v1'")]
    BadName(String),
}

/// Why a request path matched no provider.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown provider {name:?}")]
pub struct UnknownProvider {
    /// The first path segment the client used.
    pub name: String,
}

/// All configured providers.
#[derive(Debug, Clone)]
pub struct Providers {
    by_name: HashMap<String, Arc<Provider>>,
}

impl Providers {
    /// The presets, with `config` applied on top.
    pub fn new(config: &BTreeMap<String, ProviderConfig>) -> Result<Self, ProviderError> {
        let mut by_name = HashMap::new();
        for p in PRESETS {
            let c = config.get(p.name).cloned().unwrap_or_default();
            let mut provider = build(
                p.name,
                c.kind.unwrap_or(p.format),
                c.base_url.as_deref().unwrap_or(p.base_url),
                c.stream_usage.unwrap_or(p.stream_usage),
            )?;
            provider.held_key = c
                .api_key
                .as_ref()
                .map(|s| HeldKey::resolve(p.name, provider.format, s));
            provider.deployments = c.deployments.clone();
            by_name.insert(p.name.to_owned(), Arc::new(provider));
        }
        for (name, c) in config {
            if by_name.contains_key(name) {
                continue;
            }
            // `azure`, `vertex` and `bedrock` are built in without a preset: their base URL is
            // the user's own resource, or the region's endpoint.
            let default_kind = match name.as_str() {
                "azure" => WireFormat::Azure,
                "vertex" => WireFormat::Vertex,
                "bedrock" => WireFormat::Bedrock,
                _ => WireFormat::OpenAi,
            };
            let kind = c.kind.unwrap_or(default_kind);
            let region = (kind == WireFormat::Bedrock)
                .then(|| aws_region(name, c))
                .transpose()?;
            let url = match (&c.base_url, &region, kind, &c.region) {
                (Some(u), ..) => u.clone(),
                (None, Some(r), ..) => format!("https://bedrock-runtime.{r}.amazonaws.com"),
                (None, None, WireFormat::Vertex, Some(l)) if l == "global" => {
                    "https://aiplatform.googleapis.com".to_owned()
                }
                (None, None, WireFormat::Vertex, Some(l)) => {
                    format!("https://{l}-aiplatform.googleapis.com")
                }
                _ => return Err(ProviderError::MissingBaseUrl(name.clone())),
            };
            let mut provider = build(
                name,
                kind,
                &url,
                c.stream_usage.unwrap_or(StreamUsage::Passthrough),
            )?;
            provider.aws = region.map(|r| {
                let config = AwsConfig {
                    access_key_id: c.aws_access_key_id.clone(),
                    secret_access_key: c.aws_secret_access_key.clone(),
                    session_token: c.aws_session_token.clone(),
                    profile: c.aws_profile.clone(),
                };
                AwsSigner::resolve(name, r, &config)
            });
            provider.service_account = c.service_account_file.as_deref().map(|path| {
                let loaded = ServiceAccount::load(name, path).map(Arc::new);
                if let Err(e) = &loaded {
                    tracing::warn!(provider = %name, error = %e, "the service account cannot be used; requests without a token of their own will be refused");
                }
                loaded
            });
            provider.held_key = c
                .api_key
                .as_ref()
                .map(|s| HeldKey::resolve(name, provider.format, s));
            provider.deployments = c.deployments.clone();
            if kind == WireFormat::Vertex {
                provider.location = c.region.clone();
            }
            by_name.insert(name.clone(), Arc::new(provider));
        }
        Ok(Self { by_name })
    }

    /// Provider names, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.by_name.keys().cloned().collect();
        v.sort();
        v
    }

    /// Looks a provider up by name.
    pub fn get(&self, name: &str) -> Option<&Arc<Provider>> {
        self.by_name.get(name)
    }

    /// Maps a request path to a provider and the path to forward: `/v1/...` goes to the default
    /// provider unchanged; `/<name>/rest` goes to `name` as `/rest`.
    pub fn route<'p>(&self, path: &'p str) -> Result<(&Arc<Provider>, &'p str), UnknownProvider> {
        let trimmed = path.strip_prefix('/').unwrap_or(path);
        let (first, rest_start) = match trimmed.find('/') {
            Some(i) => (&trimmed[..i], i + 1),
            None => (trimmed, trimmed.len() + 1),
        };
        if first == "v1" {
            if let Some(p) = self.by_name.get(DEFAULT_PROVIDER) {
                return Ok((p, path));
            }
        }
        match self.by_name.get(first) {
            Some(p) => {
                let forward = if rest_start <= trimmed.len() {
                    &path[rest_start..]
                } else {
                    "/"
                };
                Ok((p, forward))
            }
            None => Err(UnknownProvider {
                name: first.chars().take(64).collect(),
            }),
        }
    }
}

/// The region a Bedrock provider signs for: configured, else from the standard variables.
fn aws_region(name: &str, c: &ProviderConfig) -> Result<String, ProviderError> {
    c.region
        .clone()
        .or_else(|| std::env::var("AWS_REGION").ok())
        .or_else(|| std::env::var("AWS_DEFAULT_REGION").ok())
        .map(|r| r.trim().to_owned())
        .filter(|r| !r.is_empty())
        .ok_or_else(|| ProviderError::MissingRegion(name.to_owned()))
}

fn build(
    name: &str,
    format: WireFormat,
    url: &str,
    stream_usage: StreamUsage,
) -> Result<Provider, ProviderError> {
    let valid_name = !name.is_empty()
        && name != "v1"
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if !valid_name {
        return Err(ProviderError::BadName(name.to_owned()));
    }
    let bad = |reason: &str| ProviderError::BaseUrl {
        name: name.to_owned(),
        url: url.to_owned(),
        reason: reason.to_owned(),
    };
    let uri: Uri = url.parse().map_err(|_| bad("not a URL"))?;
    let scheme = uri.scheme().cloned().ok_or_else(|| bad("no scheme"))?;
    if scheme != Scheme::HTTP && scheme != Scheme::HTTPS {
        return Err(bad("scheme must be http or https"));
    }
    let authority = uri.authority().cloned().ok_or_else(|| bad("no host"))?;
    if uri.query().is_some() {
        return Err(bad("must not have a query string"));
    }
    let base_path = uri.path().trim_end_matches('/').to_owned();
    Ok(Provider {
        name: name.to_owned(),
        format,
        stream_usage,
        held_key: None,
        deployments: BTreeMap::new(),
        aws: None,
        service_account: None,
        location: None,
        scheme,
        authority,
        base_path,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn providers() -> Providers {
        Providers::new(&BTreeMap::new()).expect("presets are valid")
    }

    #[test]
    fn routes_by_prefix() {
        let p = providers();
        let (prov, path) = p.route("/v1/chat/completions").expect("default");
        assert_eq!(
            (prov.name.as_str(), path),
            ("openai", "/v1/chat/completions")
        );
        let (prov, path) = p.route("/anthropic/v1/messages").expect("anthropic");
        assert_eq!((prov.name.as_str(), path), ("anthropic", "/v1/messages"));
        let (prov, path) = p.route("/groq/openai/v1/chat/completions").expect("groq");
        assert_eq!(
            (prov.name.as_str(), path),
            ("groq", "/openai/v1/chat/completions")
        );
        let (prov, path) = p.route("/openai").expect("bare");
        assert_eq!((prov.name.as_str(), path), ("openai", "/"));
        assert_eq!(p.route("/nope/v1/x").expect_err("unknown").name, "nope");
        assert_eq!(p.route("/").expect_err("empty").name, "");
    }

    #[test]
    fn upstream_uri_keeps_base_path_and_query() {
        let p = providers();
        let gemini = p.get("gemini").expect("preset");
        assert_eq!(
            gemini
                .upstream_uri("/chat/completions", Some("a=1"))
                .expect("uri")
                .to_string(),
            "https://generativelanguage.googleapis.com/v1beta/openai/chat/completions?a=1"
        );
    }

    #[test]
    fn config_overrides_and_adds() {
        let mut c = BTreeMap::new();
        c.insert(
            "openai".to_owned(),
            ProviderConfig {
                base_url: Some("http://127.0.0.1:9999/".into()),
                ..Default::default()
            },
        );
        c.insert(
            "corp".to_owned(),
            ProviderConfig {
                kind: Some(WireFormat::Anthropic),
                base_url: Some("https://llm.corp.example/anthropic".into()),
                ..Default::default()
            },
        );
        let p = Providers::new(&c).expect("valid");
        let openai = p.get("openai").expect("openai");
        assert_eq!(openai.origin(), "http://127.0.0.1:9999");
        assert_eq!(
            openai.stream_usage,
            StreamUsage::Inject,
            "unset fields keep the preset"
        );
        assert_eq!(p.get("corp").expect("corp").format, WireFormat::Anthropic);
    }

    #[test]
    fn bad_config_is_refused_with_a_reason() {
        let one = |name: &str, url: Option<&str>| {
            let mut c = BTreeMap::new();
            c.insert(
                name.to_owned(),
                ProviderConfig {
                    base_url: url.map(str::to_owned),
                    ..Default::default()
                },
            );
            Providers::new(&c)
        };
        assert!(matches!(
            one("x", None),
            Err(ProviderError::MissingBaseUrl(_))
        ));
        assert!(matches!(
            one("x", Some("ftp://h")),
            Err(ProviderError::BaseUrl { .. })
        ));
        assert!(matches!(
            one("x", Some("not a url")),
            Err(ProviderError::BaseUrl { .. })
        ));
        assert!(matches!(
            one("Bad Name", Some("http://h")),
            Err(ProviderError::BadName(_))
        ));
        assert!(matches!(
            one("v1", Some("http://h")),
            Err(ProviderError::BadName(_))
        ));
    }
}
