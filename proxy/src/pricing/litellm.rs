//! LiteLLM's price-file format (`model_prices_and_context_window.json`): the format of Tally's
//! built-in catalog, of `tally prices update --from`, and of `pricing.litellm_file`.
//!
//! Each entry is USD per token (or per second, character, image, call), with the pricing rules
//! spelled into field names: `input_cost_per_token_above_200k_tokens_priority` is the input
//! rate under the priority tier once the prompt passes 200k tokens. This module reads those
//! names into [`Price`]'s structure and ignores the fields that price nothing Tally proxies.
//! A value that is not a finite, non-negative number is an error naming its line, model and
//! field: a typo in a price file must not become a free or an infinite model.

use std::collections::{BTreeMap, HashMap};

use serde_json::value::RawValue;
use serde_json::Value;

use super::price::{span, LongContext, OffPeak, Price, Window};
use super::{PricingError, UnitPrice};

/// What a price file holds, keyed as Tally looks models up.
#[derive(Debug, Default)]
pub(super) struct Parsed {
    pub models: Vec<(String, Price)>,
    pub units: Vec<(String, UnitPrice)>,
    /// The catalog's `_tally.source` and `_tally.generated`, when it has them.
    pub source: Option<String>,
}

/// The most a token can cost, in USD.
const MAX_PER_TOKEN: f64 = 0.01;

/// The token classes a field can price.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rate {
    Input,
    Output,
    CachedInput,
    CacheWrite,
    CacheWrite1h,
    Reasoning,
}

/// Base names, longest first (`…_above_1hr` before its prefix).
const BASES: &[(&str, Rate)] = &[
    (
        "cache_creation_input_token_cost_above_1hr",
        Rate::CacheWrite1h,
    ),
    ("cache_creation_input_token_cost", Rate::CacheWrite),
    ("cache_read_input_token_cost", Rate::CachedInput),
    ("output_cost_per_reasoning_token", Rate::Reasoning),
    ("input_cost_per_token", Rate::Input),
    ("output_cost_per_token", Rate::Output),
];

/// A token-rate field's parts: its class, its long-context threshold, its service tier.
fn token_field(name: &str) -> Option<(Rate, Option<u64>, Option<&str>)> {
    let (rest, rate) = BASES
        .iter()
        .find_map(|(base, rate)| name.strip_prefix(base).map(|rest| (rest, *rate)))?;
    let (above, rest) = match rest.strip_prefix("_above_") {
        Some(r) => {
            let (n, tail) = r.split_once("k_tokens")?;
            (Some(n.parse::<u64>().ok()? * 1_000), tail)
        }
        None => (None, rest),
    };
    let tier = match rest {
        "" => None,
        t => {
            let t = t.strip_prefix('_')?;
            if t.is_empty() || !t.bytes().all(|b| b.is_ascii_lowercase()) {
                return None;
            }
            Some(if t == "batches" { "batch" } else { t })
        }
    };
    Some((rate, above, tier))
}

/// LiteLLM's provider prefixes that Tally names differently; Google AI Studio is both of
/// Tally's `gemini` (its OpenAI-compatible endpoint) and `google` (its native API).
fn tally_keys(key: &str) -> Vec<String> {
    const RENAMED: &[(&str, &[&str])] = &[
        ("together_ai/", &["together/"]),
        ("fireworks_ai/", &["fireworks/"]),
        ("vertex_ai/", &["vertex/"]),
        ("gemini/", &["gemini/", "google/"]),
    ];
    for (prefix, names) in RENAMED {
        if let Some(rest) = key.strip_prefix(prefix) {
            return names.iter().map(|n| format!("{n}{rest}")).collect();
        }
    }
    vec![key.to_owned()]
}

/// One tier's rates while they are collected: by class, at the base and above thresholds.
#[derive(Default)]
struct Rates {
    base: HashMap<RateKey, f64>,
    above: BTreeMap<u64, HashMap<RateKey, f64>>,
}

type RateKey = u8;

fn key(r: Rate) -> RateKey {
    r as u8
}

impl Rates {
    fn get(map: &HashMap<RateKey, f64>, r: Rate) -> Option<f64> {
        map.get(&key(r)).copied()
    }

    /// The tier as a [`Price`]; classes it leaves unset come from `fallback` (the base
    /// tier), so a `flex` entry that names only input and output still has cache rates.
    fn price(&self, fallback: Option<&Price>) -> Option<Price> {
        let b = &self.base;
        // Per token to per million, rounded to a billionth of a dollar: 8e-7 × 1e6 is
        // 0.7999999999999999 in binary, and a table that says 0.8 should bill 0.8.
        let per_m = |v: f64| (v * 1e12).round() / 1e6;
        let or = |r: Rate, f: fn(&Price) -> Option<f64>| {
            Self::get(b, r).map(per_m).or(fallback.and_then(f))
        };
        let input = or(Rate::Input, |p| Some(p.input))?;
        let output = or(Rate::Output, |p| Some(p.output))?;
        let above = self
            .above
            .iter()
            .map(|(tokens, m)| LongContext {
                tokens: *tokens,
                input: Self::get(m, Rate::Input).map(per_m),
                output: Self::get(m, Rate::Output).map(per_m),
                cached_input: Self::get(m, Rate::CachedInput).map(per_m),
                cache_write: Self::get(m, Rate::CacheWrite).map(per_m),
                cache_write_1h: Self::get(m, Rate::CacheWrite1h).map(per_m),
                reasoning: Self::get(m, Rate::Reasoning).map(per_m),
            })
            .collect();
        Some(Price {
            input,
            output,
            cached_input: or(Rate::CachedInput, |p| p.cached_input),
            cache_write: or(Rate::CacheWrite, |p| p.cache_write),
            cache_write_1h: or(Rate::CacheWrite1h, |p| p.cache_write_1h),
            reasoning: or(Rate::Reasoning, |p| p.reasoning),
            above,
            service_tier: BTreeMap::new(),
            web_search: None,
            off_peak: None,
        })
    }
}

/// LiteLLM's `off_peak_pricing`: per-token rates beside `windows` of UTC weekdays and
/// `HH:MM-HH:MM` spans. Rates it leaves out keep the base price's.
fn off_peak_rates(base: &Price, v: &Value) -> Result<OffPeak, String> {
    let o = v.as_object().ok_or("expected an object")?;
    let mut rates = Rates::default();
    for (field, n) in o {
        if let Some((rate, None, None)) = token_field(field) {
            let n = n
                .as_f64()
                .filter(|n| n.is_finite() && *n >= 0.0 && *n <= MAX_PER_TOKEN)
                .ok_or_else(|| format!("{field}: expected a per-token price, found {n}"))?;
            rates.base.insert(key(rate), n);
        }
    }
    let price = rates.price(Some(base)).ok_or("no rates")?;
    let windows = o
        .get("windows")
        .and_then(Value::as_array)
        .ok_or("expected windows")?
        .iter()
        .map(|w| {
            let weekdays = w
                .get("weekdays")
                .and_then(Value::as_array)
                .ok_or("a window needs weekdays")?
                .iter()
                .map(|d| d.as_u64().filter(|d| (1..=7).contains(d)).map(|d| d as u8))
                .collect::<Option<Vec<_>>>()
                .ok_or("weekdays are 1 (Monday) to 7")?;
            // One span or a list of them.
            let hours: Vec<String> = match w.get("hours_utc") {
                Some(Value::String(s)) => vec![s.clone()],
                Some(Value::Array(a)) => a
                    .iter()
                    .map(|s| s.as_str().map(str::to_owned))
                    .collect::<Option<_>>()
                    .ok_or("hours_utc are \"HH:MM-HH:MM\" texts")?,
                _ => return Err("a window needs hours_utc".to_owned()),
            };
            if let Some(bad) = hours.iter().find(|h| span(h).is_none()) {
                return Err(format!("{bad:?} is not a HH:MM-HH:MM span"));
            }
            Ok(Window {
                weekdays,
                hours_utc: hours,
            })
        })
        .collect::<Result<Vec<_>, String>>()?;
    Ok(OffPeak {
        rates: Box::new(price),
        windows,
    })
}

/// The line (1-based) of byte `offset` in `text`.
fn line_at(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

/// Parses a LiteLLM-format price file.
pub(super) fn parse(text: &str) -> Result<Parsed, PricingError> {
    let raw: BTreeMap<String, &RawValue> = serde_json::from_str(text)?;
    let mut out = Parsed::default();
    for (name, raw) in raw {
        let at = raw.get().as_ptr() as usize - text.as_ptr() as usize;
        if name == "_tally" {
            let meta: Value = serde_json::from_str(raw.get())?;
            let s = |k: &str| meta.get(k).and_then(Value::as_str).map(str::to_owned);
            out.source = match (s("source"), s("generated")) {
                (Some(src), Some(date)) => Some(format!("{src}, generated {date}")),
                (src, _) => src,
            };
            continue;
        }
        if name == "sample_spec" {
            continue;
        }
        let invalid = |field: &str, why: String| {
            // The field's own line where it can be found in the entry's text.
            let line = raw
                .get()
                .find(&format!("\"{field}\""))
                .map_or(line_at(text, at), |i| line_at(text, at + i));
            PricingError::Invalid {
                line,
                model: name.clone(),
                field: field.to_owned(),
                why,
            }
        };
        let Value::Object(entry) = serde_json::from_str::<Value>(raw.get())? else {
            return Err(invalid("", "an entry must be an object".into()));
        };
        let number = |field: &str, v: &Value| -> Result<f64, PricingError> {
            match v.as_f64() {
                Some(n) if n.is_finite() && n >= 0.0 => Ok(n),
                _ => Err(invalid(
                    field,
                    format!("expected a non-negative number, found {v}"),
                )),
            }
        };
        let mut tiers: BTreeMap<Option<String>, Rates> = BTreeMap::new();
        let mut units = UnitPrice::default();
        let mut web_search = None;
        let mut off_peak = None;
        for (field, v) in &entry {
            if let Some((rate, above, tier)) = token_field(field) {
                let n = number(field, v)?;
                // $10,000 per million tokens is 16 times the dearest model there is; more
                // is a unit mistake (per million written where per token was meant).
                if n > MAX_PER_TOKEN {
                    return Err(invalid(
                        field,
                        format!("{n} USD per token is not a price (at most {MAX_PER_TOKEN})"),
                    ));
                }
                let rates = tiers.entry(tier.map(str::to_owned)).or_default();
                let map = match above {
                    Some(t) => rates.above.entry(t).or_default(),
                    None => &mut rates.base,
                };
                map.insert(key(rate), n);
                continue;
            }
            match field.as_str() {
                "input_cost_per_second" => units.per_minute = Some(number(field, v)? * 60.0),
                "input_cost_per_character" => {
                    units.per_million_characters = Some(number(field, v)? * 1_000_000.0)
                }
                "output_cost_per_image" => {
                    units.per_image.insert("*".into(), number(field, v)?);
                }
                "off_peak_pricing" => off_peak = Some((field.as_str(), v)),
                "search_context_cost_per_query" => {
                    // Sized by how much context the search returns; the medium size is the
                    // providers' default.
                    let fee = v
                        .get("search_context_size_medium")
                        .or_else(|| v.as_object().and_then(|o| o.values().next()))
                        .ok_or_else(|| invalid(field, "expected search_context_size_*".into()))?;
                    web_search = Some(number(field, fee)?);
                }
                _ => {}
            }
        }
        let base_rates = tiers.remove(&None).unwrap_or_default();
        // Embeddings and moderation bill input only; LiteLLM often leaves their output out.
        let input_only = matches!(
            entry.get("mode").and_then(Value::as_str),
            Some("embedding" | "moderation")
        );
        let mut base = base_rates.price(None);
        if base.is_none() && input_only {
            base = base_rates.price(Some(&Price::default()));
        }
        let keys = tally_keys(&name);
        if let Some(mut price) = base {
            price.web_search = web_search;
            // docs.fireworks.ai/guides/prompt-caching: serverless cached prompt tokens are
            // billed at half the input price unless the model's page says otherwise.
            if price.cached_input.is_none() && name.starts_with("fireworks_ai/") {
                price.cached_input = Some(price.input / 2.0);
            }
            if let Some((field, v)) = off_peak {
                price.off_peak =
                    Some(off_peak_rates(&price, v).map_err(|why| invalid(field, why))?);
            }
            for (tier, rates) in tiers {
                if let (Some(tier), Some(p)) = (tier, rates.price(Some(&price))) {
                    price.service_tier.insert(tier, p);
                }
            }
            for k in &keys {
                out.models.push((k.clone(), price.clone()));
            }
        }
        if units != UnitPrice::default() {
            for k in keys {
                out.units.push((k, units.clone()));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_names_split_into_class_threshold_and_tier() {
        assert_eq!(
            token_field("input_cost_per_token"),
            Some((Rate::Input, None, None))
        );
        assert_eq!(
            token_field("input_cost_per_token_above_200k_tokens_priority"),
            Some((Rate::Input, Some(200_000), Some("priority")))
        );
        assert_eq!(
            token_field("cache_creation_input_token_cost_above_1hr_above_200k_tokens"),
            Some((Rate::CacheWrite1h, Some(200_000), None))
        );
        assert_eq!(
            token_field("output_cost_per_token_batches"),
            Some((Rate::Output, None, Some("batch")))
        );
        // Not rates Tally bills: a 12-hour cache, an audio token, a cache-hit alias.
        assert_eq!(
            token_field("cache_creation_input_token_cost_above_12hr"),
            None
        );
        assert_eq!(token_field("input_cost_per_audio_token"), None);
        assert_eq!(token_field("input_cost_per_token_cache_hit"), None);
    }

    #[test]
    fn a_bad_value_names_its_line_model_and_field() {
        let text = "{\n  \"good\": {\"input_cost_per_token\": 1e-6, \"output_cost_per_token\": 2e-6},\n  \"bad\": {\n    \"input_cost_per_token\": 1e-6,\n    \"output_cost_per_token\": \"cheap\"\n  }\n}\n";
        let err = parse(text).expect_err("rejected").to_string();
        assert!(err.contains("line 5"), "{err}");
        assert!(
            err.contains("bad") && err.contains("output_cost_per_token"),
            "{err}"
        );
        let negative = r#"{"m": {"input_cost_per_token": -1, "output_cost_per_token": 0}}"#;
        assert!(parse(negative).is_err());
        let per_million = r#"{"m": {"input_cost_per_token": 2.5, "output_cost_per_token": 10}}"#;
        assert!(
            parse(per_million).is_err(),
            "a per-million price in a per-token field"
        );
        let syntax = "{\n \"m\": {\"input_cost_per_token\": 1e-6,,}\n}";
        let err = parse(syntax).expect_err("rejected").to_string();
        assert!(err.contains("line 2"), "{err}");
    }
}
