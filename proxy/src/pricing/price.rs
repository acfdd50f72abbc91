//! One model's price, and the arithmetic of a bill: which rates apply (the service tier, the
//! long-context tier) and what each token class costs.

use std::collections::BTreeMap;

use serde::Deserialize;
use tally_ingest::Tokens;

/// Prices for one model, USD per million tokens unless named otherwise.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    /// Uncached input tokens.
    pub input: f64,
    /// Output tokens (reasoning included unless `reasoning` is set).
    pub output: f64,
    /// Cache-read input tokens; `input` when unset.
    pub cached_input: Option<f64>,
    /// Cache-write input tokens (Anthropic's 5-minute writes); `input` when unset.
    pub cache_write: Option<f64>,
    /// Cache writes held for an hour (Anthropic: 2× input); `cache_write` when unset.
    pub cache_write_1h: Option<f64>,
    /// Reasoning tokens, where priced differently from output; `output` when unset.
    pub reasoning: Option<f64>,
    /// Rates for the whole request once its prompt is longer than a threshold (Gemini 2.5 Pro
    /// above 200k tokens, Claude's long context, GPT-5.4 above 272k). The highest threshold
    /// the prompt passes applies; classes a tier leaves unset keep the base rate.
    #[serde(default)]
    pub above: Vec<LongContext>,
    /// Rates under a service tier the provider reports in its response (OpenAI's `flex` and
    /// `priority`) or bills separately (`batch`). A tier not listed here, or `default`, is
    /// billed at the base rates.
    #[serde(default)]
    pub service_tier: BTreeMap<String, Price>,
    /// USD per server-side web search call (Anthropic's `web_search` tool, OpenAI's).
    pub web_search: Option<f64>,
    /// Cheaper rates at set hours (DeepSeek's off-peak pricing), by the request's start.
    pub off_peak: Option<OffPeak>,
}

/// Rates that apply in UTC time windows instead of the base rates.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OffPeak {
    /// The rates in the windows; classes left unset keep the base rate.
    pub rates: Box<Price>,
    /// When they apply.
    pub windows: Vec<Window>,
}

/// Days of the week and times of day, UTC.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Window {
    /// ISO weekdays: 1 is Monday, 7 Sunday.
    pub weekdays: Vec<u8>,
    /// `"HH:MM-HH:MM"` spans; an end of `00:00` is midnight, so `"00:00-00:00"` is the day.
    pub hours_utc: Vec<String>,
}

/// A `"HH:MM-HH:MM"` span as minutes of the day `[start, end)`; `None` when malformed.
pub(super) fn span(text: &str) -> Option<(u32, u32)> {
    let minute = |hm: &str| -> Option<u32> {
        let (h, m) = hm.trim().split_once(':')?;
        let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
        (h < 24 && m < 60).then_some(h * 60 + m)
    };
    let (a, b) = text.split_once('-')?;
    let (start, end) = (minute(a)?, minute(b)?);
    Some((start, if end == 0 { 24 * 60 } else { end }))
}

impl OffPeak {
    /// Whether `at_ms` (Unix ms, UTC) falls in a window.
    pub fn applies(&self, at_ms: i64) -> bool {
        const DAY: i64 = 86_400_000;
        let days = at_ms.div_euclid(DAY);
        // 1970-01-01 was a Thursday, ISO weekday 4.
        let weekday = ((days + 3).rem_euclid(7) + 1) as u8;
        let minute = (at_ms.rem_euclid(DAY) / 60_000) as u32;
        self.windows
            .iter()
            .filter(|w| w.weekdays.contains(&weekday))
            .flat_map(|w| w.hours_utc.iter().filter_map(|s| span(s)))
            .any(|(start, end)| {
                if start < end {
                    (start..end).contains(&minute)
                } else {
                    // Past midnight: the tail end of the same day, and its start.
                    minute >= start || minute < end
                }
            })
    }
}

/// A long-context tier: the rates once the prompt is longer than `tokens`.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LongContext {
    /// The threshold, in prompt tokens (cache reads and writes included).
    pub tokens: u64,
    /// Uncached input tokens.
    pub input: Option<f64>,
    /// Output tokens.
    pub output: Option<f64>,
    /// Cache-read input tokens.
    pub cached_input: Option<f64>,
    /// Five-minute cache writes.
    pub cache_write: Option<f64>,
    /// One-hour cache writes.
    pub cache_write_1h: Option<f64>,
    /// Reasoning tokens.
    pub reasoning: Option<f64>,
}

/// What a request used that has a price.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Usage<'a> {
    /// Token counts, as the provider reported them.
    pub tokens: Tokens,
    /// The service tier the provider says served the request (`flex`, `priority`, …).
    pub service_tier: Option<&'a str>,
    /// Server-side web search calls.
    pub web_search_calls: u64,
    /// When the request started (Unix ms), for rates that depend on the hour.
    pub at_ms: Option<i64>,
}

impl<'a> Usage<'a> {
    /// Tokens alone, at the standard tier.
    pub fn tokens(tokens: Tokens) -> Self {
        Usage {
            tokens,
            ..Usage::default()
        }
    }
}

/// A priced class of a bill, for [`Price::bill`]'s explanation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(missing_docs)] // the classes of [`Price`]'s fields, named as those are
pub enum Class {
    Input,
    CachedInput,
    CacheWrite,
    CacheWrite1h,
    Output,
    Reasoning,
    WebSearch,
}

impl Class {
    /// The field of [`Price`] that prices this class.
    pub fn name(self) -> &'static str {
        match self {
            Class::Input => "input",
            Class::CachedInput => "cached_input",
            Class::CacheWrite => "cache_write",
            Class::CacheWrite1h => "cache_write_1h",
            Class::Output => "output",
            Class::Reasoning => "reasoning",
            Class::WebSearch => "web_search",
        }
    }
}

/// What [`Price::bill`] chose: the service tier whose rates applied (`None`: the base rates)
/// and the long-context threshold passed, if any.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Chosen {
    /// The service tier whose rates applied.
    pub service_tier: Option<String>,
    /// The long-context threshold the prompt passed.
    pub above: Option<u64>,
    /// The off-peak rates applied.
    pub off_peak: bool,
}

impl Price {
    /// Cost of `t` in USD at the base rates.
    pub fn cost(&self, t: &Tokens) -> f64 {
        self.bill(&Usage::tokens(*t), |_, _, _| {}).0
    }

    /// Cost of `u` in USD. `line` is told each class billed: how many units, at what rate
    /// (USD per million tokens; per call for web searches). One function serves the request
    /// path and `tally prices show`, so the explanation is the computation.
    pub fn bill(&self, u: &Usage, mut line: impl FnMut(Class, u64, f64)) -> (f64, Chosen) {
        let mut chosen = Chosen::default();
        let p = match u
            .service_tier
            .and_then(|t| self.service_tier.get(t).map(|p| (t, p)))
        {
            Some((name, p)) => {
                chosen.service_tier = Some(name.to_owned());
                p
            }
            None => match (&self.off_peak, u.at_ms) {
                (Some(op), Some(at)) if op.applies(at) => {
                    chosen.off_peak = true;
                    &op.rates
                }
                _ => self,
            },
        };
        let t = &u.tokens;
        let tier = p
            .above
            .iter()
            .filter(|l| t.prompt > l.tokens)
            .max_by_key(|l| l.tokens);
        chosen.above = tier.map(|l| l.tokens);
        let long = |f: fn(&LongContext) -> Option<f64>| tier.and_then(f);
        let input = long(|l| l.input).unwrap_or(p.input);
        let output = long(|l| l.output).unwrap_or(p.output);
        let cached = long(|l| l.cached_input).or(p.cached_input).unwrap_or(input);
        let write = long(|l| l.cache_write).or(p.cache_write).unwrap_or(input);
        let write_1h = long(|l| l.cache_write_1h)
            .or(p.cache_write_1h)
            .unwrap_or(write);
        let reasoning = long(|l| l.reasoning).or(p.reasoning).unwrap_or(output);

        // Counts are clamped into the classes they are subsets of, so inconsistent reports
        // never underflow or bill a token twice.
        let cache_read = t.cache_read.min(t.prompt);
        let cache_write = t.cache_write.min(t.prompt - cache_read);
        let write_1h_n = t.cache_write_1h.min(cache_write);
        let uncached = t.prompt - cache_read - cache_write;
        let reasoning_n = t.reasoning.min(t.completion);
        let mut total = 0.0;
        let mut add = |class, n: u64, usd_per_m: f64| {
            if n > 0 {
                line(class, n, usd_per_m);
                total += n as f64 * usd_per_m / 1_000_000.0;
            }
        };
        add(Class::Input, uncached, input);
        add(Class::CachedInput, cache_read, cached);
        add(Class::CacheWrite, cache_write - write_1h_n, write);
        add(Class::CacheWrite1h, write_1h_n, write_1h);
        add(Class::Output, t.completion - reasoning_n, output);
        add(Class::Reasoning, reasoning_n, reasoning);
        if u.web_search_calls > 0 {
            // Per call, not per million: priced only where the table knows the fee.
            if let Some(fee) = p.web_search.or(self.web_search) {
                line(Class::WebSearch, u.web_search_calls, fee);
                total += u.web_search_calls as f64 * fee;
            }
        }
        (total, chosen)
    }
}
