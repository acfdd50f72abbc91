//! The server-rendered pages, one module each. Each handler builds its view with
//! [`crate::views`] (the same function the JSON endpoint uses) and renders an askama template
//! from `templates/`; this module holds what they share: rendering, the error page, request
//! rows, chart series, and number formatting on the view types.
//!
//! Everything from the store is untrusted: askama escapes every `{{ }}` by default, and the
//! only unescaped output is SVG built by [`crate::chart`], which escapes its own text.

mod assets;
mod budgets;
mod models;
mod nav;
mod overview;
mod properties;
mod request;
mod requests;
mod session;
mod sessions;
mod user;
mod users;

use askama::Template;
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use tally_ingest::Record;

use crate::chart::Line;
use crate::error::ApiError;
use crate::format::{enc, format_ts, ms, pct, thousands, usd};
use crate::views::{self, Point, StatsView, TopView};

pub use assets::asset;
pub use budgets::budgets;
pub use models::{keys, models, reconcile};
pub(crate) use nav::Nav;
pub use overview::overview;
pub use properties::properties;
pub use request::{reassemble, request};
pub use requests::requests;
pub use session::session;
pub use sessions::sessions;
pub use user::user;
pub use users::users;

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
            is_error: r.is_error(),
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
pub(crate) fn render(t: &impl Template) -> Response {
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
pub(crate) struct ErrorPage {
    pub(crate) nav: Nav,
    pub(crate) status: String,
    pub(crate) message: String,
    /// The ingest warning, on the overview: during a store outage it is what matters most.
    pub(crate) ingest: Option<views::IngestHealth>,
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

pub(crate) type PageResult = Result<Response, PageError>;

pub(crate) fn chart_times(series: &[Point]) -> Vec<i64> {
    series.iter().map(|p| p.t).collect()
}

pub(crate) fn values(series: &[Point], f: impl Fn(&StatsView) -> Option<f64>) -> Vec<Option<f64>> {
    series.iter().map(|p| f(&p.stats)).collect()
}

pub(crate) fn quantile_lines(
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
