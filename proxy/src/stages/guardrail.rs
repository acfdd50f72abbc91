//! Guardrail hooks (`[[guardrails]]`): external checks a request must pass before it is
//! forwarded: a moderation endpoint, a Presidio analyzer, a prompt-injection classifier.
//!
//! Each hook is called with the request's text and body and answers allow or block. The hooks
//! of a request run concurrently, each under its own timeout, so a request waits for the
//! slowest of them, never their sum. A hook that times out, cannot be reached, answers an error
//! status or a verdict Tally cannot read has *failed*, and its `on_error` decides: `open` lets
//! the request through, `closed` refuses it with 503. There is no default, because either one
//! is a surprise to someone: a guardrail that silently stops guarding, or a gateway that stops
//! when its moderation endpoint does.
//!
//! Every verdict goes in the record as the property `tally.guardrail.<name>` (`allow`,
//! `block`, `timeout (failed open)`, …), so the properties page breaks traffic down by it and a
//! blocked request is one filter away; `tally_guardrail_total{guardrail,outcome}` counts them.
//!
//! `kind = "openai_moderation"` is the one built in: OpenAI's `/v1/moderations` on a configured
//! provider (its base URL, and the key Tally holds for it, else the one the request brought).
//! It is not recorded as a request of its own (OpenAI does not bill moderation).

use std::time::Duration;

use bytes::Bytes;
use futures_util::future::join_all;
use http::header::{HeaderName, HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use http::{HeaderMap, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use serde::Deserialize;
use serde_json::{json, Value};

use super::StageError;
use crate::phases::request_body::BodyHead;
use crate::phases::{Ctx, Refusal};
use crate::providers::{HeldKey, Providers};

/// The largest verdict read from a hook.
const MAX_VERDICT_BYTES: usize = 64 * 1024;

/// `[[guardrails]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuardrailConfig {
    /// Its name: in the record's property, the refusal and the metrics.
    pub name: String,
    /// `http` (Tally's hook protocol, README) or `openai_moderation`.
    #[serde(default)]
    pub kind: GuardrailKind,
    /// `http`: where the check is POSTed.
    pub url: Option<String>,
    /// `openai_moderation`: the provider whose `/v1/moderations` is called; `openai` when
    /// unset.
    pub provider: Option<String>,
    /// `openai_moderation`: the moderation model; `omni-moderation-latest` when unset.
    pub model: Option<String>,
    /// How long the hook may take, connection included.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// What a hook that fails (timeout, unreachable, error status, unreadable verdict) means:
    /// `open` forwards the request, `closed` refuses it. Required.
    pub on_error: OnError,
    /// Only requests to these providers (or routers) are checked; all when empty.
    #[serde(default)]
    pub providers: Vec<String>,
}

fn default_timeout_ms() -> u64 {
    1000
}

/// Which protocol a hook speaks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GuardrailKind {
    /// Tally's: `{"text", "body", …}` in, `{"action": "allow" | "block", "reason"}` out.
    #[default]
    Http,
    /// OpenAI's moderation endpoint: blocks what it flags.
    OpenaiModeration,
}

/// What a failed hook means.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnError {
    /// The request goes on.
    Open,
    /// The request is refused with 503.
    Closed,
}

enum Target {
    Http(Uri),
    Moderation { provider: String, model: String },
}

struct Hook {
    name: String,
    target: Target,
    timeout: Duration,
    on_error: OnError,
    providers: Vec<String>,
    property: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Labels {
    guardrail: String,
    outcome: &'static str,
}

/// The configured hooks.
pub struct Guardrails {
    hooks: Vec<Hook>,
    family: Family<Labels, Counter>,
}

impl std::fmt::Debug for Guardrails {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.hooks.iter().map(|h| &h.name))
            .finish()
    }
}

/// What one hook said.
enum Outcome {
    Allow,
    Block(String),
    /// Failed: which way (`timeout`, `error`, `malformed`) and why.
    Failed(&'static str, String),
}

impl Guardrails {
    /// Checks the hooks against the providers and routers (`known`). `None` when there are
    /// none.
    pub fn build(
        configs: &[GuardrailConfig],
        providers: &Providers,
        known: &dyn Fn(&str) -> bool,
    ) -> Result<Option<Self>, StageError> {
        if configs.is_empty() {
            return Ok(None);
        }
        let bad = |s: String| StageError::Invalid(s);
        let mut hooks: Vec<Hook> = Vec::new();
        for c in configs {
            let what = format!("guardrails {:?}", c.name);
            if c.name.is_empty()
                || !c
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            {
                return Err(bad(format!("{what}: a name is letters, digits, _ or -")));
            }
            if hooks.iter().any(|h| h.name == c.name) {
                return Err(bad(format!("{what}: the name is used twice")));
            }
            if c.timeout_ms == 0 || c.timeout_ms > 60_000 {
                return Err(bad(format!("{what}: timeout_ms must be 1 to 60000")));
            }
            if let Some(p) = c.providers.iter().find(|p| !known(p)) {
                return Err(bad(format!(
                    "{what}: providers: {p:?} is neither a provider nor a router"
                )));
            }
            let target = match c.kind {
                GuardrailKind::Http => {
                    let url = c
                        .url
                        .as_deref()
                        .ok_or_else(|| bad(format!("{what}: an http guardrail needs a url")))?;
                    let uri: Uri = url
                        .parse()
                        .map_err(|e| bad(format!("{what}: url {url:?}: {e}")))?;
                    if !matches!(uri.scheme_str(), Some("http" | "https")) {
                        return Err(bad(format!("{what}: url {url:?} must be http or https")));
                    }
                    Target::Http(uri)
                }
                GuardrailKind::OpenaiModeration => {
                    let provider = c.provider.clone().unwrap_or_else(|| "openai".into());
                    if providers.get(&provider).is_none() {
                        return Err(bad(format!(
                            "{what}: provider {provider:?} is not configured"
                        )));
                    }
                    Target::Moderation {
                        provider,
                        model: c
                            .model
                            .clone()
                            .unwrap_or_else(|| "omni-moderation-latest".into()),
                    }
                }
            };
            hooks.push(Hook {
                property: format!("tally.guardrail.{}", c.name),
                name: c.name.clone(),
                target,
                timeout: Duration::from_millis(c.timeout_ms),
                on_error: c.on_error,
                providers: c.providers.clone(),
            });
        }
        Ok(Some(Self {
            hooks,
            family: Family::default(),
        }))
    }

    /// Registers `tally_guardrail_total{guardrail,outcome}`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "guardrail",
            "Guardrail verdicts: allow, block, or a failure (timeout, error, malformed)",
            self.family.clone(),
        );
    }
}

/// The guardrails phase: every hook that applies to `destination` is called, concurrently;
/// the first block (in config order) refuses with 400, else the first failure of a
/// fail-closed hook refuses with 503. Without `[[guardrails]]` it costs one branch.
pub(crate) async fn check(
    ctx: &mut Ctx,
    destination: &str,
    head: &BodyHead,
    headers: &HeaderMap,
) -> Result<(), Refusal> {
    let Some(guardrails) = ctx.shared.stages.guardrails.clone() else {
        return Ok(());
    };
    // A verdict comes from a hook, never from a client's `Tally-Property-tally.guardrail.…`.
    ctx.record()
        .properties
        .retain(|k, _| !k.starts_with("tally.guardrail."));
    let applies: Vec<&Hook> = guardrails
        .hooks
        .iter()
        .filter(|h| h.providers.is_empty() || h.providers.iter().any(|p| p == destination))
        .collect();
    if applies.is_empty() {
        return Ok(());
    }
    let text = crate::estimate::prompt_text(&head.bytes).0;
    let r = ctx.exchange.record_ref();
    let body: Option<&serde_json::value::RawValue> = if head.complete() {
        serde_json::from_slice(&head.bytes).ok()
    } else {
        None
    };
    let check = json!({
        "request_id": r.request_id.to_string(),
        "provider": r.provider,
        "model": r.model,
        "endpoint": r.endpoint,
        "user_id": r.user_id,
        "properties": r.properties,
        "text": text,
        "body": body,
        "body_truncated": !head.complete(),
    })
    .to_string();
    let check = Bytes::from(check);
    let (shared, client) = (ctx.shared.clone(), ctx.client.clone());
    let calls = applies.iter().map(|h| {
        let call = call(&shared, &client, h, &check, &text, headers);
        async move {
            match tokio::time::timeout(h.timeout, call).await {
                Ok(o) => o,
                Err(_) => Outcome::Failed(
                    "timeout",
                    format!("no verdict within {} ms", h.timeout.as_millis()),
                ),
            }
        }
    });
    let outcomes = join_all(calls).await;
    let mut refusal: Option<Refusal> = None;
    for (h, o) in applies.iter().zip(outcomes) {
        let (label, value, refuse) = match o {
            Outcome::Allow => ("allow", "allow".to_owned(), None),
            Outcome::Block(reason) => (
                "block",
                "block".to_owned(),
                Some(
                    Refusal::new(
                        StatusCode::BAD_REQUEST,
                        "tally_guardrail_blocked",
                        format!(
                            "the request was refused by the {} guardrail: {reason}",
                            h.name
                        ),
                    )
                    .details(json!({ "guardrail": h.name, "reason": reason })),
                ),
            ),
            Outcome::Failed(how, why) => {
                tracing::warn!(guardrail = %h.name, outcome = how, error = %why, on_error = ?h.on_error, "guardrail failed");
                match h.on_error {
                    OnError::Open => (how, format!("{how} (failed open)"), None),
                    OnError::Closed => (
                        how,
                        format!("{how} (failed closed)"),
                        Some(
                            Refusal::new(
                                StatusCode::SERVICE_UNAVAILABLE,
                                "tally_guardrail_unavailable",
                                format!(
                                    "the {} guardrail could not check the request ({why}), and it fails closed",
                                    h.name
                                ),
                            )
                            .details(json!({ "guardrail": h.name })),
                        ),
                    ),
                }
            }
        };
        guardrails
            .family
            .get_or_create(&Labels {
                guardrail: h.name.clone(),
                outcome: label,
            })
            .inc();
        ctx.record().properties.insert(h.property.clone(), value);
        // A block outranks a failure: it is the more specific answer.
        let better = match (&refusal, &refuse) {
            (None, Some(_)) => true,
            (Some(a), Some(b)) => {
                a.status != StatusCode::BAD_REQUEST && b.status == StatusCode::BAD_REQUEST
            }
            _ => false,
        };
        if better {
            refusal = refuse;
        }
    }
    refusal.map_or(Ok(()), Err)
}

/// One hook's call, without its timeout.
async fn call(
    shared: &crate::Shared,
    client: &crate::client::UpstreamClient,
    hook: &Hook,
    check: &Bytes,
    text: &str,
    headers: &HeaderMap,
) -> Outcome {
    let (uri, mut out_headers, body) = match &hook.target {
        Target::Http(uri) => (uri.clone(), HeaderMap::new(), check.clone()),
        Target::Moderation { provider, model } => {
            let Some(p) = shared.providers.get(provider) else {
                return Outcome::Failed("error", format!("provider {provider} is gone"));
            };
            let uri = match p.upstream_uri("/v1/moderations", None) {
                Ok(u) => u,
                Err(e) => return Outcome::Failed("error", format!("moderation URL: {e}")),
            };
            let mut h = HeaderMap::new();
            match &p.held_key {
                Some(HeldKey::Ready(value)) => {
                    let (name, _) = p.format.adapter().held_key_header();
                    h.insert(HeaderName::from_static(name), value.clone());
                }
                _ => {
                    if let Some(v) = headers.get(AUTHORIZATION) {
                        h.insert(AUTHORIZATION, v.clone());
                    }
                }
            }
            let body = json!({ "model": model, "input": text }).to_string();
            (uri, h, Bytes::from(body))
        }
    };
    out_headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    let mut req = Request::new(
        Full::new(body)
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *req.method_mut() = Method::POST;
    *req.uri_mut() = uri;
    *req.headers_mut() = out_headers;
    let resp = match client.request(req).await {
        Ok(r) => r,
        Err(e) => return Outcome::Failed("error", crate::body::error_chain(&e)),
    };
    let status = resp.status();
    let bytes = match Limited::new(resp.into_body(), MAX_VERDICT_BYTES)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(e) => return Outcome::Failed("error", format!("reading the verdict: {e}")),
    };
    if !status.is_success() {
        return Outcome::Failed("error", format!("it answered {status}"));
    }
    let verdict = match &hook.target {
        Target::Http(_) => http_verdict(&bytes),
        Target::Moderation { .. } => moderation_verdict(&bytes),
    };
    verdict.unwrap_or_else(|why| Outcome::Failed("malformed", why))
}

/// Tally's hook protocol: `{"action": "allow" | "block", "reason": "…"}`.
fn http_verdict(bytes: &[u8]) -> Result<Outcome, String> {
    #[derive(Deserialize)]
    struct Verdict {
        action: String,
        #[serde(default)]
        reason: Option<String>,
    }
    let v: Verdict = serde_json::from_slice(bytes)
        .map_err(|e| format!("the verdict is not {{\"action\": \"allow\" | \"block\"}}: {e}"))?;
    match v.action.as_str() {
        "allow" => Ok(Outcome::Allow),
        "block" => Ok(Outcome::Block(
            v.reason.unwrap_or_else(|| "no reason given".into()),
        )),
        other => Err(format!(
            "the verdict's action is {other:?}, not \"allow\" or \"block\""
        )),
    }
}

/// OpenAI's moderation answer: blocked when any result is flagged; the reason names the
/// flagged categories.
fn moderation_verdict(bytes: &[u8]) -> Result<Outcome, String> {
    let v: Value = serde_json::from_slice(bytes).map_err(|e| format!("not JSON: {e}"))?;
    let results = v
        .get("results")
        .and_then(Value::as_array)
        .ok_or("no results array")?;
    let mut categories: Vec<&str> = Vec::new();
    let mut flagged = false;
    for r in results {
        let f = r
            .get("flagged")
            .and_then(Value::as_bool)
            .ok_or("a result without flagged")?;
        flagged |= f;
        if let Some(c) = r.get("categories").and_then(Value::as_object) {
            categories.extend(
                c.iter()
                    .filter(|(_, on)| on.as_bool() == Some(true))
                    .map(|(k, _)| k.as_str()),
            );
        }
    }
    Ok(if flagged {
        Outcome::Block(if categories.is_empty() {
            "flagged by moderation".into()
        } else {
            format!("flagged by moderation: {}", categories.join(", "))
        })
    } else {
        Outcome::Allow
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_are_read_strictly() {
        assert!(matches!(
            http_verdict(br#"{"action":"allow"}"#),
            Ok(Outcome::Allow)
        ));
        assert!(matches!(
            http_verdict(br#"{"action":"block","reason":"injection"}"#),
            Ok(Outcome::Block(r)) if r == "injection"
        ));
        for bad in [
            &br#"{"action":"maybe"}"#[..],
            br#"{"flagged":true}"#,
            b"ok",
            b"",
        ] {
            assert!(
                http_verdict(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        // OpenAI's documented answer shape.
        let flagged = br#"{"id":"modr-1","model":"omni-moderation-latest","results":[{"flagged":true,"categories":{"violence":true,"hate":false},"category_scores":{"violence":0.9,"hate":0.01}}]}"#;
        assert!(matches!(
            moderation_verdict(flagged),
            Ok(Outcome::Block(r)) if r == "flagged by moderation: violence"
        ));
        let clean = br#"{"results":[{"flagged":false,"categories":{"violence":false}}]}"#;
        assert!(matches!(moderation_verdict(clean), Ok(Outcome::Allow)));
        assert!(moderation_verdict(br#"{"results":[{}]}"#).is_err());
        assert!(moderation_verdict(br#"{"error":{}}"#).is_err());
    }

    #[test]
    fn mistakes_in_the_config_are_named() {
        let providers = Providers::new(&Default::default()).unwrap();
        let build = |toml_text: &str| -> String {
            #[derive(Deserialize)]
            struct File {
                guardrails: Vec<GuardrailConfig>,
            }
            match toml::from_str::<File>(toml_text) {
                Err(e) => e.to_string(),
                Ok(f) => match Guardrails::build(&f.guardrails, &providers, &|p| p == "openai") {
                    Ok(g) => format!("ok {g:?}"),
                    Err(e) => e.to_string(),
                },
            }
        };
        let ok = build(
            "[[guardrails]]\nname = \"m\"\nkind = \"openai_moderation\"\non_error = \"open\"\n",
        );
        assert_eq!(ok, r#"ok Some(["m"])"#);
        for (text, says) in [
            ("[[guardrails]]\nname = \"a\"\nurl = \"http://h/\"\n", "on_error"),
            ("[[guardrails]]\nname = \"a\"\non_error = \"open\"\n", "needs a url"),
            ("[[guardrails]]\nname = \"a\"\nurl = \"ftp://h/\"\non_error = \"open\"\n", "http or https"),
            ("[[guardrails]]\nname = \"a b\"\nurl = \"http://h/\"\non_error = \"open\"\n", "letters"),
            ("[[guardrails]]\nname = \"a\"\nurl = \"http://h/\"\non_error = \"maybe\"\n", "maybe"),
            ("[[guardrails]]\nname = \"a\"\nurl = \"http://h/\"\non_error = \"open\"\ntimeout_ms = 0\n", "timeout_ms"),
            ("[[guardrails]]\nname = \"a\"\nurl = \"http://h/\"\non_error = \"open\"\nproviders = [\"nope\"]\n", "\"nope\" is neither"),
            ("[[guardrails]]\nname = \"m\"\nkind = \"openai_moderation\"\nprovider = \"nope\"\non_error = \"open\"\n", "not configured"),
            ("[[guardrails]]\nname = \"a\"\nurl = \"http://h/\"\non_error = \"open\"\n[[guardrails]]\nname = \"a\"\nurl = \"http://h/\"\non_error = \"open\"\n", "used twice"),
        ] {
            let e = build(text);
            assert!(e.contains(says), "{text}: {e}");
        }
    }
}
