//! Models and providers side by side.

use std::collections::BTreeMap;

use askama::Template;
use axum::extract::{Query, State};

use super::{render, Nav, PageResult};
use crate::format::now_ms;
use crate::query::ViewQuery;
use crate::views::{self, GroupView, UnpricedView};
use crate::AppState;

#[derive(Template)]
#[template(path = "keys.html")]
struct KeysPage {
    nav: Nav,
    keys: Vec<(GroupView, String)>,
}

/// `GET /keys`: the same breakdown per Tally key.
pub async fn keys(
    State(state): State<AppState>,
    Query(q): Query<BTreeMap<String, String>>,
) -> PageResult {
    let v = ViewQuery::parse(&q, &[], now_ms())?;
    let k = views::keys(&state.reader, &v).await?;
    Ok(render(&KeysPage {
        nav: Nav::new("keys", "/keys", Some(&v)),
        keys: k
            .keys
            .into_iter()
            .map(|r| {
                let href = v.link("/requests", &[("key_name", Some(&r.key))]);
                (r, href)
            })
            .collect(),
    }))
}

#[derive(Template)]
#[template(path = "models.html")]
struct ModelsPage {
    nav: Nav,
    models: Vec<(GroupView, String)>,
    providers: Vec<(GroupView, String)>,
    unpriced: Vec<UnpricedView>,
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
        unpriced: m.unpriced,
    }))
}

#[derive(Template)]
#[template(path = "reconcile.html")]
struct ReconcilePage {
    nav: Nav,
    view: views::ReconcileView,
}

/// `GET /reconcile`: the providers' own reports against Tally's records.
pub async fn reconcile(State(state): State<AppState>) -> PageResult {
    let view = views::reconcile(&state.reader).await?;
    Ok(render(&ReconcilePage {
        nav: Nav::new("reconcile", "/reconcile", None),
        view,
    }))
}
