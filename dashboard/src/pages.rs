//! The server-rendered pages. Each handler builds its view with [`crate::views`] (the same
//! function the JSON endpoint uses) and renders an askama template from `templates/`.
//!
//! Everything from the store is untrusted: askama escapes every `{{ }}` by default, and the
//! only unescaped output is SVG built by [`crate::chart`], which escapes its own text.

use std::collections::BTreeMap;

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use tally_ingest::Record;

use crate::api::{format_ts, now_ms};
use crate::chart::{self, Bar, Line};
use crate::error::ApiError;
use crate::query::{ViewQuery, PRESETS};
use crate::store::GroupBy;
use crate::views::{self, GroupView, Point, StatsView, TopView};
use crate::AppState;

/// The navigation and range selector every page shares.
pub struct Nav {
    /// Name of the current page.
    pub active: &'static str,
    /// (href, label, name) of every page.
    pub pages: Vec<(&'static str, &'static str, &'static str)>,
    /// Whether the page has a time range.
    pub show_range: bool,
    /// (href, label, selected) of each preset range.
    pub ranges: Vec<(String, &'static str, bool)>,
    /// Values of the custom range inputs (`datetime-local`, UTC).
    pub from: String,
    /// See `from`.
    pub to: String,
    /// Parameters the range form carries along (the page's filters).
    pub hidden: Vec<(String, String)>,
    /// Seconds between reloads, when auto-refresh is on.
    pub refresh: Option<u32>,
    /// (href, label, selected) of the auto-refresh choices.
    pub refreshes: Vec<(String, &'static str, bool)>,
}

const PAGES: [(&str, &str, &str); 7] = [
    ("/", "Overview", "overview"),
    ("/requests", "Requests", "requests"),
    ("/sessions", "Sessions", "sessions"),
    ("/users", "Users", "users"),
    ("/models", "Models", "models"),
    ("/properties", "Properties", "properties"),
    ("/budgets", "Budgets", "budgets"),
];

fn input_time(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%dT%H:%M").to_string())
        .unwrap_or_default()
}

impl Nav {
    fn new(active: &'static str, path: &str, v: Option<&ViewQuery>) -> Self {
        let mut nav = Self {
            active,
            pages: PAGES.to_vec(),
            show_range: v.is_some(),
            ranges: Vec::new(),
            from: String::new(),
            to: String::new(),
            hidden: Vec::new(),
            refresh: None,
            refreshes: Vec::new(),
        };
        if let Some(v) = v {
            nav.ranges = PRESETS
                .iter()
                .map(|(name, label, _)| {
                    (
                        v.link(
                            path,
                            &[
                                ("range", Some(name)),
                                ("from", None),
                                ("to", None),
                                ("cursor", None),
                            ],
                        ),
                        *label,
                        v.range.preset == Some(*name),
                    )
                })
                .collect();
            nav.refresh = v.refresh;
            nav.refreshes = [("off", "off"), ("30", "30 s"), ("60", "1 min")]
                .into_iter()
                .map(|(value, label)| {
                    let selected = v.refresh.map_or(value == "off", |r| r.to_string() == value);
                    let change = (value != "off").then_some(value);
                    (v.link(path, &[("refresh", change)]), label, selected)
                })
                .collect();
            nav.from = input_time(v.range.from_ms);
            nav.to = input_time(v.range.to_ms);
            nav.hidden = v
                .params
                .iter()
                .filter(|(k, _)| !["range", "from", "to", "cursor"].contains(&k.as_str()))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
        }
        nav
    }
}

/// Number formatting for templates.
impl TopView {
    /// Request count with thousands separators.
    pub fn requests(&self) -> String {
        thousands(self.requests)
    }
    /// Cost in dollars.
    pub fn cost(&self) -> String {
        usd(self.cost_usd)
    }
}

/// Number formatting for templates.
impl StatsView {
    /// Request count with thousands separators.
    pub fn requests(&self) -> String {
        thousands(self.stats.requests)
    }
    /// Cost in dollars.
    pub fn cost(&self) -> String {
        usd(self.stats.cost_usd)
    }
    /// Total tokens with thousands separators.
    pub fn tokens(&self) -> String {
        thousands(self.total_tokens)
    }
    /// Error rate as a percentage.
    pub fn error_rate_pct(&self) -> String {
        pct(self.error_rate)
    }
    /// Cache hit rate as a percentage.
    pub fn cache_hit_rate_pct(&self) -> String {
        pct(self.cache_hit_rate)
    }
    /// Latency p50 / p95 / p99.
    pub fn latency(&self) -> String {
        let q = self.stats.latency_ms;
        format!("{} / {} / {}", ms(q.p50), ms(q.p95), ms(q.p99))
    }
    /// TTFT p50 / p95 / p99.
    pub fn ttft(&self) -> String {
        let q = self.stats.ttft_ms;
        format!("{} / {} / {}", ms(q.p50), ms(q.p95), ms(q.p99))
    }
    /// One latency quantile: 50, 95 or 99.
    pub fn p(&self, level: u8) -> String {
        let q = self.stats.latency_ms;
        ms(match level {
            50 => q.p50,
            95 => q.p95,
            _ => q.p99,
        })
    }
    /// Mean latency.
    pub fn avg_latency(&self) -> String {
        if self.stats.requests == 0 {
            "–".to_owned()
        } else {
            format!("{:.0} ms", self.avg_latency_ms)
        }
    }
    /// First start to last end.
    pub fn duration(&self) -> String {
        ms(Some(self.duration_ms.max(0) as u64))
    }
}

fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Dollars with enough digits for sub-cent requests.
pub fn usd(v: f64) -> String {
    if v == 0.0 {
        "$0".to_owned()
    } else if v.abs() >= 100.0 {
        format!("${v:.2}")
    } else if v.abs() >= 0.01 {
        format!("${v:.4}")
    } else {
        format!("${v:.6}")
    }
}

fn pct(v: f64) -> String {
    format!("{:.1}%", v * 100.0)
}

fn ms(v: Option<u64>) -> String {
    match v {
        None => "–".to_owned(),
        Some(v) if v >= 10_000 => format!("{:.1} s", v as f64 / 1000.0),
        Some(v) => format!("{v} ms"),
    }
}

/// A path segment: every byte but `A-Za-z0-9-._~` percent-encoded (a `+` or `/` in an id must
/// survive the round trip through the router's `Path` extractor).
fn enc(s: &str) -> String {
    const SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'.')
        .remove(b'_')
        .remove(b'~');
    percent_encoding::utf8_percent_encode(s, SEGMENT).to_string()
}

/// A request as a table row.
pub struct RowView {
    id: String,
    time: String,
    provider: String,
    model: String,
    status: u16,
    is_error: bool,
    latency: String,
    tokens: String,
    cost: String,
    user: String,
    user_href: String,
    session: String,
    session_href: String,
}

impl From<&Record> for RowView {
    fn from(r: &Record) -> Self {
        let user = r.user_id.clone().unwrap_or_default();
        let session = r.session_id.clone().unwrap_or_default();
        Self {
            id: r.request_id.to_string(),
            time: format_ts(r.ts).replace('T', " ").replace('Z', ""),
            provider: r.provider.clone(),
            model: r.model.clone().unwrap_or_default(),
            status: r.status,
            is_error: r.status == 0 || r.status >= 400 || r.error.is_some(),
            latency: ms(Some(r.latency_ms)),
            tokens: r
                .tokens
                .map(|t| {
                    let mut s = thousands(t.total());
                    if r.tokens_estimated {
                        s.push_str(" (est.)");
                    }
                    s
                })
                .unwrap_or_else(|| "–".to_owned()),
            cost: r.cost_usd.map(usd).unwrap_or_else(|| "–".to_owned()),
            user_href: enc(&user),
            user,
            session_href: enc(&session),
            session,
        }
    }
}

/// Renders a template, or a plain 500 if rendering itself fails.
fn render(t: &impl Template) -> Response {
    match t.render() {
        Ok(html) => Html(html).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "dashboard template failed");
            (StatusCode::INTERNAL_SERVER_ERROR, "template error\n").into_response()
        }
    }
}

#[derive(Template)]
#[template(path = "error.html")]
struct ErrorPage {
    nav: Nav,
    status: String,
    message: String,
    /// The ingest warning, on the overview: during a store outage it is what matters most.
    ingest: Option<views::IngestHealth>,
}

/// A page's error, rendered as HTML.
#[derive(Debug)]
pub struct PageError(ApiError);

impl From<ApiError> for PageError {
    fn from(e: ApiError) -> Self {
        Self(e)
    }
}

impl From<crate::store::StoreError> for PageError {
    fn from(e: crate::store::StoreError) -> Self {
        Self(e.into())
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let (status, message) = self.0.status_and_message();
        let mut resp = render(&ErrorPage {
            nav: Nav::new("", "/", None),
            status: status.to_string(),
            message,
            ingest: None,
        });
        *resp.status_mut() = status;
        resp
    }
}

type PageResult = Result<Response, PageError>;

fn chart_times(series: &[Point]) -> Vec<i64> {
    series.iter().map(|p| p.t).collect()
}

fn values(series: &[Point], f: impl Fn(&StatsView) -> Option<f64>) -> Vec<Option<f64>> {
    series.iter().map(|p| f(&p.stats)).collect()
}

fn fmt_count(v: f64) -> String {
    if v < 10.0 && v.fract() != 0.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.0}")
    }
}
fn fmt_usd(v: f64) -> String {
    usd(v)
}
fn fmt_ms(v: f64) -> String {
    format!("{v:.0} ms")
}
fn fmt_pct(v: f64) -> String {
    pct(v)
}

fn quantile_lines(
    series: &[Point],
    q: impl Fn(&StatsView) -> crate::store::Quantiles,
) -> Vec<Line<'static>> {
    vec![
        Line {
            name: "p50",
            class: "s1",
            values: values(series, |s| q(s).p50.map(|v| v as f64)),
        },
        Line {
            name: "p95",
            class: "s2",
            values: values(series, |s| q(s).p95.map(|v| v as f64)),
        },
        Line {
            name: "p99",
            class: "s3",
            values: values(series, |s| q(s).p99.map(|v| v as f64)),
        },
    ]
}

#[derive(Template)]
#[template(path = "overview.html")]
struct OverviewPage {
    nav: Nav,
    o: views::Overview,
    s: StatsView,
    charts: Vec<String>,
    #[allow(clippy::type_complexity)]
    tops: Vec<(&'static str, &'static str, Vec<(TopView, String, u32)>)>,
}

impl OverviewPage {
    /// What cache hits saved in the window.
    fn saved(&self) -> String {
        usd(self.o.cache_saved_usd)
    }
}

/// `GET /`.
pub async fn overview(
    State(state): State<AppState>,
    Query(q): Query<BTreeMap<String, String>>,
) -> PageResult {
    let v = ViewQuery::parse(&q, &[], now_ms())?;
    let o = match views::overview(&state.reader, &v, state.ingest.as_ref()).await {
        Ok(o) => o,
        // The store is down: say so, with what the ingest side knows (drops, spool).
        Err(e @ ApiError::Store(_)) => {
            let (status, message) = e.status_and_message();
            let mut resp = render(&ErrorPage {
                nav: Nav::new("overview", "/", None),
                status: status.to_string(),
                message,
                ingest: Some(views::IngestHealth::read(state.ingest.as_ref())),
            });
            *resp.status_mut() = status;
            return Ok(resp);
        }
        Err(e) => return Err(e.into()),
    };
    let t = chart_times(&o.series);
    let one = |name, f: fn(&StatsView) -> f64| {
        vec![Line {
            name,
            class: "s1",
            values: values(&o.series, |s| Some(f(s))),
        }]
    };
    let charts = vec![
        chart::line_chart(
            "Requests",
            &t,
            &one("requests", |s| s.stats.requests as f64),
            fmt_count,
        ),
        chart::capped_line_chart(
            "Error rate",
            &t,
            &one("errors", |s| s.error_rate),
            fmt_pct,
            1.0,
        ),
        chart::line_chart("Cost", &t, &one("USD", |s| s.stats.cost_usd), fmt_usd),
        chart::line_chart(
            "Tokens",
            &t,
            &one("tokens", |s| s.total_tokens as f64),
            fmt_count,
        ),
        chart::line_chart(
            "Latency",
            &t,
            &quantile_lines(&o.series, |s| s.stats.latency_ms),
            fmt_ms,
        ),
        chart::line_chart(
            "Time to first token",
            &t,
            &quantile_lines(&o.series, |s| s.stats.ttft_ms),
            fmt_ms,
        ),
    ];
    let bars = |rows: &[TopView], link: &dyn Fn(&str) -> String| {
        let max = rows.iter().map(|r| r.cost_usd).fold(0.0, f64::max);
        rows.iter()
            .map(|r| {
                let w = if max > 0.0 {
                    (r.cost_usd / max * 100.0).round() as u32
                } else {
                    0
                };
                (r.clone(), link(&r.key), w)
            })
            .collect::<Vec<_>>()
    };
    let tops = vec![
        (
            "models",
            "Model",
            bars(&o.top_models, &|k| {
                v.link("/requests", &[("model", Some(k))])
            }),
        ),
        (
            "providers",
            "Provider",
            bars(&o.top_providers, &|k| {
                v.link("/requests", &[("provider", Some(k))])
            }),
        ),
        (
            "users",
            "User",
            bars(&o.top_users, &|k| {
                v.link(&format!("/users/{}", enc(k)), &[])
            }),
        ),
    ];
    Ok(render(&OverviewPage {
        nav: Nav::new("overview", "/", Some(&v)),
        s: o.summary.clone(),
        o,
        charts,
        tops,
    }))
}

/// The requests form's current values.
struct FormValues {
    model: String,
    provider: String,
    status: String,
    user_id: String,
    session_id: String,
    pkey: String,
    pvalue: String,
}

#[derive(Template)]
#[template(path = "requests.html")]
struct RequestsPage {
    nav: Nav,
    f: FormValues,
    keep: Vec<(String, String)>,
    clear: String,
    rows: Vec<RowView>,
    next: String,
}

/// `GET /requests`.
pub async fn requests(
    State(state): State<AppState>,
    Query(q): Query<BTreeMap<String, String>>,
) -> PageResult {
    let mut v = ViewQuery::parse(&q, &["pkey", "pvalue"], now_ms())?;
    let get = |k: &str| q.get(k).cloned().unwrap_or_default();
    let (pkey, pvalue) = (get("pkey"), get("pvalue"));
    if !pkey.is_empty() {
        v.filter
            .properties
            .push((pkey.to_ascii_lowercase(), pvalue.clone()));
    }
    let page = state.reader.list(v.filter.clone()).await?;
    let next = page
        .next_cursor
        .map(|c| v.link("/requests", &[("cursor", Some(&c.encode()))]))
        .unwrap_or_default();
    let form_keys = [
        "model",
        "provider",
        "status",
        "user_id",
        "session_id",
        "pkey",
        "pvalue",
        "cursor",
    ];
    let keep = v
        .params
        .iter()
        .filter(|(k, _)| !form_keys.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let filtered = v
        .params
        .keys()
        .any(|k| form_keys.contains(&k.as_str()) && k != "cursor" || k.starts_with("property."));
    let clear = if filtered {
        let drop: Vec<(&str, Option<&str>)> = v
            .params
            .keys()
            .filter(|k| form_keys.contains(&k.as_str()) || k.starts_with("property."))
            .map(|k| (k.as_str(), None))
            .collect();
        v.link("/requests", &drop)
    } else {
        String::new()
    };
    Ok(render(&RequestsPage {
        nav: Nav::new("requests", "/requests", Some(&v)),
        f: FormValues {
            model: get("model"),
            provider: get("provider"),
            status: get("status"),
            user_id: get("user_id"),
            session_id: get("session_id"),
            pkey,
            pvalue,
        },
        keep,
        clear,
        rows: page.records.iter().map(RowView::from).collect(),
        next,
    }))
}

#[derive(Template)]
#[template(path = "request.html")]
struct RequestPage {
    nav: Nav,
    id: String,
    fields: Vec<(&'static str, String)>,
    request_body: String,
    request_truncated: bool,
    response_body: String,
    response_truncated: bool,
    reassembled: Option<String>,
}

/// JSON bodies pretty-printed with their keys in the original order (transcoded, not parsed
/// into a map); anything else as stored.
fn pretty(body: Option<&str>) -> String {
    let Some(b) = body else {
        return "(not stored)".to_owned();
    };
    let mut de = serde_json::Deserializer::from_str(b);
    let mut out = Vec::with_capacity(b.len() * 2);
    let mut ser = serde_json::Serializer::pretty(&mut out);
    match serde_transcode::transcode(&mut de, &mut ser).and_then(|()| de.end()) {
        Ok(()) => String::from_utf8(out).unwrap_or_else(|_| b.to_owned()),
        Err(_) => b.to_owned(),
    }
}

/// The text a streamed response carried, from its SSE `data:` payloads: OpenAI chat and
/// legacy completions deltas, Responses API text deltas, and Anthropic text deltas.
pub fn reassemble(sse: &str) -> Option<String> {
    let mut out = String::new();
    let mut any = false;
    for line in sse.lines() {
        let Some(data) = line.strip_prefix("data:") else {
            continue;
        };
        let Ok(v) = serde_json::from_str::<serde_json::Value>(data.trim()) else {
            continue;
        };
        any = true;
        if let Some(choices) = v.get("choices").and_then(|c| c.as_array()) {
            for c in choices {
                let text = c
                    .pointer("/delta/content")
                    .or_else(|| c.get("text"))
                    .and_then(|t| t.as_str());
                out.push_str(text.unwrap_or(""));
            }
            continue;
        }
        match v.get("type").and_then(|t| t.as_str()) {
            Some("response.output_text.delta") => {
                out.push_str(v.get("delta").and_then(|d| d.as_str()).unwrap_or(""))
            }
            Some("content_block_delta") => out.push_str(
                v.pointer("/delta/text")
                    .or_else(|| v.pointer("/delta/partial_json"))
                    .and_then(|d| d.as_str())
                    .unwrap_or(""),
            ),
            _ => {}
        }
    }
    any.then_some(out)
}

/// `GET /requests/<id>`.
pub async fn request(State(state): State<AppState>, Path(id): Path<String>) -> PageResult {
    let uuid = uuid::Uuid::parse_str(&id)
        .map_err(|_| ApiError::BadRequest(format!("{id:?} is not a request id")))?
        .to_string();
    let r = state
        .reader
        .get(uuid.clone())
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no request {uuid}")))?;
    let json = crate::api::record_json(&r, false);
    let fields = [
        "ts",
        "provider",
        "endpoint",
        "method",
        "model",
        "response_model",
        "status",
        "error",
        "stream",
        "latency_ms",
        "ttft_ms",
        "prompt_tokens",
        "completion_tokens",
        "cache_read_tokens",
        "cache_write_tokens",
        "reasoning_tokens",
        "total_tokens",
        "tokens_estimated",
        "cost_usd",
        "user_id",
        "session_id",
        "session_path",
        "session_name",
        "properties",
        "cache_status",
        "cost_saved_usd",
        "router",
        "attempts",
        "parent_request_id",
        "request_bytes",
        "response_bytes",
        "api_key_hint",
        "provider_request_id",
    ]
    .into_iter()
    .map(|k| {
        let v = match json.get(k) {
            None | Some(serde_json::Value::Null) => "–".to_owned(),
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(v) => v.to_string(),
        };
        (k, v)
    })
    .collect();
    let reassembled = if r.stream {
        r.response_body.as_deref().and_then(reassemble)
    } else {
        None
    };
    Ok(render(&RequestPage {
        nav: Nav::new("requests", "/requests", None),
        id: uuid,
        fields,
        request_body: pretty(r.request_body.as_deref()),
        request_truncated: r.request_body_truncated,
        response_body: if r.stream {
            r.response_body
                .clone()
                .unwrap_or_else(|| "(not stored)".into())
        } else {
            pretty(r.response_body.as_deref())
        },
        response_truncated: r.response_body_truncated,
        reassembled,
    }))
}

/// One node of a session's path tree.
struct TreeNode {
    /// Indentation, in em.
    indent: f64,
    segment: String,
    requests: u64,
    cost: String,
}

/// The `session_path` tree: every path prefix once, in path order, with the requests and cost
/// at or below it.
fn tree<'a>(records: impl Iterator<Item = (Option<&'a str>, Option<f64>)>) -> Vec<TreeNode> {
    let mut nodes: BTreeMap<Vec<String>, (u64, f64)> = BTreeMap::new();
    for (path, cost) in records {
        let Some(path) = path else {
            continue;
        };
        let parts: Vec<String> = path
            .split('/')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        for i in 1..=parts.len() {
            let n = nodes.entry(parts[..i].to_vec()).or_default();
            n.0 += 1;
            n.1 += cost.unwrap_or(0.0);
        }
    }
    nodes
        .into_iter()
        .map(|(path, (requests, cost))| TreeNode {
            indent: (path.len() - 1) as f64 * 1.25,
            segment: format!("/{}", path.last().cloned().unwrap_or_default()),
            requests,
            cost: usd(cost),
        })
        .collect()
}

#[derive(Template)]
#[template(path = "session.html")]
struct SessionPage {
    nav: Nav,
    id: String,
    name: Option<String>,
    s: StatsView,
    tree: Vec<TreeNode>,
    waterfall: String,
    rows: Vec<RowView>,
}

/// `GET /sessions/<id>`.
pub async fn session(State(state): State<AppState>, Path(id): Path<String>) -> PageResult {
    let sv = views::session(&state.reader, &id).await?;
    let start = sv.requests.first().map(|r| r.ts).unwrap_or(0);
    let bars: Vec<Bar> = sv
        .requests
        .iter()
        .map(|r| Bar {
            label: format!(
                "{} {}",
                r.session_path.as_deref().unwrap_or(""),
                r.model.as_deref().unwrap_or(&r.endpoint)
            )
            .trim()
            .chars()
            .take(28)
            .collect(),
            href: format!("/requests/{}", r.request_id),
            offset_ms: r.ts - start,
            duration_ms: r.latency_ms as i64,
            error: r.status == 0 || r.status >= 400 || r.error.is_some(),
        })
        .collect();
    Ok(render(&SessionPage {
        nav: Nav::new("sessions", "/sessions", None),
        tree: tree(
            sv.requests
                .iter()
                .map(|r| (r.session_path.as_deref(), r.cost_usd)),
        ),
        waterfall: chart::waterfall(&bars),
        rows: sv.requests.iter().map(RowView::from).collect(),
        id: sv.session_id,
        name: sv.session_name,
        s: sv.summary,
    }))
}

#[derive(Template)]
#[template(path = "sessions.html")]
struct SessionsPage {
    nav: Nav,
    rows: Vec<(GroupView, String)>,
}

/// `GET /sessions`.
pub async fn sessions(
    State(state): State<AppState>,
    Query(q): Query<BTreeMap<String, String>>,
) -> PageResult {
    let v = ViewQuery::parse(&q, &[], now_ms())?;
    let list = views::list(&state.reader, &v, GroupBy::Session).await?;
    Ok(render(&SessionsPage {
        nav: Nav::new("sessions", "/sessions", Some(&v)),
        rows: list
            .rows
            .into_iter()
            .map(|r| {
                let href = format!("/sessions/{}", enc(&r.key));
                (r, href)
            })
            .collect(),
    }))
}

#[derive(Template)]
#[template(path = "users.html")]
struct UsersPage {
    nav: Nav,
    rows: Vec<(GroupView, String)>,
}

/// `GET /users`.
pub async fn users(
    State(state): State<AppState>,
    Query(q): Query<BTreeMap<String, String>>,
) -> PageResult {
    let v = ViewQuery::parse(&q, &[], now_ms())?;
    let list = views::list(&state.reader, &v, GroupBy::User).await?;
    Ok(render(&UsersPage {
        nav: Nav::new("users", "/users", Some(&v)),
        rows: list
            .rows
            .into_iter()
            .map(|r| {
                let href = v.link(&format!("/users/{}", enc(&r.key)), &[]);
                (r, href)
            })
            .collect(),
    }))
}

#[derive(Template)]
#[template(path = "user.html")]
struct UserPage {
    nav: Nav,
    id: String,
    s: StatsView,
    chart: String,
    rows: Vec<RowView>,
}

/// `GET /users/<id>`.
pub async fn user(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<BTreeMap<String, String>>,
) -> PageResult {
    let v = ViewQuery::parse(&q, &[], now_ms())?;
    let uv = views::user(&state.reader, &v, &id).await?;
    let chart = chart::line_chart(
        "Cost",
        &chart_times(&uv.series),
        &[Line {
            name: "USD",
            class: "s1",
            values: values(&uv.series, |s| Some(s.stats.cost_usd)),
        }],
        fmt_usd,
    );
    Ok(render(&UserPage {
        nav: Nav::new("users", &format!("/users/{}", enc(&id)), Some(&v)),
        id: uv.user_id,
        s: uv.summary,
        chart,
        rows: uv.recent.iter().map(RowView::from).collect(),
    }))
}

#[derive(Template)]
#[template(path = "models.html")]
struct ModelsPage {
    nav: Nav,
    models: Vec<(GroupView, String)>,
    providers: Vec<(GroupView, String)>,
}

/// `GET /models`.
pub async fn models(
    State(state): State<AppState>,
    Query(q): Query<BTreeMap<String, String>>,
) -> PageResult {
    let v = ViewQuery::parse(&q, &[], now_ms())?;
    let m = views::models(&state.reader, &v).await?;
    let linked = |rows: Vec<GroupView>, param: &str| {
        rows.into_iter()
            .map(|r| {
                let href = v.link("/requests", &[(param, Some(&r.key))]);
                (r, href)
            })
            .collect()
    };
    Ok(render(&ModelsPage {
        nav: Nav::new("models", "/models", Some(&v)),
        models: linked(m.models, "model"),
        providers: linked(m.providers, "provider"),
    }))
}

#[derive(Template)]
#[template(path = "properties.html")]
struct PropertiesPage {
    nav: Nav,
    keys: Vec<(String, String, bool)>,
    key_label: String,
    values: Vec<(GroupView, String)>,
}

/// `GET /properties`.
pub async fn properties(
    State(state): State<AppState>,
    Query(q): Query<BTreeMap<String, String>>,
) -> PageResult {
    let v = ViewQuery::parse(&q, &["key"], now_ms())?;
    let p = views::properties(&state.reader, &v).await?;
    let key = p.key.clone().unwrap_or_default();
    Ok(render(&PropertiesPage {
        nav: Nav::new("properties", "/properties", Some(&v)),
        keys: p
            .keys
            .iter()
            .map(|k| {
                (
                    k.clone(),
                    v.link("/properties", &[("key", Some(k))]),
                    *k == key,
                )
            })
            .collect(),
        values: p
            .values
            .into_iter()
            .map(|r| {
                let href = v.link(
                    "/requests",
                    &[
                        ("pkey", Some(&key)),
                        ("pvalue", Some(&r.key)),
                        ("key", None),
                    ],
                );
                (r, href)
            })
            .collect(),
        key_label: key,
    }))
}

/// `GET /assets/<name>`: the embedded stylesheet and icon.
pub async fn asset(Path(name): Path<String>) -> Response {
    let (body, content_type) = match name.as_str() {
        "tally.css" => (
            include_str!("../assets/tally.css"),
            "text/css; charset=utf-8",
        ),
        "favicon.svg" => (include_str!("../assets/favicon.svg"), "image/svg+xml"),
        _ => return (StatusCode::NOT_FOUND, "no such asset\n").into_response(),
    };
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pretty_keeps_key_order_and_leaves_non_json_alone() {
        assert_eq!(
            pretty(Some(r#"{"z":1,"a":[true]}"#)),
            "{\n  \"z\": 1,\n  \"a\": [\n    true\n  ]\n}"
        );
        assert_eq!(pretty(Some("{\"a\":1} trailing")), "{\"a\":1} trailing");
        assert_eq!(pretty(None), "(not stored)");
    }

    #[test]
    fn formats() {
        assert_eq!(thousands(1234567), "1,234,567");
        assert_eq!(thousands(12), "12");
        assert_eq!(usd(0.0), "$0");
        assert_eq!(usd(0.00123), "$0.001230");
        assert_eq!(usd(1.5), "$1.5000");
        assert_eq!(ms(Some(12_345)), "12.3 s");
        assert_eq!(enc("a b/c+d"), "a%20b%2Fc%2Bd");
    }

    #[test]
    fn reassembles_streams_of_each_format() {
        let openai = "data: {\"choices\":[{\"delta\":{\"role\":\"assistant\"}}]}\n\ndata: {\"choices\":[{\"delta\":{\"content\":\"Hel\"}}]}\n\ndata: {\"choices\":[{\"delta\":{\"content\":\"lo\"}}]}\n\ndata: [DONE]\n\n";
        assert_eq!(reassemble(openai).as_deref(), Some("Hello"));
        let anthropic = "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"delta\":{\"type\":\"text_delta\",\"text\":\"Hi\"}}\n\n";
        assert_eq!(reassemble(anthropic).as_deref(), Some("Hi"));
        let responses = "data: {\"type\":\"response.output_text.delta\",\"delta\":\"ok\"}\n\n";
        assert_eq!(reassemble(responses).as_deref(), Some("ok"));
        assert_eq!(reassemble("not a stream"), None);
    }

    #[test]
    fn session_tree_counts_every_prefix() {
        let t = tree(
            [
                (Some("/plan/search"), Some(1.0)),
                (Some("/plan"), None),
                (None, Some(2.0)),
            ]
            .into_iter(),
        );
        let flat: Vec<(f64, &str, u64)> = t
            .iter()
            .map(|n| (n.indent, n.segment.as_str(), n.requests))
            .collect();
        assert_eq!(flat, vec![(0.0, "/plan", 2), (1.25, "/search", 1)]);
    }
}

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

/// Budgets are set in dollars and cents; sub-cent digits would be noise there.
fn usd_cents(v: f64) -> String {
    format!("${v:.2}")
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
