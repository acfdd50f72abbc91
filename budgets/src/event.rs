//! Alert events and their two wire forms: the documented JSON payload and a Slack message.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use uuid::Uuid;

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// Spend reached a threshold below 100 %.
    ThresholdCrossed,
    /// Spend reached a threshold of 100 % or more.
    BudgetExceeded,
    /// At the current pace, spend reaches the limit before the window ends.
    ProjectedToExceed,
    /// An alert rule's error rate went above its threshold.
    ErrorRateAbove,
    /// An alert rule's p95 latency went above its threshold.
    P95LatencyAbove,
}

impl EventKind {
    /// The name in payloads, the store and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::ThresholdCrossed => "threshold_crossed",
            EventKind::BudgetExceeded => "budget_exceeded",
            EventKind::ProjectedToExceed => "projected_to_exceed",
            EventKind::ErrorRateAbove => "error_rate_above",
            EventKind::P95LatencyAbove => "p95_latency_above",
        }
    }
}

/// One fired event: the JSON webhook payload, field for field (see README "Budgets and
/// alerts"). Times are RFC 3339 UTC.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    /// Unique id (UUIDv7); deliveries of the same event carry the same id.
    pub id: Uuid,
    /// What happened.
    pub event: EventKind,
    /// The budget's name (budget events).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub budget: Option<String>,
    /// The alert rule's name (rule events).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// The scope, readable (`per user`, `model gpt-4o`, `everything`).
    pub scope: String,
    /// The scope key: the user, model, provider or property value of keyed scopes, `*` else.
    pub scope_key: String,
    /// The window the figures are for.
    pub window_start: String,
    /// End of that window (exclusive).
    pub window_end: String,
    /// Spend in the window, USD (budget events).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spend_usd: Option<f64>,
    /// The budget's limit, USD.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit_usd: Option<f64>,
    /// The threshold crossed: a fraction of the limit for budgets (0.8 = 80 %), the rule's
    /// threshold for rules.
    pub threshold: f64,
    /// Spend at the window's end at the current pace (calendar budgets).
    pub projected_spend_usd: Option<f64>,
    /// The rule's measured value (error rate as a fraction, or p95 in ms).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    /// Requests in the rule's window.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requests: Option<u64>,
    /// When it fired.
    pub time: String,
    /// The dashboard page to look at.
    pub dashboard_url: String,
    /// Milliseconds since the epoch of `time`, for the store.
    #[serde(skip)]
    pub fired_at_ms: i64,
    /// `[start, end)` in milliseconds, for the store.
    #[serde(skip)]
    pub window_ms: (i64, i64),
    /// End of the episode this event belongs to (ms): the calendar window's end, or one window
    /// length after firing for rolling windows and rules. Nothing with the same source, key
    /// and threshold fires again before it.
    #[serde(skip)]
    pub until_ms: i64,
}

/// RFC 3339 with milliseconds, UTC.
pub fn rfc3339(ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::Millis, true)
}

impl Event {
    /// The name of the budget or rule that fired.
    pub fn source(&self) -> &str {
        self.budget
            .as_deref()
            .or(self.rule.as_deref())
            .unwrap_or_default()
    }

    /// The JSON payload.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| "{}".to_owned())
    }

    /// A one-message summary for Slack-compatible incoming webhooks. Names and keys are
    /// escaped: a user id like `<!channel>` must not ping a channel.
    pub fn to_slack(&self) -> String {
        let who = if self.scope_key == crate::scope::SINGLE_KEY {
            slack_escape(&self.scope)
        } else {
            format!(
                "{} `{}`",
                slack_escape(&self.scope),
                slack_escape(&self.scope_key)
            )
        };
        let source = slack_escape(self.source());
        let usd = |v: Option<f64>| v.map_or("?".to_owned(), |v| format!("${v:.2}"));
        let headline = match self.event {
            EventKind::ThresholdCrossed => format!(
                ":warning: Budget *{}* ({who}) reached {:.0}% of its limit: {} of {}",
                source,
                self.threshold * 100.0,
                usd(self.spend_usd),
                usd(self.limit_usd)
            ),
            EventKind::BudgetExceeded => format!(
                ":rotating_light: Budget *{}* ({who}) is exhausted: {} of {}",
                source,
                usd(self.spend_usd),
                usd(self.limit_usd)
            ),
            EventKind::ProjectedToExceed => format!(
                ":chart_with_upwards_trend: Budget *{}* ({who}) is on pace to spend {} of {}; {} so far",
                source,
                usd(self.projected_spend_usd),
                usd(self.limit_usd),
                usd(self.spend_usd)
            ),
            EventKind::ErrorRateAbove => format!(
                ":rotating_light: Alert *{}* ({who}): error rate {:.1}% over {} requests (threshold {:.1}%)",
                source,
                self.value.unwrap_or_default() * 100.0,
                self.requests.unwrap_or_default(),
                self.threshold * 100.0
            ),
            EventKind::P95LatencyAbove => format!(
                ":turtle: Alert *{}* ({who}): p95 latency {:.0} ms over {} requests (threshold {:.0} ms)",
                source,
                self.value.unwrap_or_default(),
                self.requests.unwrap_or_default(),
                self.threshold
            ),
        };
        let text = format!(
            "{headline}\nWindow {} to {} · <{}|Open Tally>",
            self.window_start, self.window_end, self.dashboard_url
        );
        serde_json::json!({ "text": text }).to_string()
    }
}

/// Slack's mrkdwn control characters (`&`, `<`, `>`), escaped as Slack documents.
fn slack_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slack_text_escapes_names_and_keys() {
        let e = Event {
            id: Uuid::nil(),
            event: EventKind::BudgetExceeded,
            budget: Some("a&b".into()),
            rule: None,
            scope: "per user".into(),
            scope_key: "<!channel>".into(),
            window_start: rfc3339(0),
            window_end: rfc3339(1),
            spend_usd: Some(2.0),
            limit_usd: Some(1.0),
            threshold: 1.0,
            projected_spend_usd: None,
            value: None,
            requests: None,
            time: rfc3339(0),
            dashboard_url: "http://x/budgets".into(),
            fired_at_ms: 0,
            window_ms: (0, 1),
            until_ms: 1,
        };
        let v: serde_json::Value = serde_json::from_str(&e.to_slack()).expect("json");
        let text = v["text"].as_str().expect("text");
        assert!(text.contains("*a&amp;b*"), "{text}");
        assert!(text.contains("`&lt;!channel&gt;`"), "{text}");
        assert!(!text.contains("<!channel>"), "{text}");
        assert!(text.contains("<http://x/budgets|Open Tally>"));
        let json: serde_json::Value = serde_json::from_str(&e.to_json()).expect("json");
        assert_eq!(
            json["scope_key"], "<!channel>",
            "the JSON payload is not escaped"
        );
        assert!(json.get("rule").is_none() && json["projected_spend_usd"].is_null());
    }
}
