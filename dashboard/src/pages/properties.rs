//! The property keys in use, and the breakdown by one key's values.

use std::collections::BTreeMap;

use askama::Template;
use axum::extract::{Query, State};

use super::{render, Nav, PageResult};
use crate::format::now_ms;
use crate::query::ViewQuery;
use crate::views::{self, GroupView};
use crate::AppState;

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
