//! What an operator watches on the proxy side, exposed on `/metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

pub mod usage;
pub use usage::UsageMetrics;

/// Labels of a finished request. `provider` is a configured name or `unknown`, so cardinality is
/// bounded by config, never by client input.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// Configured provider name, or `unknown`.
    pub provider: String,
    /// `2xx`…`5xx`, or `none` when no upstream response arrived.
    pub status: &'static str,
}

/// Labels of an upstream failure.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamErrorLabels {
    /// Configured provider name.
    pub provider: String,
    /// `connect`, `timeout`, `stream` or `idle`.
    pub kind: &'static str,
}

/// Proxy counters; cheap to clone.
#[derive(Clone, Default)]
pub struct ProxyMetrics {
    /// Finished requests by provider and status class.
    pub requests: Family<RequestLabels, Counter>,
    /// Upstream failures by provider and kind.
    pub upstream_errors: Family<UpstreamErrorLabels, Counter>,
    /// Requests being handled right now.
    pub in_flight: Gauge,
    /// Client connections open on each event loop; new connections go to the emptiest loop.
    pub connections: Family<LoopLabels, Gauge>,
    /// Clients that went away before their response ended.
    pub client_disconnects: Counter,
    /// Requests whose tokens had to be estimated.
    pub tokens_estimated: Counter,
    /// Requests with tokens but no known price.
    pub unpriced: Counter,
    /// Requests refused because an enforcing budget was exhausted.
    pub budget_rejections: Counter,
    /// Panics caught while finishing a record (a bug; the record is still sent).
    pub internal_errors: Counter,
    /// Cache lookups by result (`hit`, `miss`).
    pub cache_lookups: Family<ResultLabels, Counter>,
    /// Responses stored in the cache.
    pub cache_stores: Counter,
    /// What cache hits saved, USD.
    pub cache_saved_usd: Counter<f64, std::sync::atomic::AtomicU64>,
    /// Requests refused by a rate limit, by policy (config name, or `header`).
    pub rate_limited: Family<PolicyLabels, Counter>,
    /// Router attempts by router, target provider and result (`ok`, `retry`, `fallback`,
    /// `failed`).
    pub route_attempts: Family<AttemptLabels, Counter>,
    /// A stage's backend (Redis) failed; the request went on without it.
    pub stage_errors: Family<StageLabels, Counter>,
    /// Rate-limit counters the memory backend evicted to stay within `rate_limits.max_keys`.
    pub rate_limit_evictions: Counter,
    /// Responses whose usage report was implausible (more than a billion tokens, negative, a
    /// float); their tokens and cost are not recorded.
    pub implausible_usage: Counter,
    /// Requests Tally answered itself, by its error code (a fixed set, see `phases::Refusal`).
    pub refusals: Family<RefusalLabels, Counter>,
    /// Failed Tally-key authentications by reason (`missing`, `malformed`, `unknown`,
    /// `revoked`, `expired`, `rate_limited`, `model`, `provider`).
    pub auth_failures: Family<ReasonLabels, Counter>,
    /// Connections refused at the cap and closed for idling, per port; the dashboard's serve
    /// shares this (registered once, here).
    pub conns: tally_net::ConnMetrics,
    /// Durations, TTFT, tokens and cost per model, and Tally's overhead.
    pub usage: UsageMetrics,
}

/// Labels of an authentication failure.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    /// A fixed reason.
    pub reason: &'static str,
}

/// Labels of a refusal.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusalLabels {
    /// Tally's error code, e.g. `tally_budget_exceeded`.
    pub code: &'static str,
}

/// Labels of an event loop's gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LoopLabels {
    /// The loop's index, as in its thread name `tally-proxy-<n>`.
    pub event_loop: u32,
}

/// Labels of a cache lookup.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    /// `hit` or `miss`.
    pub result: &'static str,
}

/// Labels of a rate-limit refusal.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PolicyLabels {
    /// Policy name from config, or `header` for per-request policies.
    pub policy: String,
}

/// Labels of a router attempt; all from config.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AttemptLabels {
    /// Router name.
    pub router: String,
    /// Target provider.
    pub target: String,
    /// `ok`, `retry`, `fallback` or `failed`.
    pub result: &'static str,
}

/// Labels of a stage failure.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StageLabels {
    /// `cache` or `rate_limit`.
    pub stage: &'static str,
}

impl ProxyMetrics {
    /// Adds every metric to `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "proxy_requests",
            "Proxied requests by provider and status class",
            self.requests.clone(),
        );
        registry.register(
            "auth_failures",
            "Failed Tally-key authentications by reason",
            self.auth_failures.clone(),
        );
        registry.register(
            "upstream_errors",
            "Upstream failures by provider and kind",
            self.upstream_errors.clone(),
        );
        registry.register(
            "proxy_in_flight",
            "Requests being handled",
            self.in_flight.clone(),
        );
        registry.register(
            "proxy_connections",
            "Client connections open, by event loop",
            self.connections.clone(),
        );
        registry.register(
            "client_disconnects",
            "Clients that disconnected before their response ended",
            self.client_disconnects.clone(),
        );
        registry.register(
            "tokens_estimated",
            "Requests whose tokens were estimated because the provider reported none",
            self.tokens_estimated.clone(),
        );
        registry.register(
            "unpriced_requests",
            "Requests with token counts but no known price for the model",
            self.unpriced.clone(),
        );
        registry.register(
            "budget_rejections",
            "Requests refused with 429 because an enforcing budget was exhausted",
            self.budget_rejections.clone(),
        );
        registry.register(
            "internal_errors",
            "Bugs caught while finishing a record; the record was still sent, marked with an error",
            self.internal_errors.clone(),
        );
        registry.register(
            "cache_lookups",
            "Response cache lookups by result",
            self.cache_lookups.clone(),
        );
        registry.register(
            "cache_stores",
            "Responses stored in the response cache",
            self.cache_stores.clone(),
        );
        registry.register(
            "cache_saved_usd",
            "Cost of the upstream calls that cache hits replaced, USD",
            self.cache_saved_usd.clone(),
        );
        registry.register(
            "rate_limited",
            "Requests refused by a rate limit policy",
            self.rate_limited.clone(),
        );
        registry.register(
            "route_attempts",
            "Router attempts by router, target and result",
            self.route_attempts.clone(),
        );
        registry.register(
            "stage_errors",
            "Stage backend failures (Redis); the request went on without the stage",
            self.stage_errors.clone(),
        );
        registry.register(
            "rate_limit_evictions",
            "Rate-limit counters evicted to stay within rate_limits.max_keys; each starts afresh",
            self.rate_limit_evictions.clone(),
        );
        registry.register(
            "implausible_usage",
            "Responses whose usage report could not be believed; recorded without tokens or cost",
            self.implausible_usage.clone(),
        );
        self.conns.register(registry);
        self.usage.register(registry);
        registry.register(
            "refusals",
            "Requests Tally answered itself instead of the upstream, by error code",
            self.refusals.clone(),
        );
    }

    pub(crate) fn stage_error(&self, stage: &'static str) {
        self.stage_errors
            .get_or_create(&StageLabels { stage })
            .inc();
    }

    pub(crate) fn auth_failure(&self, reason: &'static str) {
        self.auth_failures
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    pub(crate) fn upstream_error(&self, provider: &str, kind: &'static str) {
        self.upstream_errors
            .get_or_create(&UpstreamErrorLabels {
                provider: provider.to_owned(),
                kind,
            })
            .inc();
    }
}
