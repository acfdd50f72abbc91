//! Budget enforcement on the request path. The budgets themselves (windows, live spend,
//! thresholds, alerts) live in `tally-budgets`; this is the phase that asks the engine, before
//! anything is sent, whether the request's scope is exhausted, and holds the request's worst
//! cost against its budgets until its record is counted (so requests started together cannot
//! all pass an almost spent budget).

use http::header::{HeaderValue, RETRY_AFTER};
use http::StatusCode;
use serde_json::json;

use crate::phases::request_body::BodyHead;
use crate::phases::{now_ms, Ctx, Refusal};

/// Turns the request's hold into its real cost once it is known.
struct Settle(std::sync::Arc<tally_budgets::Engine>);

impl crate::exchange::StageHook for Settle {
    fn on_finish(
        self: Box<Self>,
        record: &tally_ingest::Record,
        _complete: bool,
        _metrics: &crate::ProxyMetrics,
    ) {
        self.0
            .settle(record.request_id, record.cost_usd.unwrap_or(0.0));
    }
}

/// Output tokens assumed for a request that sets no limit of its own.
const DEFAULT_MAX_OUTPUT: u64 = 4096;

/// The most a request can cost: its body at about four bytes a token, at the input price,
/// plus its output limit (`max_tokens` and its other names) at the output price. Unpriced
/// models hold nothing.
fn worst_cost(ctx: &Ctx, head: &BodyHead) -> f64 {
    let r = ctx.exchange.record_ref();
    let Some(price) = r
        .model
        .as_deref()
        .and_then(|m| ctx.shared.pricing.lookup(&r.provider, m))
    else {
        return 0.0;
    };
    let f = crate::formats::json::fields(
        &head.bytes,
        &["max_tokens", "max_completion_tokens", "max_output_tokens"],
    );
    let max_output = ["max_completion_tokens", "max_tokens", "max_output_tokens"]
        .iter()
        .find_map(|n| f.get(n).and_then(serde_json::Value::as_u64))
        .unwrap_or(DEFAULT_MAX_OUTPUT);
    let prompt = head.bytes.len() as f64 / 4.0;
    (prompt * price.input + max_output as f64 * price.output) / 1_000_000.0
}

/// The budgets phase: a request in a scope an enforcing budget has exhausted gets 429 with
/// `Retry-After` (seconds until enough spend leaves the window). Without an enforcing budget it
/// costs one branch.
pub(crate) fn enforce(ctx: &mut Ctx, head: &BodyHead) -> Result<(), Refusal> {
    let Some(budgets) = ctx.shared.stages.budgets.as_ref().filter(|b| b.enforcing()) else {
        return Ok(());
    };
    let r = ctx.exchange.record_ref();
    let subject = tally_budgets::Subject {
        provider: &r.provider,
        model: r.model.as_deref(),
        user_id: r.user_id.as_deref(),
        properties: &r.properties,
        key_name: r.key_name.as_deref(),
    };
    let now = now_ms();
    let rejection = match budgets.reserve(subject, r.request_id, || worst_cost(ctx, head), now) {
        Ok(held) => {
            if held {
                let engine = budgets.clone();
                ctx.exchange.hook(Box::new(Settle(engine)));
            }
            return Ok(());
        }
        Err(r) => r,
    };
    ctx.shared.metrics.budget_rejections.inc();
    let resets_at = tally_budgets::event::rfc3339(rejection.resets_at);
    let message = format!(
        "budget {:?} is exhausted for {}: ${:.4} spent of ${:.2}; it resets at {resets_at}",
        rejection.budget, rejection.scope, rejection.spend_usd, rejection.limit_usd,
    );
    let secs = ((rejection.resets_at - now).max(0) as u64)
        .div_ceil(1000)
        .max(1);
    Err(Refusal::new(
        StatusCode::TOO_MANY_REQUESTS,
        "tally_budget_exceeded",
        message,
    )
    .details(json!({
        "budget": rejection.budget,
        "scope": rejection.scope,
        "scope_key": rejection.scope_key,
        "spend_usd": rejection.spend_usd,
        "limit_usd": rejection.limit_usd,
        "resets_at": resets_at,
    }))
    .header(RETRY_AFTER, HeaderValue::from(secs)))
}
