//! `[[budgets]]` and `[alerts]` as written in `tally.toml`, and their validation into the types
//! the engine uses. Every mistake is reported with the budget's or rule's name and the field.

use std::time::Duration;

use serde::Deserialize;

use crate::scope::Scope;
use crate::window::Window;

/// Thresholds (percent of the limit) when a budget gives none.
pub const DEFAULT_THRESHOLDS: [f64; 3] = [50.0, 80.0, 100.0];
/// Share of a calendar window that must have passed before a projection may fire.
pub const DEFAULT_PROJECT_AFTER: f64 = 0.25;
/// How often each replica re-reads the current windows' spend from the store.
pub const DEFAULT_RECONCILE_INTERVAL: Duration = Duration::from_secs(60);
/// Delivery attempts per webhook before the failure is recorded.
pub const DEFAULT_WEBHOOK_ATTEMPTS: u32 = 5;
/// First wait between delivery attempts; doubles each time.
pub const DEFAULT_WEBHOOK_BACKOFF: Duration = Duration::from_secs(1);
/// Per-attempt timeout of a webhook delivery.
pub const DEFAULT_WEBHOOK_TIMEOUT: Duration = Duration::from_secs(10);
/// Requests a rule's window needs before it is evaluated, so one failure is not "100 % errors".
pub const DEFAULT_MIN_REQUESTS: u64 = 10;

/// One `[[budgets]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetConfig {
    /// Unique name; shown in events, errors, the dashboard and metrics.
    pub name: String,
    /// What the budget counts; see [`Scope`] for the syntax. `all` when unset.
    #[serde(default)]
    pub scope: Option<String>,
    /// Spend allowed per window, in USD.
    pub limit_usd: f64,
    /// `hour`, `day`, `week`, `month` (calendar, in `timezone`) or `rolling:<duration>`.
    pub window: String,
    /// Percent of the limit at which events fire; `[50, 80, 100]` when unset.
    #[serde(default)]
    pub thresholds: Option<Vec<f64>>,
    /// Where events go.
    #[serde(default)]
    pub webhooks: Vec<WebhookConfig>,
    /// Reject requests in an exhausted scope with 429; false when unset.
    #[serde(default)]
    pub enforce: bool,
    /// IANA time zone of calendar windows; `[alerts] timezone` when unset.
    #[serde(default)]
    pub timezone: Option<String>,
}

/// One `[[alerts.rules]]` entry: error rate or p95 latency over a rolling window.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// Unique name (shared namespace with budgets).
    pub name: String,
    /// `error_rate` (threshold is a fraction, 0.05 = 5 %) or `p95_latency_ms`.
    pub metric: Metric,
    /// The value above which the rule fires.
    pub threshold: f64,
    /// Rolling window, e.g. `5m`.
    pub window: String,
    /// `all`, `model:<m>`, `provider:<p>`, `per_model` or `per_provider`; `per_model` when unset.
    #[serde(default)]
    pub scope: Option<String>,
    /// Requests the window needs before the rule is evaluated; 10 when unset.
    #[serde(default)]
    pub min_requests: Option<u64>,
    /// Where events go.
    #[serde(default)]
    pub webhooks: Vec<WebhookConfig>,
}

/// What an alert rule watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// Errors (same rule as the dashboard: status 0, ≥ 400, or an error) over requests.
    ErrorRate,
    /// 95th percentile of `latency_ms`.
    P95LatencyMs,
}

impl Metric {
    /// The name used in events and config.
    pub fn as_str(self) -> &'static str {
        match self {
            Metric::ErrorRate => "error_rate",
            Metric::P95LatencyMs => "p95_latency_ms",
        }
    }
}

/// A webhook target.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// `http://` or `https://` URL.
    pub url: String,
    /// `json` (default: the documented payload) or `slack` (an incoming-webhook message).
    #[serde(default)]
    pub format: WebhookFormat,
    /// When set, each delivery carries `Tally-Signature: t=<unix>,v1=<hex HMAC-SHA256>`.
    #[serde(default)]
    pub secret: Option<String>,
}

/// The body a webhook receives.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WebhookFormat {
    /// The documented JSON event.
    #[default]
    Json,
    /// `{"text": …}` with a readable summary, for Slack (and compatible) incoming webhooks.
    Slack,
}

/// `[alerts]`: settings shared by every budget and rule.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertsConfig {
    /// IANA time zone of calendar windows; `UTC` when unset.
    pub timezone: String,
    /// Seconds between store reconciliations (the multi-replica staleness bound); 60.
    pub reconcile_interval_secs: u64,
    /// Share of a calendar window that must pass before `projected_to_exceed` may fire; 0.25.
    /// 1 switches projections off.
    pub project_after: f64,
    /// Delivery attempts per webhook; 5.
    pub webhook_attempts: u32,
    /// First wait between attempts, milliseconds (doubles); 1000.
    pub webhook_backoff_ms: u64,
    /// Per-attempt timeout, milliseconds; 10000.
    pub webhook_timeout_ms: u64,
    /// The dashboard's public URL, for links in events; the listen address when unset.
    pub dashboard_url: Option<String>,
    /// `[[alerts.rules]]`.
    pub rules: Vec<RuleConfig>,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        Self {
            timezone: "UTC".to_owned(),
            reconcile_interval_secs: DEFAULT_RECONCILE_INTERVAL.as_secs(),
            project_after: DEFAULT_PROJECT_AFTER,
            webhook_attempts: DEFAULT_WEBHOOK_ATTEMPTS,
            webhook_backoff_ms: DEFAULT_WEBHOOK_BACKOFF.as_millis() as u64,
            webhook_timeout_ms: DEFAULT_WEBHOOK_TIMEOUT.as_millis() as u64,
            dashboard_url: None,
            rules: Vec::new(),
        }
    }
}

/// A budget, validated.
#[derive(Debug, Clone)]
pub struct Budget {
    /// Unique name.
    pub name: String,
    /// What it counts.
    pub scope: Scope,
    /// USD per window.
    pub limit_usd: f64,
    /// Calendar or rolling.
    pub window: Window,
    /// Fractions of the limit, ascending (1.0 = the limit).
    pub thresholds: Vec<f64>,
    /// Where its events go.
    pub webhooks: Vec<WebhookConfig>,
    /// Reject requests once exhausted.
    pub enforce: bool,
    /// Per-scope-key limits that replace `limit_usd` (Tally keys' own budgets): a key the
    /// source gives no limit for is not counted by this budget.
    pub key_limits: Option<KeyLimits>,
}

/// Where a budget's per-key limits come from (the keyring, for Tally keys' budgets).
#[derive(Clone)]
pub struct KeyLimits(pub std::sync::Arc<LimitFn>);

/// A scope key's limit, or `None` when it has none.
pub type LimitFn = dyn Fn(&str) -> Option<f64> + Send + Sync;

impl std::fmt::Debug for KeyLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyLimits(…)")
    }
}

impl Budget {
    /// The limit for scope key `key`, or `None` when this budget does not cover it.
    pub fn limit_for(&self, key: &str) -> Option<f64> {
        match &self.key_limits {
            Some(f) => (f.0)(key).filter(|l| l.is_finite() && *l > 0.0),
            None => Some(self.limit_usd),
        }
    }
}

/// An alert rule, validated.
#[derive(Debug, Clone)]
pub struct Rule {
    /// Unique name.
    pub name: String,
    /// What it watches.
    pub metric: Metric,
    /// Fires above this value.
    pub threshold: f64,
    /// Rolling window length.
    pub window: Duration,
    /// What it groups by.
    pub scope: Scope,
    /// Requests needed before evaluating.
    pub min_requests: u64,
    /// Where its events go.
    pub webhooks: Vec<WebhookConfig>,
}

/// Everything the engine and the dispatcher need, validated.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Budgets in config order.
    pub budgets: Vec<Budget>,
    /// Alert rules in config order.
    pub rules: Vec<Rule>,
    /// See [`AlertsConfig::reconcile_interval_secs`].
    pub reconcile_interval: Duration,
    /// See [`AlertsConfig::project_after`].
    pub project_after: f64,
    /// See [`AlertsConfig::webhook_attempts`].
    pub webhook_attempts: u32,
    /// See [`AlertsConfig::webhook_backoff_ms`].
    pub webhook_backoff: Duration,
    /// See [`AlertsConfig::webhook_timeout_ms`].
    pub webhook_timeout: Duration,
    /// Base of links in events, without a trailing slash.
    pub dashboard_url: String,
}

impl Settings {
    /// Whether there is anything to watch at all.
    pub fn is_empty(&self) -> bool {
        self.budgets.is_empty() && self.rules.is_empty()
    }
}

/// A budget or rule that cannot work.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{what} {name:?}: {reason}")]
pub struct ConfigError {
    /// `budget`, `alert rule` or `[alerts]`.
    pub what: &'static str,
    /// Its name.
    pub name: String,
    /// What is wrong.
    pub reason: String,
}

fn err(what: &'static str, name: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        what,
        name: name.to_owned(),
        reason: reason.into(),
    }
}

/// Validates budgets and rules. `default_dashboard_url` is used for links when
/// `alerts.dashboard_url` is unset.
pub fn validate(
    budgets: &[BudgetConfig],
    alerts: &AlertsConfig,
    default_dashboard_url: &str,
) -> Result<Settings, ConfigError> {
    let tz = Window::parse_timezone(&alerts.timezone)
        .map_err(|reason| err("[alerts]", "timezone", reason))?;
    if !(alerts.project_after > 0.0 && alerts.project_after <= 1.0) {
        return Err(err(
            "[alerts]",
            "project_after",
            "must be above 0 and at most 1 (a share of the window; 1 switches projections off)",
        ));
    }
    if alerts.webhook_attempts == 0 {
        return Err(err("[alerts]", "webhook_attempts", "must be at least 1"));
    }
    if alerts.reconcile_interval_secs == 0 {
        return Err(err(
            "[alerts]",
            "reconcile_interval_secs",
            "must be at least 1",
        ));
    }
    let mut names = std::collections::HashSet::new();
    let mut out = Vec::with_capacity(budgets.len());
    for b in budgets {
        let e = |reason: String| err("budget", &b.name, reason);
        if b.name.trim().is_empty() {
            return Err(err("budget", "", "name must not be empty"));
        }
        if !names.insert(b.name.clone()) {
            return Err(e("the name is used twice".into()));
        }
        if !(b.limit_usd.is_finite() && b.limit_usd > 0.0) {
            return Err(e(format!("limit_usd {} must be above 0", b.limit_usd)));
        }
        let tz = match &b.timezone {
            Some(t) => Window::parse_timezone(t).map_err(e)?,
            None => tz,
        };
        let window = Window::parse(&b.window, tz).map_err(e)?;
        let scope = Scope::parse(b.scope.as_deref().unwrap_or("all")).map_err(e)?;
        let mut thresholds = Vec::new();
        for t in b.thresholds.as_deref().unwrap_or(&DEFAULT_THRESHOLDS) {
            if !(t.is_finite() && *t > 0.0 && *t <= 1000.0) {
                return Err(e(format!(
                    "threshold {t} must be a percent of the limit above 0 (e.g. 80)"
                )));
            }
            thresholds.push(t / 100.0);
        }
        thresholds.sort_by(f64::total_cmp);
        thresholds.dedup();
        check_webhooks(&b.webhooks).map_err(e)?;
        out.push(Budget {
            name: b.name.clone(),
            scope,
            limit_usd: b.limit_usd,
            window,
            thresholds,
            webhooks: b.webhooks.clone(),
            enforce: b.enforce,
            key_limits: None,
        });
    }
    let mut rules = Vec::with_capacity(alerts.rules.len());
    for r in &alerts.rules {
        let e = |reason: String| err("alert rule", &r.name, reason);
        if r.name.trim().is_empty() {
            return Err(err("alert rule", "", "name must not be empty"));
        }
        if !names.insert(r.name.clone()) {
            return Err(e(
                "the name is used twice (budgets and rules share names)".into()
            ));
        }
        let window = humantime::parse_duration(&r.window)
            .map_err(|x| e(format!("window {:?}: {x} (e.g. \"5m\")", r.window)))?;
        if window < Duration::from_secs(10) {
            return Err(e("window must be at least 10s".into()));
        }
        let scope = Scope::parse(r.scope.as_deref().unwrap_or("per_model")).map_err(e)?;
        if !scope.fits_rule() {
            return Err(e(
                "scope must be all, model:<m>, provider:<p>, per_model or per_provider".into(),
            ));
        }
        let valid = match r.metric {
            Metric::ErrorRate => r.threshold > 0.0 && r.threshold < 1.0,
            Metric::P95LatencyMs => r.threshold > 0.0 && r.threshold.is_finite(),
        };
        if !valid {
            return Err(e(format!(
                "threshold {} is out of range for {} (error_rate takes a fraction like 0.05, \
                 p95_latency_ms milliseconds)",
                r.threshold,
                r.metric.as_str()
            )));
        }
        check_webhooks(&r.webhooks).map_err(e)?;
        rules.push(Rule {
            name: r.name.clone(),
            metric: r.metric,
            threshold: r.threshold,
            window,
            scope,
            min_requests: r.min_requests.unwrap_or(DEFAULT_MIN_REQUESTS).max(1),
            webhooks: r.webhooks.clone(),
        });
    }
    let dashboard_url = alerts
        .dashboard_url
        .clone()
        .unwrap_or_else(|| default_dashboard_url.to_owned())
        .trim_end_matches('/')
        .to_owned();
    Ok(Settings {
        budgets: out,
        rules,
        reconcile_interval: Duration::from_secs(alerts.reconcile_interval_secs),
        project_after: alerts.project_after,
        webhook_attempts: alerts.webhook_attempts,
        webhook_backoff: Duration::from_millis(alerts.webhook_backoff_ms),
        webhook_timeout: Duration::from_millis(alerts.webhook_timeout_ms.max(1)),
        dashboard_url,
    })
}

fn check_webhooks(hooks: &[WebhookConfig]) -> Result<(), String> {
    for h in hooks {
        let uri: http::Uri = h
            .url
            .parse()
            .map_err(|e| format!("webhook URL {:?}: {e}", url_hint(&h.url)))?;
        if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
            return Err(format!(
                "webhook URL {:?} must be http:// or https:// with a host",
                url_hint(&h.url)
            ));
        }
        if h.secret.as_deref() == Some("") {
            return Err("a webhook secret must not be empty".into());
        }
    }
    Ok(())
}

/// A webhook URL as it may be shown and stored: scheme, host and port only. Slack-style URLs
/// carry their secret in the path.
pub fn url_hint(url: &str) -> String {
    match url.parse::<http::Uri>() {
        Ok(u) => format!(
            "{}://{}{}/…",
            u.scheme_str().unwrap_or("?"),
            u.host().unwrap_or("?"),
            u.port().map(|p| format!(":{p}")).unwrap_or_default()
        ),
        Err(_) => "(invalid URL)".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(toml_text: &str) -> Result<Settings, ConfigError> {
        #[derive(Deserialize)]
        struct F {
            budgets: Vec<BudgetConfig>,
        }
        let f: F = toml_like(toml_text);
        validate(
            &f.budgets,
            &AlertsConfig::default(),
            "http://127.0.0.1:8788",
        )
    }

    fn toml_like<T: serde::de::DeserializeOwned>(s: &str) -> T {
        serde_json::from_str(s).expect("test input parses")
    }

    #[test]
    fn defaults_and_percent_thresholds() {
        let s =
            budget(r#"{"budgets":[{"name":"b","limit_usd":10,"window":"day"}]}"#).expect("valid");
        let b = &s.budgets[0];
        assert_eq!(b.thresholds, vec![0.5, 0.8, 1.0]);
        assert_eq!(b.scope, Scope::All);
        assert!(!b.enforce);
        assert_eq!(s.dashboard_url, "http://127.0.0.1:8788");
    }

    #[test]
    fn mistakes_name_the_budget_and_the_field() {
        let cases = [
            (r#"{"name":"x","limit_usd":0,"window":"day"}"#, "limit_usd"),
            (
                r#"{"name":"x","limit_usd":1,"window":"fortnight"}"#,
                "window",
            ),
            (
                r#"{"name":"x","limit_usd":1,"window":"rolling:soon"}"#,
                "rolling",
            ),
            (
                r#"{"name":"x","limit_usd":1,"window":"day","scope":"team"}"#,
                "scope",
            ),
            (
                r#"{"name":"x","limit_usd":1,"window":"day","timezone":"Mars/Base"}"#,
                "time zone",
            ),
            (
                r#"{"name":"x","limit_usd":1,"window":"day","thresholds":[-5]}"#,
                "threshold",
            ),
            (
                r#"{"name":"x","limit_usd":1,"window":"day","webhooks":[{"url":"ftp://h/x"}]}"#,
                "webhook",
            ),
        ];
        for (json, needle) in cases {
            let e = budget(&format!(r#"{{"budgets":[{json}]}}"#)).expect_err(json);
            let text = e.to_string();
            assert!(text.contains("\"x\""), "{text}");
            assert!(text.contains(needle), "{json}: {text}");
        }
        let twice = r#"{"budgets":[{"name":"a","limit_usd":1,"window":"day"},{"name":"a","limit_usd":1,"window":"day"}]}"#;
        assert!(budget(twice)
            .expect_err("dup")
            .to_string()
            .contains("twice"));
    }

    #[test]
    fn rules_validate_their_thresholds() {
        let mut a = AlertsConfig::default();
        a.rules.push(RuleConfig {
            name: "r".into(),
            metric: Metric::ErrorRate,
            threshold: 5.0,
            window: "5m".into(),
            scope: None,
            min_requests: None,
            webhooks: vec![],
        });
        let e = validate(&[], &a, "http://x").expect_err("5 is not a fraction");
        assert!(e.to_string().contains("fraction"), "{e}");
        a.rules[0].threshold = 0.05;
        let s = validate(&[], &a, "http://x").expect("valid");
        assert_eq!(s.rules[0].window, Duration::from_secs(300));
        assert_eq!(s.rules[0].scope, Scope::PerModel);
        a.rules[0].scope = Some("per_user".into());
        assert!(validate(&[], &a, "http://x").is_err());
    }
}
