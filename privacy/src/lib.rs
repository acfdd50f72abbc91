//! Redaction before storage: personal data and secrets are masked, hashed or dropped from each
//! record on the ingest thread, before any store, spool segment or budget sees it.
//!
//! Why here and not on the request path: the proxy forwards bytes untouched and never waits on
//! logging, so a detector that costs microseconds per KiB must not sit between the client and
//! the provider. The ingest thread already holds every record once, off the event loops, and is
//! the one place both fresh and crash-recovered records pass ([`tally_ingest::RecordFilter`]).
//! What this does not cover: the crash journal, written on the proxy's thread before the
//! channel, holds a record unredacted until its batch is stored (about a second; ARCHITECTURE.md
//! invariant 17), and the provider itself sees everything.
//!
//! [`detect`] finds values; [`Redactor`] decides per record which detectors run and in which
//! mode (the global table, then every matching scope in order), rewrites the texts and counts
//! what it did in `tally_redactions_total{detector,mode}`.

pub mod detect;
mod request;

use std::collections::BTreeMap;

use hmac::{Hmac, Mac};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use serde::Deserialize;
use sha2::Sha256;
use tally_ingest::Record;

use detect::{Detectors, Finding, Pattern, Words, BUILTIN};
pub use request::{RequestConfig, RequestGuard, Unchecked, Verdict};

/// What a detector does with what it finds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Not looked for.
    Off,
    /// Replaced by the detector's name: `[EMAIL]`.
    Mask,
    /// Replaced by a keyed HMAC of the normalized value, `[EMAIL:1f3a9c0b2d4e]`: equal values
    /// still group and count, and nobody without the key can test a guess.
    Hash,
    /// The whole text is not stored: a body becomes absent, a property is removed, a user id
    /// is cleared.
    Drop,
}

impl Mode {
    fn as_str(self) -> &'static str {
        match self {
            Mode::Off => "off",
            Mode::Mask => "mask",
            Mode::Hash => "hash",
            Mode::Drop => "drop",
        }
    }
}

/// `[privacy]`, apart from the HMAC key (the binary resolves it from the environment or a
/// file, like provider keys).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PrivacyConfig {
    /// Mode per detector by name (`email = "hash"`). Unset, secrets are masked and personal
    /// data is left alone.
    pub detectors: BTreeMap<String, Mode>,
    /// `[[privacy.patterns]]`: named regexes.
    pub patterns: Vec<PatternConfig>,
    /// `[[privacy.words]]`: named word lists.
    pub words: Vec<WordsConfig>,
    /// `[[privacy.scopes]]`: overrides for matching records, applied in order (later wins).
    pub scopes: Vec<ScopeConfig>,
    /// Run the detectors over user ids too; false when unset.
    pub redact_user_ids: bool,
    /// The country a phone number without `+` is read in (ISO 3166 code); `US` when unset.
    pub phone_region: String,
    /// `[privacy.request]`: detectors that block or mask on the request path (opt-in).
    pub request: RequestConfig,
}

impl Default for PrivacyConfig {
    fn default() -> Self {
        Self {
            detectors: BTreeMap::new(),
            patterns: Vec::new(),
            words: Vec::new(),
            scopes: Vec::new(),
            redact_user_ids: false,
            phone_region: "US".into(),
            request: RequestConfig::default(),
        }
    }
}

/// `[[privacy.patterns]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PatternConfig {
    /// The detector's name, used in modes, masks and metrics.
    pub name: String,
    /// The regex (Rust `regex` syntax).
    pub regex: String,
    /// Its mode; `mask` when unset.
    #[serde(default = "mask")]
    pub mode: Mode,
}

/// `[[privacy.words]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WordsConfig {
    /// The detector's name.
    pub name: String,
    /// Whole words (or phrases) to find.
    pub words: Vec<String>,
    /// Ignore ASCII case; true when unset.
    #[serde(default = "yes")]
    pub case_insensitive: bool,
    /// Its mode; `mask` when unset.
    #[serde(default = "mask")]
    pub mode: Mode,
}

/// `[[privacy.scopes]]`: which records, and what changes for them. Every condition given must
/// hold.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScopeConfig {
    /// The provider that served the record.
    pub provider: Option<String>,
    /// A property value, `key=value` (a tenant, a feature).
    pub property: Option<String>,
    /// A Tally key, by name or id.
    pub key: Option<String>,
    /// Modes that replace the global ones.
    #[serde(default)]
    pub detectors: BTreeMap<String, Mode>,
    /// Replaces `privacy.redact_user_ids`.
    pub redact_user_ids: Option<bool>,
}

fn mask() -> Mode {
    Mode::Mask
}

fn yes() -> bool {
    true
}

/// A configuration the redactor cannot run with.
#[derive(Debug, thiserror::Error)]
#[error("privacy: {0}")]
pub struct ConfigError(String);

struct Scope {
    provider: Option<String>,
    property: Option<(String, String)>,
    key: Option<String>,
    modes: Vec<(usize, Mode)>,
    redact_user_ids: Option<bool>,
}

impl Scope {
    fn matches(&self, r: &Record) -> bool {
        self.provider.as_ref().is_none_or(|p| *p == r.provider)
            && self
                .property
                .as_ref()
                .is_none_or(|(k, v)| r.properties.get(k) == Some(v))
            && self
                .key
                .as_ref()
                .is_none_or(|k| r.key_name.as_deref() == Some(k) || r.key_id.as_deref() == Some(k))
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RedactionLabels {
    detector: String,
    mode: &'static str,
}

/// Applies the configured policy to records; see the crate docs.
pub struct Redactor {
    detectors: Detectors,
    base: Vec<Mode>,
    scopes: Vec<Scope>,
    redact_user_ids: bool,
    hmac_key: Option<Vec<u8>>,
    region: phonenumber::country::Id,
    /// `[mask, hash, drop]` counters per detector.
    counters: Vec<[Counter; 3]>,
    family: Family<RedactionLabels, Counter>,
    /// Labels per detector: `[EMAIL]`'s `EMAIL`.
    labels: Vec<String>,
}

impl std::fmt::Debug for Redactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redactor")
            .field("detectors", &self.detectors.names())
            .field("base", &self.base)
            .field("scopes", &self.scopes.len())
            .field("hmac_key", &self.hmac_key.as_ref().map(|_| "…"))
            .finish()
    }
}

impl Redactor {
    /// Checks `config` and builds the redactor. `hmac_key` is required when any detector
    /// hashes.
    pub fn new(config: &PrivacyConfig, hmac_key: Option<Vec<u8>>) -> Result<Self, ConfigError> {
        let err = |s: String| ConfigError(s);
        let detectors = build_detectors(config)?;
        let region = detectors.region();
        let index = |name: &str| {
            detectors.index(name).ok_or_else(|| {
                err(format!(
                    "unknown detector {name:?}; the detectors are {}",
                    detectors.names().join(", ")
                ))
            })
        };
        let mut base: Vec<Mode> = BUILTIN
            .iter()
            .map(|n| {
                if detect::is_secret(n) {
                    Mode::Mask
                } else {
                    Mode::Off
                }
            })
            .chain(config.patterns.iter().map(|p| p.mode))
            .chain(config.words.iter().map(|w| w.mode))
            .collect();
        for (name, mode) in &config.detectors {
            base[index(name)?] = *mode;
        }
        let mut scopes = Vec::new();
        for (i, s) in config.scopes.iter().enumerate() {
            if s.provider.is_none() && s.property.is_none() && s.key.is_none() {
                return Err(err(format!(
                    "scopes[{i}] names no provider, property or key; set the global modes in [privacy.detectors] instead"
                )));
            }
            let property = match &s.property {
                None => None,
                Some(p) => match p.split_once('=') {
                    Some((k, v)) if !k.is_empty() => Some((k.to_owned(), v.to_owned())),
                    _ => {
                        return Err(err(format!(
                            "scopes[{i}].property {p:?} must be key=value, like \"tenant=acme\""
                        )))
                    }
                },
            };
            let mut modes = Vec::new();
            for (name, mode) in &s.detectors {
                modes.push((index(name)?, *mode));
            }
            scopes.push(Scope {
                provider: s.provider.clone(),
                property,
                key: s.key.clone(),
                modes,
                redact_user_ids: s.redact_user_ids,
            });
        }
        let hashes = base.contains(&Mode::Hash)
            || scopes
                .iter()
                .any(|s| s.modes.iter().any(|(_, m)| *m == Mode::Hash));
        let hmac_key = hmac_key.filter(|k| !k.is_empty());
        if hashes && hmac_key.is_none() {
            return Err(err(
                "a detector is in hash mode but privacy.hmac_key is not set (or is empty); \
                 set it to { env = \"VAR\" } or { file = \"path\" }"
                    .into(),
            ));
        }
        let family = Family::<RedactionLabels, Counter>::default();
        let counters = detectors
            .names()
            .iter()
            .map(|name| {
                [Mode::Mask, Mode::Hash, Mode::Drop].map(|mode| {
                    family
                        .get_or_create(&RedactionLabels {
                            detector: name.clone(),
                            mode: mode.as_str(),
                        })
                        .clone()
                })
            })
            .collect();
        let labels = detectors
            .names()
            .iter()
            .map(|n| n.to_ascii_uppercase())
            .collect();
        Ok(Self {
            detectors,
            base,
            scopes,
            redact_user_ids: config.redact_user_ids,
            hmac_key,
            region,
            counters,
            family,
            labels,
        })
    }

    /// Registers `tally_redactions_total{detector,mode}` (with the registry's prefix).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "redactions",
            "Values redacted from records before storage, by detector and mode",
            self.family.clone(),
        );
    }

    /// The modes for `record` and whether its user id is looked at.
    fn policy(&self, record: &Record) -> (std::borrow::Cow<'_, [Mode]>, bool) {
        let mut modes = std::borrow::Cow::Borrowed(self.base.as_slice());
        let mut user_ids = self.redact_user_ids;
        for s in self.scopes.iter().filter(|s| s.matches(record)) {
            let m = modes.to_mut();
            for (i, mode) in &s.modes {
                m[*i] = *mode;
            }
            user_ids = s.redact_user_ids.unwrap_or(user_ids);
        }
        (modes, user_ids)
    }

    /// The forms `value` can take in the store: itself, and what the global policy and each
    /// scope's policy rewrite it to, as a user id (`user_id`) or as a property value. `tally
    /// purge` erases every form, so that a purge by the value the client sent also finds the
    /// records where it was stored hashed or masked. (Several scopes matching one record
    /// combine into a policy this does not try; the README says so.)
    pub fn stored_forms(&self, value: &str, user_id: bool) -> Vec<String> {
        let mut policies = vec![(self.base.clone(), self.redact_user_ids)];
        for s in &self.scopes {
            let mut modes = self.base.clone();
            for (i, mode) in &s.modes {
                modes[*i] = *mode;
            }
            policies.push((modes, s.redact_user_ids.unwrap_or(self.redact_user_ids)));
        }
        let mut out = vec![value.to_owned()];
        for (modes, user_ids) in policies {
            if user_id && !user_ids {
                continue;
            }
            if let Some(Some(form)) = self.redact_text(value, &modes) {
                if !out.contains(&form) {
                    out.push(form);
                }
            }
        }
        out
    }

    /// Rewrites `text` by `modes`. `None` means a finding's mode is `drop`.
    pub fn redact_text(&self, text: &str, modes: &[Mode]) -> Option<Option<String>> {
        let on: Vec<bool> = modes.iter().map(|m| *m != Mode::Off).collect();
        let found = self.detectors.find(text, &on);
        self.apply(text, &found, modes)
    }

    /// `Some(None)`: nothing found; `Some(Some(new))`: rewritten; `None`: drop.
    fn apply(&self, text: &str, found: &[Finding], modes: &[Mode]) -> Option<Option<String>> {
        if found.is_empty() {
            return Some(None);
        }
        if let Some(f) = found.iter().find(|f| modes[f.detector] == Mode::Drop) {
            self.counters[f.detector][2].inc();
            return None;
        }
        let mut out = String::with_capacity(text.len());
        let mut at = 0;
        for f in found {
            out.push_str(&text[at..f.start]);
            let label = &self.labels[f.detector];
            out.push('[');
            out.push_str(label);
            if modes[f.detector] == Mode::Hash {
                out.push(':');
                out.push_str(&self.digest(f.detector, &text[f.start..f.end]));
                self.counters[f.detector][1].inc();
            } else {
                self.counters[f.detector][0].inc();
            }
            out.push(']');
            at = f.end;
        }
        out.push_str(&text[at..]);
        Some(Some(out))
    }

    fn digest(&self, detector: usize, value: &str) -> String {
        let normalized = detect::normalize(detector, value, self.region);
        let key = self.hmac_key.as_deref().unwrap_or_default();
        #[allow(clippy::expect_used)]
        let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes a key of any length");
        mac.update(self.detectors.names()[detector].as_bytes());
        mac.update(b"\0");
        mac.update(normalized.as_bytes());
        hex::encode(&mac.finalize().into_bytes()[..6])
    }
}

/// Rewrites one optional text field; `drop` clears it.
fn body(r: &Redactor, field: &mut Option<String>, modes: &[Mode]) {
    if let Some(text) = field.as_deref() {
        match r.redact_text(text, modes) {
            Some(None) => {}
            Some(Some(new)) => *field = Some(new),
            None => *field = None,
        }
    }
}

impl tally_ingest::RecordFilter for Redactor {
    fn filter(&self, record: &mut Record) {
        let (modes, user_ids) = self.policy(record);
        if modes.iter().all(|m| *m == Mode::Off) {
            return;
        }
        let modes = &modes[..];
        body(self, &mut record.request_body, modes);
        body(self, &mut record.response_body, modes);
        body(self, &mut record.upstream_request_body, modes);
        body(self, &mut record.upstream_response_body, modes);
        // An error stays an error: a dropped one keeps a placeholder, so error counts hold.
        if let Some(e) = record.error.as_deref() {
            match self.redact_text(e, modes) {
                Some(None) => {}
                Some(Some(new)) => record.error = Some(new),
                None => record.error = Some("[redacted]".into()),
            }
        }
        let mut gone = Vec::new();
        for (k, v) in record.properties.iter_mut() {
            match self.redact_text(v, modes) {
                Some(None) => {}
                Some(Some(new)) => *v = new,
                None => gone.push(k.clone()),
            }
        }
        for k in gone {
            record.properties.remove(&k);
        }
        if user_ids {
            body(self, &mut record.user_id, modes);
        }
    }
}

/// The built-in detectors plus `config`'s patterns and word lists, checked.
fn build_detectors(config: &PrivacyConfig) -> Result<Detectors, ConfigError> {
    let err = |s: String| ConfigError(s);
    let region: phonenumber::country::Id = config.phone_region.parse().map_err(|_| {
        err(format!(
            "phone_region {:?} is not an ISO 3166 country code like \"US\" or \"GB\"",
            config.phone_region
        ))
    })?;
    let mut seen: Vec<&str> = BUILTIN.to_vec();
    let mut patterns = Vec::new();
    for p in &config.patterns {
        check_name(&p.name, &seen)?;
        seen.push(&p.name);
        let regex = regex::Regex::new(&p.regex)
            .map_err(|e| err(format!("pattern {:?}: invalid regex: {e}", p.name)))?;
        patterns.push(Pattern {
            name: p.name.clone(),
            regex,
        });
    }
    let mut words = Vec::new();
    for w in &config.words {
        check_name(&w.name, &seen)?;
        seen.push(&w.name);
        if w.words.iter().all(|w| w.trim().is_empty()) {
            return Err(err(format!("words {:?}: the list is empty", w.name)));
        }
        words.push(
            Words::new(w.name.clone(), &w.words, w.case_insensitive)
                .map_err(|e| err(format!("words {:?}: {e}", w.name)))?,
        );
    }
    Ok(Detectors::new(patterns, words, region))
}

fn check_name(name: &str, seen: &[&str]) -> Result<(), ConfigError> {
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err(ConfigError(format!(
            "detector name {name:?} must be letters, digits, _ or -"
        )));
    }
    if seen.contains(&name) {
        return Err(ConfigError(format!(
            "detector name {name:?} is used twice (the built-in ones are {})",
            BUILTIN.join(", ")
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
