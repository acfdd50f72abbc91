//! `tally reconcile`: the providers' own usage and cost reports (a fake of each admin API,
//! paged) against Tally's records, with planted gaps it must find.

use std::process::Command;

use serde_json::{json, Value};

use crate::support::bin::{Bin, Options};
use crate::support::fake_admin::{Billed, FakeAdmin, ADMIN_KEY};
use crate::support::fake_upstream::{ANTHROPIC_USAGE, OPENAI_USAGE};
use crate::support::*;

pub(crate) fn today_and_yesterday() -> (String, String) {
    let now = chrono::Utc::now();
    let d = |t: chrono::DateTime<chrono::Utc>| t.format("%Y-%m-%d").to_string();
    (d(now), d(now - chrono::Duration::days(1)))
}

pub(crate) fn reconcile(
    bin: &Bin,
    admin: &FakeAdmin,
    provider: &str,
    key: Option<&str>,
) -> std::process::Output {
    let cfg = bin.dir.path().join("tally.toml");
    let (_, yesterday) = today_and_yesterday();
    let mut cmd = Command::new(TALLY_BIN);
    cmd.args([
        "--config",
        cfg.to_str().expect("utf8"),
        "reconcile",
        provider,
    ])
    .args([
        "--from",
        &yesterday,
        "--admin-base-url",
        &admin.url(),
        "--json",
    ])
    .env_remove("OPENAI_ADMIN_KEY")
    .env_remove("ANTHROPIC_ADMIN_KEY")
    .env_remove("TALLY_CLICKHOUSE_URL");
    if let Some(k) = key {
        let var = if provider == "anthropic" {
            "ANTHROPIC_ADMIN_KEY"
        } else {
            "OPENAI_ADMIN_KEY"
        };
        cmd.env(var, k);
    }
    cmd.output().expect("run tally reconcile")
}

pub(crate) fn report(out: &std::process::Output) -> Value {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("report JSON")
}

pub(crate) fn row<'a>(report: &'a Value, day: &str, model: &str) -> &'a Value {
    report["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .find(|r| r["day"] == day && r["model"] == model)
        .unwrap_or_else(|| panic!("no row {day} {model}: {report}"))
}

async fn wait_records(bin: &Bin, n: i64) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while bin.rows("SELECT count(*) FROM requests") < n {
        assert!(
            std::time::Instant::now() < deadline,
            "records never arrived"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_reports_against_tally_name_each_planted_gap() {
    let up = FakeUpstream::start().await;
    let bin = Bin::start(&up.url()).await;
    for model in [
        "gpt-4o-mini",
        "gpt-4o-mini",
        "gpt-4o-mini",
        "mystery-9",
        "mystery-9",
    ] {
        let body = json!({"model": model, "messages": [{"role": "user", "content": "hi"}]});
        let (status, _, _) = post_json(&bin.url("/v1/chat/completions"), &[], &body).await;
        assert_eq!(status, 200);
    }
    wait_records(&bin, 5).await;
    let conn = rusqlite::Connection::open(bin.dir.path().join("tally.db")).expect("open");
    let mini_cost: f64 = conn
        .query_row(
            "SELECT sum(cost_usd) FROM requests WHERE model = 'gpt-4o-mini'",
            [],
            |r| r.get(0),
        )
        .expect("cost");
    let (prompt, completion, cached, _) = OPENAI_USAGE;
    let (today, yesterday) = today_and_yesterday();
    let billed = |day: &str, model: &str, n: u64, cost: f64| Billed {
        day: day.into(),
        model: model.into(),
        requests: n,
        uncached_input: n * (prompt - cached),
        cache_read: n * cached,
        cache_write: 0,
        output: n * completion,
        cost_usd: cost,
    };
    let admin = FakeAdmin::start(vec![
        // Tokens agree, the bill is twice Tally's: mispriced.
        billed(&today, "gpt-4o-mini-2024-07-18", 3, 2.0 * mini_cost),
        // Tally has no price for it.
        billed(&today, "mystery-9", 2, 0.01),
        // Never through Tally: today, and yesterday on the report's second page.
        billed(&today, "gpt-4.1-2025-04-14", 10, 0.5),
        billed(&yesterday, "gpt-4o-2024-08-06", 5, 0.01),
    ])
    .await;

    let r = report(&reconcile(&bin, &admin, "openai", Some(ADMIN_KEY)));
    let mini = row(&r, &today, "gpt-4o-mini");
    assert_eq!(mini["gaps"], json!(["mispriced"]), "{mini}");
    assert_eq!(mini["tally"]["requests"], 3);
    assert_eq!(mini["provider"]["requests"], 3);
    assert_eq!(
        mini["tally"]["input_tokens"],
        mini["provider"]["input_tokens"]
    );
    assert!((mini["provider"]["cost_usd"].as_f64().expect("cost") - 2.0 * mini_cost).abs() < 1e-12);
    assert_eq!(row(&r, &today, "mystery-9")["gaps"], json!(["unpriced"]));
    assert_eq!(
        row(&r, &today, "gpt-4.1")["gaps"],
        json!(["not through Tally"])
    );
    assert_eq!(
        row(&r, &yesterday, "gpt-4o")["gaps"],
        json!(["not through Tally"])
    );
    assert_eq!(r["rows"].as_array().expect("rows").len(), 4, "{r}");
    let asked = admin.asked.lock().expect("lock").clone();
    for path in [
        "/v1/organization/usage/completions",
        "/v1/organization/costs",
    ] {
        assert!(
            asked
                .iter()
                .any(|a| a.starts_with(path) && a.contains("&page=")),
            "{path} read past its first page: {asked:?}"
        );
    }

    // The dashboard shows the newest report.
    let (_, _, page) = get(&bin.dashboard_url("/reconcile")).await;
    let page = String::from_utf8_lossy(&page);
    assert!(
        page.contains("not through Tally") && page.contains("gpt-4.1"),
        "{page}"
    );
    let (_, _, api) = get(&bin.dashboard_url("/api/reconcile")).await;
    let api: Value = serde_json::from_slice(&api).expect("json");
    assert_eq!(api["reports"][0]["provider"], "openai");

    // No key, or a wrong one: a clear error, nothing kept.
    let none = reconcile(&bin, &admin, "openai", None);
    assert!(!none.status.success());
    assert!(String::from_utf8_lossy(&none.stderr).contains("set OPENAI_ADMIN_KEY"));
    let wrong = reconcile(&bin, &admin, "openai", Some("sk-admin-wrong"));
    assert!(!wrong.status.success());
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("HTTP 401"));
    assert_eq!(bin.rows("SELECT count(*) FROM reconciliations"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_reports_in_cents_agree_where_tally_saw_the_traffic() {
    let up = FakeUpstream::start().await;
    let options = Options {
        rest: format!("[providers.anthropic]\nbase_url = \"{}\"\n", up.url()),
        ..Options::default()
    };
    let bin = Bin::start_with(&up.url(), tempfile::tempdir().expect("tempdir"), &options).await;
    for _ in 0..2 {
        let body = json!({"model": "claude-sonnet-4-5", "max_tokens": 9, "messages": [{"role": "user", "content": "hi"}]});
        let (status, _, _) = post_json(&bin.url("/anthropic/v1/messages"), &[], &body).await;
        assert_eq!(status, 200);
    }
    wait_records(&bin, 2).await;
    let conn = rusqlite::Connection::open(bin.dir.path().join("tally.db")).expect("open");
    let cost: f64 = conn
        .query_row("SELECT sum(cost_usd) FROM requests", [], |r| r.get(0))
        .expect("cost");
    let (input, write, read, output) = ANTHROPIC_USAGE;
    let (today, _) = today_and_yesterday();
    let admin = FakeAdmin::start(vec![
        Billed {
            day: today.clone(),
            model: "claude-sonnet-4-5-20250929".into(),
            requests: 0,
            uncached_input: 2 * input,
            cache_read: 2 * read,
            cache_write: 2 * write,
            output: 2 * output,
            cost_usd: cost,
        },
        Billed {
            day: today.clone(),
            model: "claude-opus-4-6".into(),
            requests: 0,
            uncached_input: 1000,
            cache_read: 0,
            cache_write: 0,
            output: 100,
            cost_usd: 0.0075,
        },
    ])
    .await;
    let r = report(&reconcile(&bin, &admin, "anthropic", Some(ADMIN_KEY)));
    let sonnet = row(&r, &today, "claude-sonnet-4-5");
    assert_eq!(sonnet["gaps"], json!([]), "{sonnet}");
    assert_eq!(
        sonnet["provider"]["requests"],
        Value::Null,
        "Anthropic's report counts no requests"
    );
    assert!(
        (sonnet["provider"]["cost_usd"].as_f64().expect("cost") - cost).abs() < 1e-9,
        "cents read as USD / 100"
    );
    assert_eq!(
        row(&r, &today, "claude-opus-4-6")["gaps"],
        json!(["not through Tally"])
    );
    let asked = admin.asked.lock().expect("lock").clone();
    assert!(
        asked.iter().all(|a| a.starts_with("/v1/organizations/")),
        "{asked:?}"
    );
}
