//! #21, Prometheus and `Server-Timing`: the per-model series on `/metrics` (durations, TTFT,
//! tokens, cost, Tally's overhead) with bounded model labels, and the optional header.

use serde_json::json;

use crate::support::bin::{Bin, Options};
use crate::support::fake_upstream::OPENAI_USAGE;
use crate::support::*;

async fn chat(bin: &Bin, model: &str, stream: bool, delay_ms: &str) -> http::HeaderMap {
    let body = json!({"model": model, "stream": stream,
                      "messages": [{"role": "user", "content": "hi"}]});
    let (status, headers, _) = post_json(
        &bin.url("/v1/chat/completions"),
        &[("x-fake-delay-ms", delay_ms)],
        &body,
    )
    .await;
    assert_eq!(status, 200);
    headers
}

/// `tally;dur=…, upstream;dur=…` in milliseconds with three decimals.
fn timings(h: &http::HeaderMap) -> (f64, f64) {
    let v = h
        .get("server-timing")
        .expect("Server-Timing")
        .to_str()
        .expect("ascii");
    let mut parts = v.split(", ").map(|p| {
        let (name, dur) = p.split_once(";dur=").unwrap_or_else(|| panic!("{v}"));
        assert_eq!(dur.split_once('.').map(|(_, d)| d.len()), Some(3), "{v}");
        (
            name.to_owned(),
            dur.parse::<f64>().unwrap_or_else(|_| panic!("{v}")),
        )
    });
    let (t, u) = (
        parts.next().expect("tally"),
        parts.next().expect("upstream"),
    );
    assert_eq!((t.0.as_str(), u.0.as_str()), ("tally", "upstream"), "{v}");
    assert!(parts.next().is_none(), "{v}");
    (t.1, u.1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_have_per_model_histograms_and_counters_and_server_timing_splits_the_wait() {
    let up = FakeUpstream::start().await;
    let opts = Options {
        proxy: "server_timing = true\nmetrics_max_models = 1\n".into(),
        ..Options::default()
    };
    let bin = Bin::start_with(&up.url(), tempfile::tempdir().expect("tempdir"), &opts).await;
    let h = chat(&bin, "gpt-4o-mini", false, "150").await;
    let (tally, upstream) = timings(&h);
    assert!(
        upstream >= 150.0,
        "the upstream's 150 ms are the upstream's: {upstream}"
    );
    assert!(tally < upstream, "tally {tally} ms, upstream {upstream} ms");
    chat(&bin, "gpt-4o-mini", true, "0").await;
    chat(&bin, "mystery-a", false, "0").await;
    chat(&bin, "mystery-b", false, "0").await;
    bin.wait_for_rows(4).await;
    let (_, c, cached, _) = OPENAI_USAGE;
    let priced = "provider=\"openai\",model=\"gpt-4o-mini\"";
    bin.assert_metrics(&[
        &format!("tally_request_duration_seconds_count{{{priced},status=\"2xx\"}} 2"),
        &format!("tally_time_to_first_token_seconds_count{{{priced}}} 2"),
        &format!("tally_tokens_total{{{priced},class=\"output\"}} {}", 2 * c),
        &format!("tally_tokens_total{{{priced},class=\"cache_read\"}} {}", 2 * cached),
        // The first unpriced name keeps its label (the cap is 1); the next is `other`.
        "tally_request_duration_seconds_count{provider=\"openai\",model=\"mystery-a-2024-08-06\",status=\"2xx\"} 1",
        "tally_request_duration_seconds_count{provider=\"openai\",model=\"other\",status=\"2xx\"} 1",
        "tally_overhead_seconds_count{provider=\"openai\"} 4",
    ])
    .await;
    let (_, _, body) = get(&bin.dashboard_url("/metrics")).await;
    let metrics = String::from_utf8_lossy(&body);
    // Each class agrees with the stored records.
    for (class, column) in [
        ("input", "prompt_tokens"),
        ("output", "completion_tokens"),
        ("cache_read", "cache_read_tokens"),
    ] {
        let stored = bin.rows(&format!(
            "SELECT sum({column}) FROM requests WHERE model = 'gpt-4o-mini'"
        ));
        let line = format!("tally_tokens_total{{{priced},class=\"{class}\"}} {stored}");
        assert!(metrics.contains(&line), "no {line} in\n{metrics}");
    }
    let cost = metrics
        .lines()
        .find(|l| l.starts_with(&format!("tally_cost_usd_total{{{priced}}}")))
        .expect("cost");
    let stored: f64 = bin
        .rows("SELECT CAST(round(sum(cost_usd) * 1e9) AS INTEGER) FROM requests WHERE model = 'gpt-4o-mini'")
        as f64
        / 1e9;
    let counted: f64 = cost
        .rsplit(' ')
        .next()
        .and_then(|v| v.parse().ok())
        .expect("a number");
    assert!(
        stored > 0.0 && (counted - stored).abs() < 1e-9,
        "{cost} vs stored {stored}"
    );

    // Off by default.
    let plain = Bin::start(&up.url()).await;
    let h = chat(&plain, "gpt-4o-mini", false, "0").await;
    assert!(h.get("server-timing").is_none());
}

/// The `tally_…` names in a PromQL expression.
fn series_names(expr: &str) -> Vec<String> {
    expr.match_indices("tally_")
        .map(|(i, _)| {
            expr[i..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
                .collect()
        })
        .collect()
}

fn dashboard(name: &str) -> serde_json::Value {
    let path = format!(
        "{}/docker/grafana/dashboards/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Every query of a dashboard, with the data source it names.
pub(crate) fn queries(d: &serde_json::Value, field: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for p in d["panels"].as_array().expect("panels") {
        for t in p["targets"].as_array().expect("targets") {
            let uid = t["datasource"]["uid"].as_str().expect("a data source uid");
            let q = t[field]
                .as_str()
                .unwrap_or_else(|| panic!("no {field} in {t}"));
            out.push((uid.to_owned(), q.to_owned()));
        }
    }
    for v in d["templating"]["list"].as_array().into_iter().flatten() {
        let uid = v["datasource"]["uid"].as_str().expect("a data source uid");
        out.push((
            uid.to_owned(),
            v["query"].as_str().expect("query").to_owned(),
        ));
    }
    out
}

/// The Grafana board on Prometheus asks only for series Tally exports, through the data
/// source the compose file provisions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_prometheus_dashboard_names_only_series_tally_exports() {
    let provisioned = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/docker/grafana/provisioning/datasources/tally.yaml"
    ))
    .expect("provisioning");
    let up = FakeUpstream::start().await;
    let bin = Bin::start(&up.url()).await;
    chat(&bin, "gpt-4o-mini", true, "0").await;
    // A refusal too: a family shows on /metrics once it has a series.
    let (status, _, _) = post_json(&bin.url("/nosuch/v1/chat/completions"), &[], &json!({})).await;
    assert_eq!(status, 404);
    bin.wait_for_rows(2).await;
    let (_, _, body) = get(&bin.dashboard_url("/metrics")).await;
    let metrics = String::from_utf8_lossy(&body);
    let d = dashboard("tally-prometheus.json");
    let qs = queries(&d, "expr");
    assert!(qs.len() >= 9, "{qs:?}");
    for (uid, expr) in qs {
        assert!(
            provisioned.contains(&format!("uid: {uid}")),
            "{uid} is not provisioned"
        );
        let names = series_names(&expr);
        assert!(!names.is_empty(), "{expr}");
        for n in names.iter().map(String::as_str) {
            let stem = ["_bucket", "_count", "_sum", "_total"]
                .iter()
                .find_map(|s| n.strip_suffix(s))
                .unwrap_or(n);
            let exported = metrics.lines().any(|l| {
                l.starts_with(&format!("{n}{{"))
                    || l.starts_with(&format!("{n} "))
                    || l.starts_with(&format!("# TYPE {stem} "))
            });
            assert!(exported, "{n} (in {expr}) is not in /metrics:\n{metrics}");
        }
    }
}
