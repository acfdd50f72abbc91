//! Per-model series: request duration and time to first token as histograms, tokens by class
//! and cost as counters, and Tally's own time before the response head.
//!
//! A model label comes from client input, so its cardinality is bounded: a model the price
//! table knows is labelled by its table entry (a dated snapshot by the entry that prices it,
//! so the label set is at most the table), and the first [`ModelCap`] other names keep their
//! own label; past the cap they count as `other`.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Distinct model names the price table does not know that keep a label of their own, by
/// default.
pub const DEFAULT_MAX_MODELS: usize = 100;

/// Labels of a request's duration.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DurationLabels {
    /// Configured provider name.
    pub provider: String,
    /// See the module docs.
    pub model: String,
    /// `2xx`…`5xx`, or `none`.
    pub status: &'static str,
}

/// Labels of a per-model series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelLabels {
    /// Configured provider name.
    pub provider: String,
    /// See the module docs.
    pub model: String,
}

/// Labels of a token count.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TokenLabels {
    /// Configured provider name.
    pub provider: String,
    /// See the module docs.
    pub model: String,
    /// `input`, `output`, `cache_read`, `cache_write` or `reasoning`.
    pub class: &'static str,
}

/// Labels of the overhead histogram.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProviderLabels {
    /// Configured provider name.
    pub provider: String,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// 5 ms to 82 s, doubling: LLM calls span that much.
fn latency() -> Histogram {
    Histogram::new(exponential_buckets(0.005, 2.0, 15))
}

/// 50 µs to 0.8 s, doubling: what Tally adds is small unless a stage waits on something.
fn overhead() -> Histogram {
    Histogram::new(exponential_buckets(0.000_05, 2.0, 15))
}

/// The bound on model labels; see the module docs.
#[derive(Debug, Default)]
pub struct ModelCap {
    max: AtomicUsize,
    others: Mutex<HashSet<String>>,
}

impl ModelCap {
    /// The label for `model`, given the price table's entry for it, if any.
    pub fn label(&self, priced_as: Option<&str>, model: Option<&str>) -> String {
        if let Some(entry) = priced_as {
            return entry.to_owned();
        }
        let Some(model) = model else {
            return "none".to_owned();
        };
        let Ok(mut others) = self.others.lock() else {
            return "other".to_owned();
        };
        if others.contains(model) {
            return model.to_owned();
        }
        if others.len() < self.max.load(Ordering::Relaxed) {
            others.insert(model.to_owned());
            return model.to_owned();
        }
        "other".to_owned()
    }
}

/// The per-model series; cheap to clone.
#[derive(Clone)]
pub struct UsageMetrics {
    /// From the request's arrival to its response's end, by provider, model and status class.
    pub duration: Histograms<DurationLabels>,
    /// From the request's arrival to the first byte of the answer's body.
    pub ttft: Histograms<ModelLabels>,
    /// Tokens by class (estimated ones included, cache hits not).
    pub tokens: Family<TokenLabels, Counter>,
    /// Cost, USD.
    pub cost_usd: Family<ModelLabels, Counter<f64, AtomicU64>>,
    /// Tally's time before the response head, not spent waiting on the upstream.
    pub overhead: Histograms<ProviderLabels>,
    /// The bound on model labels.
    pub models: Arc<ModelCap>,
}

impl Default for UsageMetrics {
    fn default() -> Self {
        let models = ModelCap::default();
        models.max.store(DEFAULT_MAX_MODELS, Ordering::Relaxed);
        Self {
            duration: Family::new_with_constructor(latency),
            ttft: Family::new_with_constructor(latency),
            tokens: Family::default(),
            cost_usd: Family::default(),
            overhead: Family::new_with_constructor(overhead),
            models: Arc::new(models),
        }
    }
}

impl UsageMetrics {
    /// Sets how many unpriced model names keep a label of their own.
    pub fn set_max_models(&self, max: usize) {
        self.models.max.store(max, Ordering::Relaxed);
    }

    /// Adds the series to `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "request_duration_seconds",
            "Request duration, arrival to the response's end, by provider, model and status class",
            self.duration.clone(),
        );
        registry.register(
            "time_to_first_token_seconds",
            "Arrival to the first byte of the answer, by provider and model",
            self.ttft.clone(),
        );
        registry.register(
            "tokens",
            "Tokens by provider, model and class (estimates included)",
            self.tokens.clone(),
        );
        registry.register(
            "cost_usd",
            "Cost of the requests, USD, by provider and model",
            self.cost_usd.clone(),
        );
        registry.register(
            "overhead_seconds",
            "Tally's time before the response head that was not spent waiting on the upstream",
            self.overhead.clone(),
        );
    }

    /// Observes a finished, priced record. `priced_as`: the price table's entry for its model.
    pub fn observe(&self, r: &tally_ingest::Record, priced_as: Option<&str>, status: &'static str) {
        let model = self.models.label(
            priced_as,
            r.response_model.as_deref().or(r.model.as_deref()),
        );
        let provider = r.provider.clone();
        self.duration
            .get_or_create(&DurationLabels {
                provider: provider.clone(),
                model: model.clone(),
                status,
            })
            .observe(r.latency_ms as f64 / 1000.0);
        let labels = ModelLabels { provider, model };
        if let Some(t) = r.ttft_ms {
            self.ttft.get_or_create(&labels).observe(t as f64 / 1000.0);
        }
        // A cache hit replayed tokens the provider did not spend again.
        if let Some(t) = r
            .tokens
            .filter(|_| r.cache_status != tally_ingest::CacheStatus::Hit)
        {
            for (class, n) in [
                ("input", t.prompt),
                ("output", t.completion),
                ("cache_read", t.cache_read),
                ("cache_write", t.cache_write),
                ("reasoning", t.reasoning),
            ] {
                if n > 0 {
                    self.tokens
                        .get_or_create(&TokenLabels {
                            provider: labels.provider.clone(),
                            model: labels.model.clone(),
                            class,
                        })
                        .inc_by(n);
                }
            }
        }
        if let Some(c) = r.cost_usd.filter(|c| *c > 0.0) {
            self.cost_usd.get_or_create(&labels).inc_by(c);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpriced_models_keep_their_label_up_to_the_cap() {
        let m = UsageMetrics::default();
        m.set_max_models(2);
        let cap = &m.models;
        assert_eq!(
            cap.label(Some("gpt-4o"), Some("gpt-4o-2024-08-06")),
            "gpt-4o"
        );
        assert_eq!(cap.label(None, Some("a")), "a");
        assert_eq!(cap.label(None, Some("b")), "b");
        assert_eq!(cap.label(None, Some("c")), "other");
        assert_eq!(cap.label(None, Some("a")), "a", "an admitted name stays");
        assert_eq!(
            cap.label(Some("claude-haiku-4-5"), Some("x")),
            "claude-haiku-4-5"
        );
        assert_eq!(cap.label(None, None), "none");
    }
}
