//! What an operator watches on the proxy side, exposed on `/metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

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
