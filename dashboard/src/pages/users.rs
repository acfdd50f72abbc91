//! The users list.

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
