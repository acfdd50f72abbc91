//! Budgets: spend against limits per scope key, projections, fired alerts and their deliveries.

use askama::Template;
use axum::extract::State;

use super::{render, Nav, PageResult};
use crate::format::{format_ts, now_ms, usd_cents};
use crate::views;
use crate::AppState;

/// One budget as the page shows it.
struct BudgetRow {
    name: String,
    scope: String,
    window: String,
    window_end: String,
    limit: String,
    enforce: bool,
    keyed: bool,
    keys: usize,
    exhausted_keys: usize,
    top: Vec<BudgetKeyRow>,
}

struct BudgetKeyRow {
    key: String,
    spend: String,
    /// Spend and limit as plain numbers for `<meter>`.
    value: f64,
    max: f64,
    percent: String,
    projected: String,
    exhausted: bool,
    resets_at: String,
}

struct AlertRow {
    time: String,
    event: String,
    source: String,
    scope_key: String,
    detail: String,
    deliveries: Vec<(String, bool, String)>,
}

#[derive(Template)]
#[template(path = "budgets.html")]
struct BudgetsPage {
    nav: Nav,
    configured: bool,
    budgets: Vec<BudgetRow>,
    alerts: Vec<AlertRow>,
}

fn alert_detail(p: &serde_json::Value) -> String {
    let f = |k: &str| p.get(k).and_then(serde_json::Value::as_f64);
    match (f("spend_usd"), f("limit_usd"), f("value")) {
        (Some(s), Some(l), _) => {
            let mut d = format!("{} of {}", usd_cents(s), usd_cents(l));
            if let Some(pr) = f("projected_spend_usd") {
                d.push_str(&format!(", projected {}", usd_cents(pr)));
            }
            d
        }
        (_, _, Some(v)) => format!(
            "{v:.3} (threshold {:.3}, {} requests)",
            f("threshold").unwrap_or_default(),
            p.get("requests")
                .and_then(serde_json::Value::as_u64)
                .unwrap_or_default()
        ),
        _ => String::new(),
    }
}

/// `GET /budgets`.
pub async fn budgets(State(state): State<AppState>) -> PageResult {
    let now = now_ms();
    let view = views::budgets(state.alerts.as_deref(), now).await?;
    let budgets = view
        .budgets
        .into_iter()
        .map(|b| BudgetRow {
            keyed: b.scope.starts_with("per "),
            top: b
                .top
                .iter()
                .map(|k| BudgetKeyRow {
                    key: k.scope_key.clone(),
                    spend: usd_cents(k.spend_usd),
                    value: k.spend_usd.min(b.limit_usd),
                    max: b.limit_usd,
                    percent: format!("{:.0}%", k.used * 100.0),
                    projected: k.projected_spend_usd.map(usd_cents).unwrap_or_default(),
                    exhausted: k.exhausted,
                    resets_at: k.resets_at.clone(),
                })
                .collect(),
            name: b.name,
            scope: b.scope,
            window: b.window,
            window_end: b.window_end,
            limit: usd_cents(b.limit_usd),
            enforce: b.enforce,
            keys: b.keys,
            exhausted_keys: b.exhausted_keys,
        })
        .collect();
    let alerts = view
        .alerts
        .into_iter()
        .map(|a| AlertRow {
            time: format_ts(a.fired_at),
            detail: alert_detail(&a.payload),
            event: a.event,
            source: a.source,
            scope_key: a.scope_key,
            deliveries: a
                .deliveries
                .into_iter()
                .map(|d| {
                    let how = if d.delivered {
                        format!("delivered after {} attempt(s)", d.attempts)
                    } else {
                        format!(
                            "failed after {} attempt(s): {}",
                            d.attempts,
                            d.error.unwrap_or_default()
                        )
                    };
                    (d.webhook, d.delivered, how)
                })
                .collect(),
        })
        .collect();
    Ok(render(&BudgetsPage {
        nav: Nav::new("budgets", "/budgets", None),
        configured: view.configured,
        budgets,
        alerts,
    }))
}
