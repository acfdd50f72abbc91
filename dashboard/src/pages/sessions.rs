//! The sessions list.

use std::collections::BTreeMap;

use askama::Template;
use axum::extract::{Query, State};

use super::{render, Nav, PageResult};
use crate::format::{enc, now_ms};
use crate::query::ViewQuery;
use crate::store::GroupBy;
use crate::views::{self, GroupView};
use crate::AppState;

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
