//! The requests list, with its filter form.

use std::collections::BTreeMap;

use askama::Template;
use axum::extract::{Query, State};

use super::{render, Nav, PageResult, RowView};
use crate::format::now_ms;
use crate::query::ViewQuery;
use crate::AppState;

/// The requests form's current values.
struct FormValues {
    key_name: String,
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
        "key_name",
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
            key_name: get("key_name"),
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
