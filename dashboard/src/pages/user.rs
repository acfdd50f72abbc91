//! One user: totals, cost over time, recent requests.

use std::collections::BTreeMap;

use askama::Template;
use axum::extract::{Path, Query, State};

use super::{chart_times, render, values, Nav, PageResult, RowView};
use crate::chart::{self, Line};
use crate::format::{enc, fmt_usd, now_ms};
use crate::query::ViewQuery;
use crate::views::{self, StatsView};
use crate::AppState;

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
