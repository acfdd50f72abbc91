//! The request path's guard, opt-in: detectors that refuse a request (`block`) or rewrite it
//! before it is forwarded (`mask`), so the provider never sees the value.
//!
//! It runs on the event loop, in the proxy's guard phase, over the body head the proxy has
//! already read whole; nothing is buffered for it that was not buffered anyway. Its cost is the
//! detectors it is given, per KiB of body (BENCHMARKS.md, "Redaction on the request path"): a
//! secrets-only guard costs a prefilter pass, the phone detector most of the rest. A body
//! larger than the head cannot be checked without holding it back, so what happens to it is a
//! policy ([`Unchecked`]), refused by default: a guard that lets the biggest bodies through
//! unread is a guard in name only.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use serde::Deserialize;

use crate::detect::Detectors;
use crate::{build_detectors, ConfigError, PrivacyConfig};

/// `[privacy.request]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RequestConfig {
    /// Detectors whose finding refuses the request with a 400 naming the detector.
    pub block: Vec<String>,
    /// Detectors whose findings are replaced (`[EMAIL]`) before the request is forwarded.
    pub mask: Vec<String>,
    /// A body too large to check whole; refused when unset.
    pub unchecked: Unchecked,
    /// Only requests to these providers (or routers) are checked; all when empty. A provider
    /// on your own machines may see what an outside one must not.
    pub providers: Vec<String>,
}

/// What becomes of a request body the guard cannot read whole (larger than the proxy's
/// `max_body_bytes`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Unchecked {
    /// Refused with 413.
    #[default]
    Refuse,
    /// Forwarded unchecked, and counted.
    Forward,
}

/// The guard's decision on one body.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict<'a> {
    /// Nothing the guard looks for is there: forward the body as it is.
    Clean,
    /// Forward `text` instead; `detectors` found what was replaced.
    Masked {
        /// The rewritten body.
        text: String,
        /// Which detectors found something, each once, in order of first finding.
        detectors: Vec<&'a str>,
    },
    /// Refuse the request: a masking detector found something in a body that cannot be
    /// rewritten (it is not text).
    Unmaskable {
        /// The first detector that did.
        detector: &'a str,
    },
    /// Refuse the request: a blocking detector found something.
    Blocked {
        /// The first blocking detector that did.
        detector: &'a str,
        /// The body with every finding masked, for the refused request's record: what was
        /// refused must not be stored either.
        masked: String,
    },
}

impl Verdict<'_> {
    /// Nothing was found.
    pub fn is_clean(&self) -> bool {
        matches!(self, Verdict::Clean)
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GuardLabels {
    detector: String,
    action: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UncheckedLabels {
    outcome: &'static str,
}

/// Checks request bodies against `[privacy.request]`; see the module docs.
pub struct RequestGuard {
    detectors: Detectors,
    on: Vec<bool>,
    blocks: Vec<bool>,
    labels: Vec<String>,
    unchecked: Unchecked,
    providers: Vec<String>,
    /// `[blocked, masked]` per detector.
    counters: Vec<[Counter; 2]>,
    family: Family<GuardLabels, Counter>,
    unchecked_family: Family<UncheckedLabels, Counter>,
}

impl std::fmt::Debug for RequestGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names = |flags: &[bool]| -> Vec<&str> {
            self.detectors
                .names()
                .iter()
                .zip(flags)
                .filter(|(_, on)| **on)
                .map(|(n, _)| n.as_str())
                .collect()
        };
        f.debug_struct("RequestGuard")
            .field("on", &names(&self.on))
            .field("block", &names(&self.blocks))
            .field("unchecked", &self.unchecked)
            .finish()
    }
}

impl RequestGuard {
    /// The guard `config.request` asks for, or `None` when it names no detector.
    pub fn new(config: &PrivacyConfig) -> Result<Option<Self>, ConfigError> {
        let r = &config.request;
        if r.block.is_empty() && r.mask.is_empty() {
            return Ok(None);
        }
        let detectors = build_detectors(config)?;
        let n = detectors.names().len();
        let (mut on, mut blocks) = (vec![false; n], vec![false; n]);
        for (list, block) in [(&r.block, true), (&r.mask, false)] {
            for name in list {
                let i = detectors.index(name).ok_or_else(|| {
                    ConfigError(format!(
                        "request: unknown detector {name:?}; the detectors are {}",
                        detectors.names().join(", ")
                    ))
                })?;
                if on[i] {
                    return Err(ConfigError(format!(
                        "request: detector {name:?} is listed twice (in block and mask, or twice in one)"
                    )));
                }
                on[i] = true;
                blocks[i] = block;
            }
        }
        let family = Family::<GuardLabels, Counter>::default();
        let counters = detectors
            .names()
            .iter()
            .map(|name| {
                ["blocked", "masked"].map(|action| {
                    family
                        .get_or_create(&GuardLabels {
                            detector: name.clone(),
                            action,
                        })
                        .clone()
                })
            })
            .collect();
        let labels = detectors
            .names()
            .iter()
            .map(|n| format!("[{}]", n.to_ascii_uppercase()))
            .collect();
        Ok(Some(Self {
            detectors,
            on,
            blocks,
            labels,
            unchecked: r.unchecked,
            providers: r.providers.clone(),
            counters,
            family,
            unchecked_family: Family::default(),
        }))
    }

    /// Registers `tally_privacy_request_total{detector,action}` and
    /// `tally_privacy_request_unchecked_total{outcome}` (with the registry's prefix).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "privacy_request",
            "Requests the request-path guard blocked, or forwarded with values masked, by detector",
            self.family.clone(),
        );
        registry.register(
            "privacy_request_unchecked",
            "Request bodies too large for the guard to read whole, refused or forwarded",
            self.unchecked_family.clone(),
        );
    }

    /// Whether requests to `destination` (a provider or router) are checked.
    pub fn applies_to(&self, destination: &str) -> bool {
        self.providers.is_empty() || self.providers.iter().any(|p| p == destination)
    }

    /// The providers or routers it is limited to; empty for all.
    pub fn providers(&self) -> &[String] {
        &self.providers
    }

    /// What to do with a body too large to check; counts it.
    pub fn unchecked(&self) -> Unchecked {
        let outcome = match self.unchecked {
            Unchecked::Refuse => "refused",
            Unchecked::Forward => "forwarded",
        };
        self.unchecked_family
            .get_or_create(&UncheckedLabels { outcome })
            .inc();
        self.unchecked
    }

    /// Checks one whole body; `rewritable` is false when it is not text (then masking is not
    /// possible, and a finding refuses). Counts what it decides.
    pub fn check(&self, text: &str, rewritable: bool) -> Verdict<'_> {
        let found = self.detectors.find(text, &self.on);
        if found.is_empty() {
            return Verdict::Clean;
        }
        let names = self.detectors.names();
        let block = found.iter().find(|f| self.blocks[f.detector]);
        if let (None, false) = (block, rewritable) {
            let f = found[0];
            self.counters[f.detector][0].inc();
            return Verdict::Unmaskable {
                detector: &names[f.detector],
            };
        }
        let mut text_out = String::with_capacity(text.len());
        let mut seen: Vec<usize> = Vec::new();
        let mut at = 0;
        for f in &found {
            text_out.push_str(&text[at..f.start]);
            text_out.push_str(&self.labels[f.detector]);
            at = f.end;
            if !seen.contains(&f.detector) {
                seen.push(f.detector);
            }
        }
        text_out.push_str(&text[at..]);
        if let Some(f) = block {
            self.counters[f.detector][0].inc();
            return Verdict::Blocked {
                detector: &names[f.detector],
                masked: text_out,
            };
        }
        // Per request, not per value: the series counts requests that were masked.
        for &i in &seen {
            self.counters[i][1].inc();
        }
        Verdict::Masked {
            text: text_out,
            detectors: seen.iter().map(|&i| names[i].as_str()).collect(),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;

    fn guard(toml_request: RequestConfig) -> RequestGuard {
        let config = PrivacyConfig {
            request: toml_request,
            ..PrivacyConfig::default()
        };
        RequestGuard::new(&config).unwrap().unwrap()
    }

    const KEY: &str = "sk-proj-abcdefghijklmnopqrstuvwx0123456789";

    #[test]
    fn blocks_masks_and_passes() {
        let g = guard(RequestConfig {
            block: vec!["openai_key".into()],
            mask: vec!["email".into(), "ssn".into()],
            unchecked: Unchecked::Refuse,
            providers: vec!["openai".into()],
        });
        assert!(g.applies_to("openai") && !g.applies_to("my-vllm"));
        let clean = r#"{"messages":[{"role":"user","content":"hello there"}]}"#;
        assert_eq!(g.check(clean, true), Verdict::Clean);

        let body = r#"{"messages":[{"role":"user","content":"mail bob@example.com\nor ann@example.org, ssn 123-45-6789"}]}"#;
        let Verdict::Masked { text, detectors } = g.check(body, true) else {
            panic!("expected a mask");
        };
        assert_eq!(
            text,
            r#"{"messages":[{"role":"user","content":"mail [EMAIL]\nor [EMAIL], ssn [SSN]"}]}"#
        );
        assert_eq!(detectors, ["email", "ssn"]);
        serde_json::from_str::<serde_json::Value>(&text).unwrap();

        // A blocking finding wins over masking ones, wherever it is.
        let both = format!(r#"{{"content":"bob@example.com then {KEY}"}}"#);
        assert_eq!(
            g.check(&both, true),
            Verdict::Blocked {
                detector: "openai_key",
                masked: r#"{"content":"[EMAIL] then [OPENAI_KEY]"}"#.into(),
            }
        );
        assert_eq!(
            g.check(body, false),
            Verdict::Unmaskable { detector: "email" }
        );
        let mut registry = Registry::with_prefix("tally");
        g.register(&mut registry);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry).unwrap();
        assert!(
            out.contains(
                r#"tally_privacy_request_total{detector="openai_key",action="blocked"} 1"#
            ),
            "{out}"
        );
        for line in [
            r#"tally_privacy_request_total{detector="email",action="masked"} 1"#,
            r#"tally_privacy_request_total{detector="ssn",action="masked"} 1"#,
            r#"tally_privacy_request_total{detector="email",action="blocked"} 1"#,
        ] {
            assert!(out.contains(line), "{line} not in {out}");
        }
    }

    #[test]
    fn configured_detectors_and_mistakes() {
        let config = PrivacyConfig {
            words: vec![crate::WordsConfig {
                name: "codename".into(),
                words: vec!["Bluebird".into()],
                case_insensitive: true,
                mode: crate::Mode::Off,
            }],
            request: RequestConfig {
                block: vec!["codename".into()],
                ..RequestConfig::default()
            },
            ..PrivacyConfig::default()
        };
        let g = RequestGuard::new(&config).unwrap().unwrap();
        assert_eq!(
            g.check(r#"{"content":"about project bluebird"}"#, true),
            Verdict::Blocked {
                detector: "codename",
                masked: r#"{"content":"about project [CODENAME]"}"#.into(),
            }
        );
        assert!(RequestGuard::new(&PrivacyConfig::default())
            .unwrap()
            .is_none());
        let bad = |request: RequestConfig| {
            RequestGuard::new(&PrivacyConfig {
                request,
                ..PrivacyConfig::default()
            })
            .unwrap_err()
            .to_string()
        };
        let e = bad(RequestConfig {
            block: vec!["emial".into()],
            ..RequestConfig::default()
        });
        assert!(e.contains("unknown detector \"emial\""), "{e}");
        let e = bad(RequestConfig {
            block: vec!["email".into()],
            mask: vec!["email".into()],
            ..RequestConfig::default()
        });
        assert!(e.contains("listed twice"), "{e}");
    }
}
