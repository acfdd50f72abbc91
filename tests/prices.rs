//! `tally prices`: the catalog refreshed at run time, refused when malformed, and explained.

use serde_json::{json, Value};

use crate::cli::tally;
use crate::support::bin::{Bin, Options};
use crate::support::fake_upstream::OPENAI_USAGE;
use crate::support::*;

async fn cost_of_a_chat(bin: &Bin) -> f64 {
    let body = json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]});
    let (status, h, _) = post_json(&bin.url("/v1/chat/completions"), &[], &body).await;
    assert_eq!(status, 200);
    let id = request_id(&h);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (_, _, b) = get(&bin.dashboard_url(&format!("/api/requests/{id}"))).await;
        if let Ok(v) = serde_json::from_slice::<Value>(&b) {
            if let Some(c) = v["cost_usd"].as_f64() {
                return c;
            }
        }
        assert!(std::time::Instant::now() < deadline, "no record of {id}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_updated_catalog_prices_the_next_start_and_a_malformed_one_is_refused() {
    let up = FakeUpstream::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let catalog = dir.path().join("prices.json");
    let options = Options {
        rest: format!("[pricing]\ncatalog_file = \"{}\"\n", catalog.display()),
        ..Options::default()
    };
    let mut bin = Bin::start_with(&up.url(), dir, &options).await;
    let before = cost_of_a_chat(&bin).await;
    let cfg = bin.dir.path().join("tally.toml");
    let cfg = cfg.to_str().expect("utf8");

    // A new price for gpt-4o-mini, in LiteLLM's format: $1 / $2 per 1M, no cache rate.
    let good = bin.dir.path().join("new.json");
    std::fs::write(
        &good,
        r#"{"gpt-4o-mini": {"input_cost_per_token": 1e-6, "output_cost_per_token": 2e-6, "litellm_provider": "openai", "mode": "chat"}}"#,
    )
    .expect("write");
    let out = tally(&[
        "--config",
        cfg,
        "prices",
        "update",
        "--from",
        good.to_str().expect("utf8"),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let written = std::fs::read(&catalog).expect("the catalog was written");

    // A typo in a price: refused with its line, model and field, and the catalog kept.
    let bad = bin.dir.path().join("bad.json");
    std::fs::write(
        &bad,
        "{\n  \"gpt-4o-mini\": {\n    \"input_cost_per_token\": 1e-6,\n    \"output_cost_per_token\": -2e-6\n  }\n}\n",
    )
    .expect("write");
    let out = tally(&[
        "--config",
        cfg,
        "prices",
        "update",
        "--from",
        bad.to_str().expect("utf8"),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("line 4") && err.contains("output_cost_per_token") && err.contains("kept"),
        "{err}"
    );
    assert_eq!(std::fs::read(&catalog).expect("still there"), written);

    // The running server keeps its prices; the next start takes the new catalog.
    assert_eq!(cost_of_a_chat(&bin).await, before);
    bin.signal("-TERM");
    bin.wait().await;
    let dir = std::mem::replace(&mut bin.dir, tempfile::tempdir().expect("tempdir"));
    let again = Bin::start_with(&up.url(), dir, &options).await;
    let (prompt, completion, _, _) = OPENAI_USAGE;
    let expected = (prompt as f64 * 1.0 + completion as f64 * 2.0) / 1e6;
    let after = cost_of_a_chat(&again).await;
    assert!((after - expected).abs() < 1e-12, "{after} != {expected}");
    assert!(again.log().contains("prices loaded"), "{}", again.log());

    // A catalog file broken on disk stops the start with its name, not a silent fallback,
    // and does not stop its own repair.
    let cfg = again.dir.path().join("tally.toml");
    let cfg = cfg.to_str().expect("utf8");
    std::fs::write(&catalog, "{\"gpt-4o-mini\": {").expect("break it");
    let out = tally(&["--config", cfg, "prices", "show", "gpt-4o-mini"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("pricing.catalog_file"),
        "{err}"
    );
    let out = tally(&[
        "--config",
        cfg,
        "prices",
        "update",
        "--from",
        good.to_str().expect("utf8"),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn prices_show_explains_the_entry_the_tier_and_each_class() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("tally.toml");
    std::fs::write(
        &cfg,
        format!(
            "[store]\npath = \"{}\"\n[pricing]\ncatalog_file = \"{}\"\n",
            dir.path().join("tally.db").display(),
            dir.path().join("none.json").display()
        ),
    )
    .expect("config");
    let cfg = cfg.to_str().expect("utf8");
    let args = [
        "--config",
        cfg,
        "prices",
        "show",
        "gemini-2.5-pro",
        "--provider",
        "gemini",
        "--usage",
        "prompt=300000,completion=1000,cache_read=50000",
    ];
    let out = tally(&args);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // ai.google.dev/gemini-api/docs/pricing: above 200k, $2.50 input, $0.25 cached, $15 output.
    for needle in [
        "entry \"gemini/gemini-2.5-pro\"",
        "from the catalog (litellm",
        "prompt above 200000 tokens",
        "long-context rates",
        "250000 × $2.5/1M",
        "50000 × $0.25/1M",
        "total: $0.6525",
    ] {
        assert!(text.contains(needle), "{needle:?} in\n{text}");
    }
    let mut json_args = args.to_vec();
    json_args.push("--json");
    let out = tally(&json_args);
    let v: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["cost_usd"], 0.6525);
    assert_eq!(v["above_tokens"], 200_000);

    let out = tally(&["--config", cfg, "prices", "show", "house-model-7"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(
        text.contains("not priced") && text.contains("[pricing.models.\"house-model-7\"]"),
        "{text}"
    );
    let out = tally(&[
        "--config", cfg, "prices", "show", "gpt-5", "--usage", "tokens=5",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown class"));
}

fn house_prices(input: f64, output: f64, mystery: bool) -> Options {
    let mut rest = format!(
        "[pricing.models.\"house-model\"]\ninput = {input}\noutput = {output}\n\
         [[budgets]]\nname = \"everything\"\nlimit_usd = 1000\nwindow = \"rolling:24h\"\n"
    );
    if mystery {
        rest += "[pricing.models.\"mystery-9\"]\ninput = 1.0\noutput = 1.0\n";
    }
    Options {
        rest,
        ..Options::default()
    }
}

async fn chat(bin: &Bin, model: &str) {
    let body = json!({"model": model, "messages": [{"role": "user", "content": "hi"}]});
    let (status, _, _) = post_json(&bin.url("/v1/chat/completions"), &[], &body).await;
    assert_eq!(status, 200);
}

async fn restart(bin: &mut Bin, up: &FakeUpstream, options: &Options) -> Bin {
    bin.signal("-TERM");
    bin.wait().await;
    let dir = std::mem::replace(&mut bin.dir, tempfile::tempdir().expect("tempdir"));
    Bin::start_with(&up.url(), dir, options).await
}

/// After a price fix, `tally reprice` recomputes the stored costs, once: a rerun changes
/// nothing. A model that had no price gets one; the budgets count the corrected spend from
/// the next start; the run is on record for the dashboard.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reprice_recomputes_stored_costs_once_and_budgets_follow() {
    let up = FakeUpstream::start().await;
    let old = house_prices(1.0, 2.0, false);
    let new = house_prices(10.0, 20.0, true);
    let mut first = Bin::start_with(&up.url(), tempfile::tempdir().expect("tempdir"), &old).await;
    for _ in 0..3 {
        chat(&first, "house-model").await;
    }
    chat(&first, "mystery-9").await;
    let mut second = restart(&mut first, &up, &new).await;
    let (prompt, completion, _, _) = OPENAI_USAGE;
    let per = |i: f64, o: f64| (prompt as f64 * i + completion as f64 * o) / 1e6;
    let sum = |b: &Bin| {
        let conn = rusqlite::Connection::open(b.dir.path().join("tally.db")).expect("open");
        conn.query_row(
            "SELECT coalesce(sum(cost_usd), 0), count(cost_usd) FROM requests",
            [],
            |r| Ok((r.get::<_, f64>(0)?, r.get::<_, i64>(1)?)),
        )
        .expect("sum")
    };
    let (before, priced) = sum(&second);
    assert!((before - 3.0 * per(1.0, 2.0)).abs() < 1e-12, "{before}");
    assert_eq!(priced, 3, "mystery-9 had no price");

    let cfg = second.dir.path().join("tally.toml");
    let cfg = cfg.to_str().expect("utf8");
    let out = tally(&["--config", cfg, "reprice", "--from", "2020-01-01"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("4 records with usage examined, 4 repriced"),
        "{text}"
    );
    assert!(text.contains("1 newly priced"), "{text}");
    let (after, priced) = sum(&second);
    let expected = 3.0 * per(10.0, 20.0) + per(1.0, 1.0);
    assert!((after - expected).abs() < 1e-12, "{after} != {expected}");
    assert_eq!(priced, 4);

    let again = tally(&["--config", cfg, "reprice", "--from", "2020-01-01"]);
    let text = String::from_utf8_lossy(&again.stdout);
    assert!(
        text.contains("4 records with usage examined, 0 repriced"),
        "{text}"
    );
    assert_eq!(sum(&second).0, after);
    assert_eq!(second.rows("SELECT count(*) FROM reprices"), 2);
    assert_eq!(second.rows("SELECT max(changed) FROM reprices"), 4);

    // A bad range is refused before anything is read.
    let bad = tally(&["--config", cfg, "reprice", "--from", "yesterday"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--from \"yesterday\""));

    let third = restart(&mut second, &up, &new).await;
    let (_, _, body) = get(&third.dashboard_url("/api/budgets")).await;
    let v: Value = serde_json::from_slice(&body).expect("json");
    let spend = v["budgets"][0]["spend_usd"].as_f64().expect("spend");
    assert!(
        (spend - expected).abs() < 1e-9,
        "budget spend {spend} != {expected}: {v}"
    );
    let (_, _, page) = get(&third.dashboard_url("/")).await;
    let page = String::from_utf8_lossy(&page);
    assert!(
        page.contains("repriced"),
        "the overview says costs were repriced"
    );
}
