//! The overview: totals, charts over time, and the top models, providers and users by cost.

use std::collections::BTreeMap;

use askama::Template;
use axum::extract::{Query, State};

use super::{chart_times, quantile_lines, render, values, ErrorPage, Nav, PageResult};
use crate::chart::{self, Line};
use crate::error::ApiError;
use crate::format::{enc, fmt_count, fmt_ms, fmt_pct, fmt_usd, now_ms, usd};
use crate::query::ViewQuery;
use crate::views::{self, StatsView, TopView};
use crate::AppState;

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
