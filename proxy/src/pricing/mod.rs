//! Prices and cost.
//!
//! The built-in catalog is LiteLLM's price file, trimmed to what Tally proxies
//! (`catalog.json`, made by `scripts/prices/generate.py`, dated in its `_tally` entry): the
//! most complete public list, in a format `tally prices update` takes straight from LiteLLM.
//! Tally's checked corrections are `prices.toml`, applied over it, so that fixing a price is a
//! one-line change a reviewer can check against the provider's page. Order, last wins: the
//! catalog (built in, or the file `tally prices update` wrote), `prices.toml`,
//! `pricing.litellm_file`, `[pricing.models]`.

mod download;
mod litellm;
mod price;
#[cfg(test)]
mod rules;

use std::collections::{BTreeMap, HashMap};

use serde::Deserialize;
use tally_ingest::{Record, Tokens};

use crate::formats::Units;

pub use download::{download, get, LITELLM_URL};
pub use price::{Chosen, Class, LongContext, OffPeak, Price, Usage, Window};

const CATALOG: &str = include_str!("catalog.json");
const CORRECTIONS: &str = include_str!("prices.toml");

/// Errors loading a price file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PricingError {
    /// The built-in or a TOML price file did not parse (the message names line and key).
    #[error("invalid price table: {0}")]
    Toml(#[from] toml::de::Error),
    /// A LiteLLM-format JSON price file is not JSON.
    #[error("invalid price file: {0}")]
    Json(#[from] serde_json::Error),
    /// A catalog could not be fetched.
    #[error("cannot fetch {url}: {why}")]
    Fetch {
        /// What was asked for.
        url: String,
        /// What went wrong.
        why: String,
    },
    /// A LiteLLM-format entry holds a value that is not a price.
    #[error("invalid price file: line {line}, model {model:?}, field {field:?}: {why}")]
    Invalid {
        /// 1-based line of the field (or of its entry).
        line: usize,
        /// The entry's key.
        model: String,
        /// The field's name.
        field: String,
        /// What is wrong with its value.
        why: String,
    },
}

/// Prices of what an endpoint bills by the unit rather than by the token (`[units."name"]`).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnitPrice {
    /// USD per image, by `"quality/size"` (`"hd/1024x1792"`), `"size"` alone, or `"*"` for
    /// any size.
    #[serde(default)]
    pub per_image: BTreeMap<String, f64>,
    /// USD per minute of audio transcribed or translated.
    pub per_minute: Option<f64>,
    /// USD per million characters of text turned into speech.
    pub per_million_characters: Option<f64>,
}

impl UnitPrice {
    /// Cost of `units` in USD; `None` when this entry does not price that kind, or that size.
    pub fn cost(&self, units: &Units) -> Option<f64> {
        match units {
            Units::Images { n, size, quality } => {
                let each = self
                    .per_image
                    .get(&format!("{quality}/{size}"))
                    .or_else(|| self.per_image.get(size))
                    .or_else(|| self.per_image.get("*"))?;
                Some(*n as f64 * each)
            }
            Units::AudioSeconds { seconds, .. } => Some(seconds / 60.0 * self.per_minute?),
            Units::Characters(n) => Some(*n as f64 * self.per_million_characters? / 1_000_000.0),
        }
    }
}

/// Where an entry of the table came from, for `tally prices show`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The catalog: built in, or the file `tally prices update` wrote.
    Catalog,
    /// Tally's checked corrections (`prices.toml`).
    Corrections,
    /// `pricing.litellm_file`.
    LiteLlmFile,
    /// `[pricing.models]` in the config.
    Config,
}

impl Origin {
    /// How `tally prices show` names it.
    pub fn describe(self) -> &'static str {
        match self {
            Origin::Catalog => "the catalog",
            Origin::Corrections => "Tally's corrections (prices.toml)",
            Origin::LiteLlmFile => "pricing.litellm_file",
            Origin::Config => "[pricing.models] in the config",
        }
    }
}

/// Model name → price, with the lookup rules of [`PricingTable::lookup`].
#[derive(Debug, Clone, Default)]
pub struct PricingTable {
    models: HashMap<String, Price>,
    units: HashMap<String, UnitPrice>,
    origins: HashMap<String, Origin>,
    source: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TomlFile {
    #[serde(default)]
    models: HashMap<String, Price>,
    #[serde(default)]
    units: HashMap<String, UnitPrice>,
}

impl PricingTable {
    /// The catalog shipped in the binary, with Tally's corrections.
    pub fn builtin() -> Result<Self, PricingError> {
        Self::with_catalog(CATALOG)
    }

    /// A LiteLLM-format catalog (what `tally prices update` fetched) with Tally's corrections
    /// over it.
    pub fn with_catalog(json: &str) -> Result<Self, PricingError> {
        let mut t = Self::default();
        let parsed = litellm::parse(json)?;
        t.source = parsed.source.clone();
        t.take(parsed, Origin::Catalog);
        t.extend_toml_from(CORRECTIONS, Origin::Corrections)?;
        Ok(t)
    }

    /// Where the entry `key` (as [`PricingTable::lookup_entry`] names it) came from.
    pub fn origin(&self, key: &str) -> Option<Origin> {
        self.origins.get(key).copied()
    }

    /// Where the catalog came from and when it was made, as its `_tally` entry says.
    pub fn source(&self) -> Option<&str> {
        self.source.as_deref()
    }

    /// Checks that `json` is a usable catalog, returning how many models it prices.
    pub fn check_catalog(json: &str) -> Result<usize, PricingError> {
        Ok(litellm::parse(json)?.models.len())
    }

    /// Adds or replaces prices from a TOML document with a `[models."name"]` table.
    pub fn extend_toml(&mut self, text: &str) -> Result<usize, PricingError> {
        self.extend_toml_from(text, Origin::Config)
    }

    fn extend_toml_from(&mut self, text: &str, origin: Origin) -> Result<usize, PricingError> {
        let file: TomlFile = toml::from_str(text)?;
        let n = file.models.len() + file.units.len();
        for (k, v) in file.models {
            self.insert_from(&k, v, origin);
        }
        for (k, v) in file.units {
            self.insert_units(&k, v);
        }
        Ok(n)
    }

    /// Adds prices from a LiteLLM-format JSON price file, replacing existing entries. Entries
    /// that price nothing Tally bills are skipped. Returns how many were taken.
    pub fn extend_litellm(&mut self, json: &str) -> Result<usize, PricingError> {
        let parsed = litellm::parse(json)?;
        let n = parsed.models.len();
        self.take(parsed, Origin::LiteLlmFile);
        Ok(n)
    }

    fn take(&mut self, parsed: litellm::Parsed, origin: Origin) {
        for (k, v) in parsed.models {
            self.insert_from(&k, v, origin);
        }
        for (k, v) in parsed.units {
            self.insert_units(&k, v);
        }
    }

    /// Adds or replaces one model's per-unit prices.
    pub fn insert_units(&mut self, model: &str, price: UnitPrice) {
        self.units.insert(model.to_ascii_lowercase(), price);
    }

    /// Adds or replaces one model's price.
    pub fn insert(&mut self, model: &str, price: Price) {
        self.insert_from(model, price, Origin::Config);
    }

    fn insert_from(&mut self, model: &str, price: Price, origin: Origin) {
        let key = model.to_ascii_lowercase();
        self.origins.insert(key.clone(), origin);
        self.models.insert(key, price);
    }

    /// Number of priced models.
    pub fn len(&self) -> usize {
        self.models.len()
    }

    /// True when no model is priced.
    pub fn is_empty(&self) -> bool {
        self.models.is_empty()
    }

    /// Finds the price for `model` as served by `provider`: `provider/model` first, then the
    /// model itself, then without any vendor prefix (`openai/`, `models/`), each of those also
    /// with a trailing snapshot date removed. A dated snapshot the table lists keeps its own
    /// price; `-latest` is never stripped (it names whatever the provider serves now, which
    /// only an entry of its own can price).
    pub fn lookup(&self, provider: &str, model: &str) -> Option<&Price> {
        self.lookup_entry(provider, model).map(|(_, p)| p)
    }

    /// [`PricingTable::lookup`], with the key of the entry found.
    pub fn lookup_entry(&self, provider: &str, model: &str) -> Option<(&str, &Price)> {
        find(&self.models, provider, model)
    }

    /// Cost in USD of tokens at the standard tier, or `None` when the model is not priced.
    pub fn cost(&self, provider: &str, model: &str, tokens: &Tokens) -> Option<f64> {
        self.bill(provider, model, &Usage::tokens(*tokens))
    }

    /// Cost in USD of everything `usage` counts, or `None` when the model is not priced.
    pub fn bill(&self, provider: &str, model: &str, usage: &Usage) -> Option<f64> {
        self.lookup(provider, model)
            .map(|p| p.bill(usage, |_, _, _| {}).0)
    }

    /// What a record cost: its tokens (with its service tier, web searches and start time) plus,
    /// for an endpoint billed by the unit, its `units`. The response's model is tried first,
    /// then the requested one: a response model the table does not know (a fine-tune, a new
    /// snapshot name) may still be priced under the requested name. `None` when neither is
    /// priced. The request path and `tally reprice` both price with this.
    pub fn price_record(&self, r: &Record, units: Option<&Units>) -> Option<f64> {
        let names = [r.response_model.as_deref(), r.model.as_deref()];
        let names = || names.iter().flatten().copied();
        let tokens = r.tokens.and_then(|tokens| {
            let usage = Usage {
                tokens,
                service_tier: r.service_tier.as_deref(),
                web_search_calls: r.web_search_calls.into(),
                at_ms: Some(r.ts),
            };
            names().find_map(|m| self.bill(&r.provider, m, &usage))
        });
        let units = units.and_then(|u| names().find_map(|m| self.unit_cost(&r.provider, m, u)));
        // A model is priced by the token (gpt-image-1, gpt-4o-transcribe) or by the unit
        // (dall-e-3, whisper-1, tts-1); whichever the table knows counts.
        match (tokens, units) {
            (Some(t), Some(u)) => Some(t + u),
            (t, u) => t.or(u),
        }
    }

    /// The per-unit prices of `model`, found as [`PricingTable::lookup`] finds token prices.
    pub fn lookup_units(&self, provider: &str, model: &str) -> Option<&UnitPrice> {
        self.lookup_units_entry(provider, model).map(|(_, p)| p)
    }

    /// [`PricingTable::lookup_units`], with the key of the entry found.
    pub fn lookup_units_entry(&self, provider: &str, model: &str) -> Option<(&str, &UnitPrice)> {
        find(&self.units, provider, model)
    }

    /// Cost of `units` in USD, or `None` when the model has no price for them.
    pub fn unit_cost(&self, provider: &str, model: &str, units: &Units) -> Option<f64> {
        self.lookup_units(provider, model)?.cost(units)
    }
}

/// The entry of `map` for `model` as served by `provider`; see [`PricingTable::lookup`].
fn find<'a, T>(
    map: &'a HashMap<String, T>,
    provider: &str,
    model: &str,
) -> Option<(&'a str, &'a T)> {
    let model = model.trim().to_ascii_lowercase();
    let provider = provider.to_ascii_lowercase();
    let bare = model.rsplit('/').next().unwrap_or(&model).to_owned();
    let mut candidates = vec![format!("{provider}/{model}"), model.clone()];
    if let Some(base) = bedrock_base(&bare) {
        candidates.push(format!("{provider}/{base}"));
        candidates.push(base.to_owned());
    }
    candidates.push(format!("{provider}/{bare}"));
    candidates.push(bare);
    for c in &candidates {
        let mut name = c.as_str();
        loop {
            if let Some((k, p)) = map.get_key_value(name) {
                return Some((k.as_str(), p));
            }
            match strip_version_suffix(name) {
                Some(shorter) => name = shorter,
                None => break,
            }
        }
    }
    None
}

/// The model a Bedrock model id names: `claude-3-haiku-20240307` for
/// `us.anthropic.claude-3-haiku-20240307-v1:0`, `nova-lite` for `amazon.nova-lite-v1:0`. A
/// cross-region inference profile's geography (`us.`, `eu.`, `global.`, …), the vendor and the
/// `-v1:0` version go; `None` for anything not shaped so.
fn bedrock_base(id: &str) -> Option<&str> {
    const GEOGRAPHIES: &[&str] = &[
        "us.", "eu.", "apac.", "global.", "us-gov.", "jp.", "au.", "ca.",
    ];
    const VENDORS: &[&str] = &[
        "anthropic.",
        "amazon.",
        "meta.",
        "mistral.",
        "cohere.",
        "ai21.",
        "deepseek.",
        "openai.",
        "qwen.",
        "writer.",
        "stability.",
    ];
    let mut rest = id;
    if let Some(g) = GEOGRAPHIES.iter().find(|g| rest.starts_with(**g)) {
        rest = &rest[g.len()..];
    }
    let vendor = VENDORS.iter().find(|v| rest.starts_with(**v))?;
    rest = &rest[vendor.len()..];
    // `-v1:0`, `-v2`, `-1:0`, `:0`: the version Bedrock appends.
    if let Some((head, tail)) = rest.rsplit_once(':') {
        if tail.bytes().all(|b| b.is_ascii_digit()) {
            rest = head;
        }
    }
    if let Some((head, tail)) = rest.rsplit_once('-') {
        let digits = tail.strip_prefix('v').unwrap_or(tail);
        if !digits.is_empty() && digits.len() <= 2 && digits.bytes().all(|b| b.is_ascii_digit()) {
            rest = head;
        }
    }
    (!rest.is_empty()).then_some(rest)
}

/// Removes one trailing snapshot marker: `@20241022`, `-2024-08-06`, `-20250929`,
/// `-0613`/`-2411` (four digits), or `-001`. Returns `None` when there is none.
fn strip_version_suffix(name: &str) -> Option<&str> {
    if let Some(i) = name.rfind('@') {
        return Some(&name[..i]);
    }
    let is_digits = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_digit());
    // -YYYY-MM-DD. Model names come from request bodies and may be any Unicode: compare bytes,
    // and cut only where the suffix is all ASCII (so the cut is a character boundary).
    let bytes = name.as_bytes();
    if bytes.len() > 11 {
        let tail = &bytes[bytes.len() - 11..];
        let digits = |r: std::ops::Range<usize>| tail[r].iter().all(u8::is_ascii_digit);
        if tail[0] == b'-'
            && tail[5] == b'-'
            && tail[8] == b'-'
            && digits(1..5)
            && digits(6..8)
            && digits(9..11)
        {
            return name.get(..name.len() - 11);
        }
    }
    let (head, last) = name.rsplit_once('-')?;
    if is_digits(last, 8) || is_digits(last, 4) || is_digits(last, 3) {
        return Some(head);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(
        prompt: u64,
        completion: u64,
        cache_read: u64,
        cache_write: u64,
        reasoning: u64,
    ) -> Tokens {
        Tokens {
            prompt,
            completion,
            cache_read,
            cache_write,
            cache_write_1h: 0,
            reasoning,
        }
    }

    /// Found by the `pricing` fuzz target: a multi-byte character where the date suffix would
    /// start used to panic (a byte index inside a character).
    #[test]
    fn units_are_priced_by_size_quality_minute_and_character() {
        let t = PricingTable::builtin().expect("builtin");
        let images = |n, size: &str, quality: &str| Units::Images {
            n,
            size: size.into(),
            quality: quality.into(),
        };
        // Rounded to a micro-dollar: the products are not exact in binary.
        let cost = |model: &str, u: &Units| {
            t.unit_cost("openai", model, u)
                .map(|c| (c * 1e6).round() / 1e6)
        };
        assert_eq!(cost("dall-e-3", &images(2, "1792x1024", "hd")), Some(0.24));
        assert_eq!(
            cost("dall-e-2", &images(1, "512x512", "standard")),
            Some(0.018)
        );
        assert_eq!(
            cost("dall-e-3", &images(1, "999x999", "hd")),
            None,
            "no such size"
        );
        let minute = Units::AudioSeconds {
            seconds: 90.0,
            estimated: false,
        };
        assert_eq!(cost("whisper-1", &minute), Some(0.009));
        assert_eq!(cost("tts-1-hd", &Units::Characters(1000)), Some(0.03));
        assert_eq!(cost("gpt-4o", &Units::Characters(1000)), None);
    }

    #[test]
    fn bedrock_model_ids_find_the_models_they_name() {
        assert_eq!(
            bedrock_base("us.anthropic.claude-3-haiku-20240307-v1:0"),
            Some("claude-3-haiku-20240307")
        );
        assert_eq!(bedrock_base("amazon.nova-lite-v1:0"), Some("nova-lite"));
        assert_eq!(
            bedrock_base("openai.gpt-oss-120b-1:0"),
            Some("gpt-oss-120b")
        );
        assert_eq!(
            bedrock_base("meta.llama3-3-70b-instruct-v1:0"),
            Some("llama3-3-70b-instruct")
        );
        assert_eq!(bedrock_base("gpt-4o"), None);
        assert_eq!(bedrock_base("anthropic."), None);
        let t = PricingTable::builtin().expect("builtin");
        let tokens = Tokens {
            prompt: 1_000_000,
            completion: 1_000_000,
            ..Tokens::default()
        };
        let arn = "arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.anthropic.claude-sonnet-4-5-20250929-v1:0";
        assert_eq!(t.cost("bedrock", arn, &tokens), Some(18.0));
        assert_eq!(
            t.cost("bedrock", "amazon.nova-pro-v1:0", &tokens),
            Some(4.0)
        );
        assert_eq!(
            t.cost("bedrock", "meta.llama3-1-70b-instruct-v1:0", &tokens),
            Some(1.44)
        );
    }

    #[test]
    fn non_ascii_model_names_do_not_panic() {
        let t = table();
        for name in [
            "xé0123456789",
            "é-2024-08-06",
            "gpt-4o-2024-08-0é",
            "模型-20250929",
            "ü@",
        ] {
            let _ = t.lookup("openai", name);
            let _ = strip_version_suffix(name);
        }
        assert_eq!(strip_version_suffix("gpt-4o-2024-08-06"), Some("gpt-4o"));
        assert_eq!(strip_version_suffix("модель-2024-08-06"), Some("модель"));
    }

    fn table() -> PricingTable {
        PricingTable::builtin().expect("builtin parses")
    }

    #[test]
    fn builtin_covers_each_vendor() {
        let t = table();
        for (provider, model) in [
            ("openai", "gpt-4o"),
            ("openai", "o3"),
            ("anthropic", "claude-sonnet-4-5"),
            ("gemini", "gemini-2.5-flash"),
            ("mistral", "mistral-large-latest"),
            ("deepseek", "deepseek-chat"),
            ("xai", "grok-4"),
            ("groq", "llama-3.3-70b-versatile"),
        ] {
            assert!(t.lookup(provider, model).is_some(), "{provider}/{model}");
        }
    }

    #[test]
    fn snapshots_and_prefixes_fall_back() {
        let t = table();
        let gpt4o = t.lookup("openai", "gpt-4o").cloned();
        assert_eq!(t.lookup("openai", "gpt-4o-2024-08-06").cloned(), gpt4o);
        assert_eq!(t.lookup("openrouter", "openai/gpt-4o").cloned(), gpt4o);
        assert_eq!(t.lookup("openai", "GPT-4o").cloned(), gpt4o);
        let mini = t.lookup("openai", "gpt-4o-mini").cloned();
        assert_ne!(mini, gpt4o);
        assert_eq!(t.lookup("openai", "gpt-4o-mini-2024-07-18").cloned(), mini);
        assert_eq!(
            t.lookup("anthropic", "claude-sonnet-4-5-20250929").cloned(),
            t.lookup("anthropic", "claude-sonnet-4-5").cloned()
        );
        // Vertex's own entries: its snapshot, and its undated name for another snapshot.
        assert_eq!(
            t.lookup_entry("vertex", "claude-3-5-sonnet@20240620")
                .map(|e| e.0),
            Some("vertex/claude-3-5-sonnet@20240620")
        );
        assert_eq!(
            t.lookup_entry("vertex", "claude-3-5-sonnet@20241022")
                .map(|e| e.0),
            Some("vertex/claude-3-5-sonnet")
        );
        // A snapshot Vertex's catalog lacks falls back to its undated name.
        assert_eq!(
            t.lookup_entry("vertex", "claude-3-opus@20990101")
                .map(|e| e.0),
            Some("claude-3-opus")
        );
        assert_eq!(
            t.lookup("gemini", "models/gemini-2.5-pro").cloned(),
            t.lookup("gemini", "gemini-2.5-pro").cloned()
        );
        assert!(t.lookup("openai", "gpt-3.5-turbo-0125").is_some());
        assert!(t.lookup("mistral", "mistral-large-2411").is_some());
    }

    #[test]
    fn provider_specific_price_wins_only_for_that_provider() {
        let t = table();
        let (groq, _) = t.lookup_entry("groq", "openai/gpt-oss-120b").expect("groq");
        let (generic, _) = t
            .lookup_entry("ollama", "openai/gpt-oss-120b")
            .expect("generic");
        assert_eq!(groq, "groq/openai/gpt-oss-120b");
        assert_eq!(generic, "gpt-oss-120b");
        // The catalog's vertex_ai/ and together_ai/ keys answer to Tally's provider names.
        assert_eq!(
            t.lookup_entry("together", "openai/gpt-oss-120b")
                .map(|e| e.0),
            Some("together/openai/gpt-oss-120b")
        );
        assert_eq!(
            t.lookup_entry("google", "gemini-2.5-pro").map(|e| e.0),
            Some("google/gemini-2.5-pro")
        );
    }

    #[test]
    fn unknown_model_has_no_price() {
        assert_eq!(
            table().cost("openai", "my-finetune-xyz", &t(1, 1, 0, 0, 0)),
            None
        );
        assert_eq!(table().cost("openai", "", &t(1, 1, 0, 0, 0)), None);
    }

    #[test]
    fn cost_splits_cache_and_reasoning() {
        let p = Price {
            input: 3.0,
            output: 15.0,
            cached_input: Some(0.3),
            cache_write: Some(3.75),
            reasoning: Some(20.0),
            ..Price::default()
        };
        // 1M prompt of which 200k read and 100k written; 1M completion of which 500k reasoning.
        let c = p.cost(&t(1_000_000, 1_000_000, 200_000, 100_000, 500_000));
        let expected = 0.7 * 3.0 + 0.2 * 0.3 + 0.1 * 3.75 + 0.5 * 15.0 + 0.5 * 20.0;
        assert!((c - expected).abs() < 1e-9, "{c} vs {expected}");
    }

    #[test]
    fn inconsistent_counts_never_underflow() {
        let p = table().lookup("openai", "gpt-4o").cloned().expect("priced");
        let c = p.cost(&t(10, 5, 50, 50, 99));
        assert!(c.is_finite() && c >= 0.0);
    }

    #[test]
    fn litellm_file_is_read_per_token_and_skips_non_token_modes() {
        let mut t = PricingTable::default();
        let n = t
            .extend_litellm(
                r#"{
                "sample_spec": {"max_tokens": "set to max"},
                "my-model": {"input_cost_per_token": 1e-6, "output_cost_per_token": 2e-6,
                             "cache_read_input_token_cost": 1e-7, "litellm_provider": "openai", "mode": "chat"},
                "dall-e-3": {"output_cost_per_image": 0.04, "mode": "image_generation"}
            }"#,
            )
            .expect("parses");
        assert_eq!(n, 1);
        let p = t.lookup("openai", "my-model").expect("loaded");
        assert!((p.input - 1.0).abs() < 1e-9 && (p.output - 2.0).abs() < 1e-9);
        assert_eq!(p.cached_input.map(|v| (v * 10.0).round()), Some(1.0));
    }

    #[test]
    fn suffix_stripping() {
        assert_eq!(strip_version_suffix("gpt-4o-2024-08-06"), Some("gpt-4o"));
        assert_eq!(
            strip_version_suffix("claude-3-haiku-20240307"),
            Some("claude-3-haiku")
        );
        assert_eq!(strip_version_suffix("gpt-4-0613"), Some("gpt-4"));
        assert_eq!(
            strip_version_suffix("gemini-1.5-pro-002"),
            Some("gemini-1.5-pro")
        );
        assert_eq!(strip_version_suffix("gpt-4o"), None);
        assert_eq!(strip_version_suffix("o3"), None);
        assert_eq!(strip_version_suffix("grok-3-mini"), None);
    }
}
