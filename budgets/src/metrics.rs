//! What an operator watches about budgets and alerts, on `/metrics`. Labels are budget and
//! rule names from config, never scope keys, so cardinality is bounded by config.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::engine::BudgetStatus;
use crate::event::Event;
use crate::webhook::Outcome;

/// A budget's or rule's name.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabels {
    /// The budget.
    pub budget: String,
}

/// A fired event.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FiredLabels {
    /// Budget or rule name.
    pub source: String,
    /// Event kind.
    pub event: &'static str,
}

/// A finished delivery.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeliveryLabels {
    /// `delivered` or `failed`.
    pub result: &'static str,
}

/// Alert counters and budget gauges; cheap to clone.
#[derive(Clone, Default)]
pub struct AlertMetrics {
    spend: Family<SourceLabels, Gauge<f64, AtomicU64>>,
    limit: Family<SourceLabels, Gauge<f64, AtomicU64>>,
    exhausted: Family<SourceLabels, Gauge>,
    fired: Family<FiredLabels, Counter>,
    deliveries: Family<DeliveryLabels, Counter>,
    /// Events or deliveries that could not be written to the store.
    pub store_failed: Counter,
    /// Reconciliations with the store that failed.
    pub reconcile_failed: Counter,
    /// Events not sent because another replica had already recorded them.
    pub duplicates: Counter,
}

impl AlertMetrics {
    /// Adds every metric to `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "budget_spend_usd",
            "Spend in the current window, over all scope keys of the budget",
            self.spend.clone(),
        );
        registry.register(
            "budget_limit_usd",
            "The budget's limit per window and scope key",
            self.limit.clone(),
        );
        registry.register(
            "budget_exhausted_scopes",
            "Scope keys at or over their limit in the current window",
            self.exhausted.clone(),
        );
        registry.register(
            "alerts_fired",
            "Budget and alert-rule events fired",
            self.fired.clone(),
        );
        registry.register(
            "alert_deliveries",
            "Webhook deliveries by result (failed = every attempt failed)",
            self.deliveries.clone(),
        );
        registry.register(
            "alert_store_errors",
            "Fired events or delivery outcomes that could not be written to the store",
            self.store_failed.clone(),
        );
        registry.register(
            "budget_reconcile_failures",
            "Reconciliations of budget spend with the store that failed",
            self.reconcile_failed.clone(),
        );
        registry.register(
            "alerts_suppressed_duplicates",
            "Events not sent because another replica had already recorded them",
            self.duplicates.clone(),
        );
    }

    pub(crate) fn update(&self, status: &[BudgetStatus]) {
        for b in status {
            let l = SourceLabels {
                budget: b.name.clone(),
            };
            self.spend.get_or_create(&l).set(b.spend_usd);
            self.limit.get_or_create(&l).set(b.limit_usd);
            self.exhausted
                .get_or_create(&l)
                .set(b.exhausted_keys as i64);
        }
    }

    pub(crate) fn fired(&self, e: &Event) {
        self.fired
            .get_or_create(&FiredLabels {
                source: e.source().to_owned(),
                event: e.event.as_str(),
            })
            .inc();
    }

    pub(crate) fn delivered(&self, o: &Outcome) {
        self.deliveries
            .get_or_create(&DeliveryLabels {
                result: if o.delivered { "delivered" } else { "failed" },
            })
            .inc();
    }
}
