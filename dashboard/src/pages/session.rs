//! One session: its path tree, a waterfall of its requests, and the requests.

use std::collections::BTreeMap;

use askama::Template;
use axum::extract::{Path, State};

use super::{render, Nav, PageResult, RowView};
use crate::chart::{self, Bar};
use crate::format::usd;
use crate::views::{self, StatsView};
use crate::AppState;

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
            error: r.is_error(),
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

#[cfg(test)]
mod tests {
    use super::*;

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
