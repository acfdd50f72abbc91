//! What each page shows, computed once and served two ways: rendered by [`crate::pages`] and
//! as JSON by [`crate::api`]. Keeping one function per view is what guarantees that every
//! number on a page is also reachable as JSON.

use serde::Serialize;
use tally_ingest::metrics::IngestMetrics;
use tally_ingest::Record;

use serde_json::{json, Value};

use crate::error::ApiError;
use crate::format::format_ts;
use crate::query::{TimeRange, ViewQuery};
use crate::store::{AggregateSpec, Group, GroupBy, Order, Reader, RequestFilter, Stats};

/// A record as the API shows it: the contract's flat field names.
pub fn record_json(r: &Record, with_bodies: bool) -> Value {
    let t = r.tokens;
    let mut v = json!({
        "request_id": r.request_id.to_string(),
        "ts": format_ts(r.ts),
        "provider": r.provider,
        "endpoint": r.endpoint,
        "method": r.method,
        "model": r.model,
        "response_model": r.response_model,
        "status": r.status,
        "stream": r.stream,
        "latency_ms": r.latency_ms,
        "ttft_ms": r.ttft_ms,
        "prompt_tokens": t.map(|t| t.prompt),
        "completion_tokens": t.map(|t| t.completion),
        "cache_read_tokens": t.map(|t| t.cache_read),
        "cache_write_tokens": t.map(|t| t.cache_write),
        "cache_write_1h_tokens": t.map(|t| t.cache_write_1h),
        "reasoning_tokens": t.map(|t| t.reasoning),
        "total_tokens": t.map(|t| t.total()),
        "tokens_estimated": r.tokens_estimated,
        "cost_usd": r.cost_usd,
        "user_id": r.user_id,
        "session_id": r.session_id,
        "session_path": r.session_path,
        "session_name": r.session_name,
        "properties": r.properties,
        "cache_status": r.cache_status.as_str(),
        "error": r.error,
        "request_bytes": r.request_bytes,
        "response_bytes": r.response_bytes,
        "api_key_hint": r.api_key_hint,
        "provider_request_id": r.provider_request_id,
        "request_body_truncated": r.request_body_truncated,
        "response_body_truncated": r.response_body_truncated,
        "router": r.router,
        "attempts": r.attempts,
        "parent_request_id": r.parent_request_id,
        "cost_saved_usd": r.cost_saved_usd,
        "refusal": r.refusal,
        "key_id": r.key_id,
        "key_name": r.key_name,
    });
    if let Some(o) = v.as_object_mut() {
        // Outside the macro: one object that big passes serde_json's recursion limit.
        o.insert("service_tier".into(), r.service_tier.clone().into());
        o.insert("web_search_calls".into(), r.web_search_calls.into());
    }
    if with_bodies {
        if let Some(o) = v.as_object_mut() {
            o.insert("request_body".into(), r.request_body.clone().into());
            o.insert("response_body".into(), r.response_body.clone().into());
            o.insert(
                "upstream_request_body".into(),
                r.upstream_request_body.clone().into(),
            );
            o.insert(
                "upstream_response_body".into(),
                r.upstream_response_body.clone().into(),
            );
        }
    }
    v
}

/// How many rows the "top" tables and list pages show.
pub const TOP: usize = 10;
/// Rows of the sessions, users and breakdown lists.
pub const LIST: usize = 200;

/// [`Stats`] plus the derived numbers every page shows.
#[derive(Debug, Clone, Serialize)]
pub struct StatsView {
    /// The raw aggregate.
    #[serde(flatten)]
    pub stats: Stats,
    /// Prompt plus completion tokens.
    pub total_tokens: u64,
    /// Errors per request.
    pub error_rate: f64,
    /// Cache hits per request.
    pub cache_hit_rate: f64,
    /// Mean latency, ms.
    pub avg_latency_ms: f64,
    /// First start to last end, ms.
    pub duration_ms: i64,
    /// `first_ts` as RFC 3339.
    pub first_seen: String,
    /// `last_ts` as RFC 3339.
    pub last_seen: String,
}

impl From<Stats> for StatsView {
    fn from(stats: Stats) -> Self {
        Self {
            total_tokens: stats.total_tokens(),
            error_rate: stats.error_rate(),
            cache_hit_rate: stats.cache_hit_rate(),
            avg_latency_ms: stats.avg_latency_ms(),
            duration_ms: stats.duration_ms(),
            first_seen: if stats.requests > 0 {
                format_ts(stats.first_ts)
            } else {
                String::new()
            },
            last_seen: if stats.requests > 0 {
                format_ts(stats.last_ts)
            } else {
                String::new()
            },
            stats,
        }
    }
}

/// One row of a breakdown.
#[derive(Debug, Clone, Serialize)]
pub struct GroupView {
    /// Model, provider, user id, session id or property value.
    pub key: String,
    /// Its numbers.
    #[serde(flatten)]
    pub stats: StatsView,
}

impl From<Group> for GroupView {
    fn from(g: Group) -> Self {
        Self {
            key: g.key,
            stats: g.stats.into(),
        }
    }
}

/// One point of a time series: the bucket's start and its numbers (zero when empty).
#[derive(Debug, Clone, Serialize)]
pub struct Point {
    /// Bucket start, ms.
    pub t: i64,
    /// Its numbers.
    #[serde(flatten)]
    pub stats: StatsView,
}

/// The time window a view covers, as JSON.
#[derive(Debug, Clone, Serialize)]
pub struct RangeView {
    /// Start, RFC 3339.
    pub from: String,
    /// End (exclusive), RFC 3339.
    pub to: String,
    /// Chart bucket width, ms.
    pub bucket_ms: i64,
}

impl From<TimeRange> for RangeView {
    fn from(r: TimeRange) -> Self {
        Self {
            from: format_ts(r.from_ms),
            to: format_ts(r.to_ms),
            bucket_ms: r.bucket_ms(),
        }
    }
}

/// Whether any record is lost or waiting: the overview's warning.
#[derive(Debug, Clone, Default, Serialize)]
pub struct IngestHealth {
    /// Records that will never be stored, since start.
    pub dropped: u64,
    /// Batches waiting in the disk spool.
    pub spooled_batches: i64,
    /// Bytes waiting in the disk spool.
    pub spool_bytes: i64,
    /// Records waiting in the channel.
    pub channel_depth: i64,
}

impl IngestHealth {
    /// Reads the live ingest counters.
    pub fn read(m: Option<&IngestMetrics>) -> Self {
        let Some(m) = m else {
            return Self::default();
        };
        Self {
            dropped: tally_ingest::metrics::DROP_REASONS
                .iter()
                .map(|reason| {
                    m.dropped
                        .get_or_create(&tally_ingest::metrics::DropLabels { reason })
                        .get()
                })
                .sum(),
            spooled_batches: m.spool_segments.get(),
            spool_bytes: m.spool_bytes.get(),
            channel_depth: m.channel_depth.get(),
        }
    }
}

/// The overview page.
#[derive(Debug, Clone, Serialize)]
pub struct Overview {
    /// The window.
    pub range: RangeView,
    /// Totals over the window.
    pub summary: StatsView,
    /// One point per bucket.
    pub series: Vec<Point>,
    /// Models by cost.
    pub top_models: Vec<TopView>,
    /// Providers by cost.
    pub top_providers: Vec<TopView>,
    /// Users by cost.
    pub top_users: Vec<TopView>,
    /// Lost or waiting records.
    pub ingest: IngestHealth,
    /// What cache hits in the window saved, USD (`cost_saved_usd` summed).
    pub cache_saved_usd: f64,
    /// `tally reprice` runs that changed costs in the window, newest first.
    pub reprices: Vec<RepriceView>,
}

/// A reprice run, as the overview mentions it.
#[derive(Debug, Clone, Serialize)]
pub struct RepriceView {
    /// When it ran, RFC 3339.
    pub at: String,
    /// The range it repriced, RFC 3339.
    pub from: String,
    /// Its end (exclusive).
    pub to: String,
    /// Its filter, readable (`model gpt-4o`, `all models`).
    pub filter: String,
    /// Records whose cost changed.
    pub changed: u64,
    /// The total change, USD.
    pub delta_usd: f64,
}

impl From<crate::store::Reprice> for RepriceView {
    fn from(r: crate::store::Reprice) -> Self {
        let filter = match (&r.model, &r.provider) {
            (Some(m), Some(p)) => format!("model {m} on {p}"),
            (Some(m), None) => format!("model {m}"),
            (None, Some(p)) => format!("provider {p}"),
            (None, None) => "all models".to_owned(),
        };
        Self {
            at: format_ts(r.at_ms),
            from: format_ts(r.from_ms),
            to: format_ts(r.to_ms),
            filter,
            changed: r.changed,
            delta_usd: r.delta_usd,
        }
    }
}

/// Every bucket of the range, filled from the store's bucket groups (empty buckets are zero).
fn fill_series(range: &TimeRange, groups: Vec<Group>) -> Vec<Point> {
    let mut by_t: std::collections::HashMap<i64, Stats> = groups
        .into_iter()
        .filter_map(|g| Some((g.key.parse().ok()?, g.stats)))
        .collect();
    range
        .bucket_starts()
        .into_iter()
        .map(|t| Point {
            t,
            stats: by_t.remove(&t).unwrap_or_default().into(),
        })
        .collect()
}

/// A row of a "top by cost" list: counts and sums only (computed with
/// [`crate::store::Measure::Totals`], which skips quantiles and distinct users).
#[derive(Debug, Clone, Serialize)]
pub struct TopView {
    /// Model, provider or user id.
    pub key: String,
    /// Records.
    pub requests: u64,
    /// Errors.
    pub errors: u64,
    /// Errors per request.
    pub error_rate: f64,
    /// Sum of cost.
    pub cost_usd: f64,
    /// Sum of prompt tokens.
    pub prompt_tokens: u64,
    /// Sum of completion tokens.
    pub completion_tokens: u64,
    /// Their sum.
    pub total_tokens: u64,
}

impl From<Group> for TopView {
    fn from(g: Group) -> Self {
        let s = g.stats;
        Self {
            key: g.key,
            requests: s.requests,
            errors: s.errors,
            error_rate: s.error_rate(),
            cost_usd: s.cost_usd,
            prompt_tokens: s.prompt_tokens,
            completion_tokens: s.completion_tokens,
            total_tokens: s.total_tokens(),
        }
    }
}

fn tops(groups: Vec<Group>) -> Vec<TopView> {
    groups.into_iter().map(TopView::from).collect()
}

fn views(groups: Vec<Group>) -> Vec<GroupView> {
    groups.into_iter().map(GroupView::from).collect()
}

fn totals(groups: Vec<Group>) -> StatsView {
    groups
        .into_iter()
        .next()
        .map(|g| g.stats)
        .unwrap_or_default()
        .into()
}

/// Every bucket of a chart: enough for the longest range at the smallest bucket.
const ALL_BUCKETS: usize = usize::MAX >> 1;

/// The aggregates behind a summary and its charts over `range`; a page reads their results
/// with [`totals`] and [`fill_series`], in this order.
fn summary_and_series(range: &TimeRange) -> [AggregateSpec; 2] {
    [
        AggregateSpec::new(GroupBy::Nothing, Order::Key, 1),
        AggregateSpec::new(GroupBy::Bucket(range.bucket_ms()), Order::Key, ALL_BUCKETS),
    ]
}

/// A breakdown of the view's records by `by`.
pub async fn breakdown(
    reader: &Reader,
    filter: &RequestFilter,
    by: GroupBy,
    order: Order,
    limit: usize,
) -> Result<Vec<GroupView>, ApiError> {
    Ok(reader
        .aggregate(filter.clone(), by, order, limit)
        .await?
        .into_iter()
        .map(GroupView::from)
        .collect())
}

/// The overview.
pub async fn overview(
    reader: &Reader,
    v: &ViewQuery,
    ingest: Option<&IngestMetrics>,
) -> Result<Overview, ApiError> {
    let mut parts = reader
        .aggregate_many(
            v.filter.clone(),
            summary_and_series(&v.range)
                .into_iter()
                .chain([
                    AggregateSpec::new(GroupBy::Model, Order::Cost, TOP).totals_only(),
                    AggregateSpec::new(GroupBy::Provider, Order::Cost, TOP).totals_only(),
                    AggregateSpec::new(GroupBy::User, Order::Cost, TOP).totals_only(),
                ])
                .collect(),
        )
        .await?
        .into_iter();
    let (_, cache_saved_usd) = reader.cache_savings(v.filter.clone()).await?;
    let reprices = reader
        .reprices(
            v.filter.from_ms.unwrap_or(i64::MIN),
            v.filter.to_ms.unwrap_or(i64::MAX),
        )
        .await?
        .into_iter()
        .map(RepriceView::from)
        .collect();
    let mut next = || parts.next().unwrap_or_default();
    let (summary, series, top_models, top_providers, top_users) = (
        totals(next()),
        fill_series(&v.range, next()),
        tops(next()),
        tops(next()),
        tops(next()),
    );
    Ok(Overview {
        range: v.range.into(),
        summary,
        series,
        top_models,
        top_providers,
        top_users,
        ingest: IngestHealth::read(ingest),
        cache_saved_usd,
        reprices,
    })
}

/// Models and providers side by side.
#[derive(Debug, Clone, Serialize)]
pub struct ModelsView {
    /// The window.
    pub range: RangeView,
    /// By model.
    pub models: Vec<GroupView>,
    /// By provider.
    pub providers: Vec<GroupView>,
    /// Models seen with tokens but no price (their cost is recorded as null), most requests
    /// first, with what to add to the config to price them.
    pub unpriced: Vec<UnpricedView>,
}

/// A model Tally could not price.
#[derive(Debug, Clone, Serialize)]
pub struct UnpricedView {
    /// The model as requests named it.
    pub model: String,
    /// Its requests with tokens and no cost in the window.
    pub requests: u64,
    /// A `tally.toml` snippet that prices it (the rates left for the operator to fill).
    pub hint: String,
}

impl UnpricedView {
    fn of(g: &GroupView) -> Option<Self> {
        let n = g.stats.stats.unpriced;
        (n > 0).then(|| UnpricedView {
            model: g.key.clone(),
            requests: n,
            hint: format!(
                "[pricing.models.\"{}\"]\ninput = 0.0   # USD per 1M input tokens\noutput = 0.0  # USD per 1M output tokens",
                g.key.replace('\\', "\\\\").replace('"', "\\\"")
            ),
        })
    }
}

/// The models and providers page.
pub async fn models(reader: &Reader, v: &ViewQuery) -> Result<ModelsView, ApiError> {
    let mut parts = reader
        .aggregate_many(
            v.filter.clone(),
            vec![
                AggregateSpec::new(GroupBy::Model, Order::Cost, LIST),
                AggregateSpec::new(GroupBy::Provider, Order::Cost, LIST),
            ],
        )
        .await?
        .into_iter();
    let models = views(parts.next().unwrap_or_default());
    let mut unpriced: Vec<_> = models.iter().filter_map(UnpricedView::of).collect();
    unpriced.sort_by(|a, b| b.requests.cmp(&a.requests).then(a.model.cmp(&b.model)));
    Ok(ModelsView {
        range: v.range.into(),
        models,
        providers: views(parts.next().unwrap_or_default()),
        unpriced,
    })
}

/// Spend, traffic, errors and latency per Tally key.
#[derive(Debug, Clone, Serialize)]
pub struct KeysView {
    /// The window.
    pub range: RangeView,
    /// One row per key name that had requests in the window, highest cost first.
    pub keys: Vec<GroupView>,
}

/// The keys page: requests without a Tally key are not in it.
pub async fn keys(reader: &Reader, v: &ViewQuery) -> Result<KeysView, ApiError> {
    let parts = reader
        .aggregate_many(
            v.filter.clone(),
            vec![AggregateSpec::new(GroupBy::Key, Order::Cost, LIST)],
        )
        .await?;
    Ok(KeysView {
        range: v.range.into(),
        keys: views(parts.into_iter().next().unwrap_or_default()),
    })
}

/// A list page: sessions or users.
#[derive(Debug, Clone, Serialize)]
pub struct ListView {
    /// The window.
    pub range: RangeView,
    /// One row per session or user, most recently seen first.
    pub rows: Vec<GroupView>,
}

/// The sessions or users list.
pub async fn list(reader: &Reader, v: &ViewQuery, by: GroupBy) -> Result<ListView, ApiError> {
    Ok(ListView {
        range: v.range.into(),
        rows: breakdown(reader, &v.filter, by, Order::LastSeen, LIST).await?,
    })
}

/// One session: totals and every request, oldest first.
#[derive(Debug, Clone, Serialize)]
pub struct SessionView {
    /// The session id.
    pub session_id: String,
    /// Its name, from the first request that has one.
    pub session_name: Option<String>,
    /// Totals.
    pub summary: StatsView,
    /// Requests, oldest first (at most [`crate::query::MAX_LIMIT`]).
    #[serde(skip)]
    pub requests: Vec<Record>,
    /// The same requests as JSON.
    #[serde(rename = "requests")]
    pub requests_json: Vec<serde_json::Value>,
}

/// The session view. Sessions are not cut by the page's time range: a session is shown whole.
pub async fn session(reader: &Reader, id: &str) -> Result<SessionView, ApiError> {
    let filter = RequestFilter {
        session_id: Some(id.to_owned()),
        limit: crate::query::MAX_LIMIT,
        ..RequestFilter::default()
    };
    let summary = reader.totals(filter.clone()).await?;
    if summary.requests == 0 {
        return Err(ApiError::NotFound(format!("no session {id:?}")));
    }
    let mut requests = reader.list(filter).await?.records;
    requests.reverse();
    Ok(SessionView {
        session_id: id.to_owned(),
        session_name: requests.iter().find_map(|r| r.session_name.clone()),
        summary: summary.into(),
        requests_json: requests.iter().map(|r| record_json(r, false)).collect(),
        requests,
    })
}

/// One user: totals, cost over time and recent requests within the range.
#[derive(Debug, Clone, Serialize)]
pub struct UserView {
    /// The user id.
    pub user_id: String,
    /// The window.
    pub range: RangeView,
    /// Totals in the window.
    pub summary: StatsView,
    /// One point per bucket.
    pub series: Vec<Point>,
    /// Newest requests first.
    #[serde(skip)]
    pub recent: Vec<Record>,
    /// The same requests as JSON.
    #[serde(rename = "recent")]
    pub recent_json: Vec<serde_json::Value>,
}

/// The user view.
pub async fn user(reader: &Reader, v: &ViewQuery, id: &str) -> Result<UserView, ApiError> {
    let mut v = v.clone();
    v.filter.user_id = Some(id.to_owned());
    v.filter.limit = 50;
    let mut parts = reader
        .aggregate_many(v.filter.clone(), summary_and_series(&v.range).to_vec())
        .await?
        .into_iter();
    let summary = totals(parts.next().unwrap_or_default());
    let series = fill_series(&v.range, parts.next().unwrap_or_default());
    let recent = reader.list(v.filter.clone()).await?.records;
    Ok(UserView {
        user_id: id.to_owned(),
        range: v.range.into(),
        summary,
        series,
        recent_json: recent.iter().map(|r| record_json(r, false)).collect(),
        recent,
    })
}

/// The properties page: the keys in use and the breakdown by one key's values.
#[derive(Debug, Clone, Serialize)]
pub struct PropertiesView {
    /// The window.
    pub range: RangeView,
    /// Keys in use in the window.
    pub keys: Vec<String>,
    /// The chosen key, if any.
    pub key: Option<String>,
    /// One row per value of `key`, by cost.
    pub values: Vec<GroupView>,
}

/// The properties page.
pub async fn properties(reader: &Reader, v: &ViewQuery) -> Result<PropertiesView, ApiError> {
    let keys = reader.property_keys(v.filter.clone(), LIST).await?;
    let key = v
        .extra
        .get("key")
        .filter(|k| !k.is_empty())
        .map(|k| k.to_ascii_lowercase())
        .or_else(|| keys.first().cloned());
    let values = match &key {
        Some(k) => {
            breakdown(
                reader,
                &v.filter,
                GroupBy::Property(k.clone()),
                Order::Cost,
                LIST,
            )
            .await?
        }
        None => Vec::new(),
    };
    Ok(PropertiesView {
        range: v.range.into(),
        keys,
        key,
        values,
    })
}

/// Fired events shown on the budgets page and in `/api/budgets`.
pub const ALERT_HISTORY: usize = 100;

/// `/budgets` and `/api/budgets`: each budget's live state and the newest fired events.
#[derive(Debug, Serialize)]
pub struct BudgetsView {
    /// Whether any budget or alert rule is configured.
    pub configured: bool,
    /// Every budget, in config order.
    pub budgets: Vec<tally_budgets::BudgetStatus>,
    /// Fired events with their deliveries, newest first.
    pub alerts: Vec<tally_budgets::HistoryEntry>,
}

/// Reads the live counters (no store query) and the fired-event log.
pub async fn budgets(
    alerts: Option<&tally_budgets::Alerts>,
    now: i64,
) -> Result<BudgetsView, crate::ApiError> {
    let Some(a) = alerts else {
        return Ok(BudgetsView {
            configured: false,
            budgets: Vec::new(),
            alerts: Vec::new(),
        });
    };
    Ok(BudgetsView {
        configured: true,
        budgets: a.engine().status(now),
        alerts: a.history(ALERT_HISTORY).await?,
    })
}

/// The reconcile page: each provider's newest `tally reconcile` report.
#[derive(Debug, Clone, Serialize)]
pub struct ReconcileView {
    /// One per provider reconciled.
    pub reports: Vec<ReconcileReport>,
}

/// One provider's newest report.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct ReconcileReport {
    /// `openai` or `anthropic`.
    pub provider: String,
    /// When it ran, RFC 3339 (filled from the store, not the report).
    #[serde(default)]
    pub at: String,
    /// The range, ms.
    pub from_ms: i64,
    /// Its end, ms.
    pub to_ms: i64,
    /// Day × model.
    pub rows: Vec<ReconcileRow>,
}

/// One day and model of a report.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct ReconcileRow {
    /// `YYYY-MM-DD`.
    pub day: String,
    /// Without its snapshot date.
    pub model: String,
    /// The provider's numbers.
    pub provider: ReconcileSide,
    /// Tally's.
    pub tally: ReconcileSide,
    /// What differs; empty when they agree.
    pub gaps: Vec<String>,
}

/// One side of a row.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct ReconcileSide {
    /// Requests, where the provider reports them.
    pub requests: Option<u64>,
    /// Input tokens.
    pub input_tokens: u64,
    /// Output tokens.
    pub output_tokens: u64,
    /// Cost, USD.
    pub cost_usd: f64,
}

/// Reads each provider's newest report. A report that does not parse (written by another
/// version) is left out rather than failing the page.
pub async fn reconcile(reader: &Reader) -> Result<ReconcileView, ApiError> {
    let reports = reader
        .reconciliations()
        .await?
        .into_iter()
        .filter_map(|r| {
            let mut report: ReconcileReport = serde_json::from_str(&r.report).ok()?;
            report.at = format_ts(r.at_ms);
            // Gaps first.
            report.rows.sort_by_key(|row| row.gaps.is_empty());
            Some(report)
        })
        .collect();
    Ok(ReconcileView { reports })
}
