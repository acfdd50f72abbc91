//! Budget enforcement on the request path. The budgets themselves (windows, live spend,
//! thresholds, alerts) live in `tally-budgets`; this is the phase that asks the engine, before
//! anything is sent, whether the request's scope is exhausted.

use http::header::{HeaderValue, RETRY_AFTER};
use http::StatusCode;
use serde_json::json;

use crate::phases::{now_ms, Ctx, Refusal};

/// The budgets phase: a request in a scope an enforcing budget has exhausted gets 429 with
/// `Retry-After` (seconds until enough spend leaves the window). Without an enforcing budget it
/// costs one branch.
pub(crate) fn enforce(ctx: &mut Ctx) -> Result<(), Refusal> {
    let Some(budgets) = ctx.shared.stages.budgets.as_ref().filter(|b| b.enforcing()) else {
        return Ok(());
    };
    let r = &ctx.exchange.state().record;
    let subject = tally_budgets::Subject {
        provider: &r.provider,
        model: r.model.as_deref(),
        user_id: r.user_id.as_deref(),
        properties: &r.properties,
        key_name: r.key_name.as_deref(),
    };
    let now = now_ms();
    let Some(rejection) = budgets.check(subject, now) else {
        return Ok(());
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
