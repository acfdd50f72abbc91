//! What budgets cost per request: the ingest worker's `observe` of each record, and the
//! proxy's enforcement `check` before forwarding.
//!
//! `cargo bench --bench budgets`

use std::collections::BTreeMap;
use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use serde_json::json;
use tally_budgets::config::{validate, AlertsConfig, BudgetConfig};
use tally_budgets::{Engine, Subject};
use tally_ingest::Record;

const NOW: i64 = 1_767_225_600_000 + 3_600_000;

fn engine(
    enforce: bool,
) -> (
    Engine,
    tokio::sync::mpsc::UnboundedReceiver<tally_budgets::Event>,
) {
    let budgets: Vec<BudgetConfig> = serde_json::from_value(json!([
        {"name": "all-daily", "limit_usd": 1e9, "window": "day"},
        {"name": "per-user", "scope": "per_user", "limit_usd": 1e9, "window": "month", "enforce": enforce},
        {"name": "per-team", "scope": "per_property:team", "limit_usd": 1e9, "window": "rolling:24h", "enforce": enforce},
    ]))
    .expect("budgets");
    let s = validate(&budgets, &AlertsConfig::default(), "http://x").expect("valid");
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    (Engine::new(s, tx), rx)
}

fn record(i: usize) -> Record {
    Record {
        provider: "openai".into(),
        endpoint: "/v1/chat/completions".into(),
        method: "POST".into(),
        model: Some("gpt-4o-mini".into()),
        status: 200,
        stream: true,
        latency_ms: 400,
        ttft_ms: Some(90),
        cost_usd: Some(0.0004),
        user_id: Some(format!("user-{}", i % 1000)),
        properties: BTreeMap::from([("team".to_owned(), format!("team-{}", i % 10))]),
        ..Record::new(uuid::Uuid::now_v7(), NOW + i as i64)
    }
}

fn observe(c: &mut Criterion) {
    let (e, _rx) = engine(true);
    let records: Vec<Record> = (0..10_000).map(record).collect();
    let mut i = 0;
    c.bench_function("budgets/observe_3_budgets_1000_users", |b| {
        b.iter(|| {
            e.observe(black_box(&records[i % records.len()]), NOW);
            i += 1;
        })
    });
}

fn check(c: &mut Criterion) {
    let props = BTreeMap::from([("team".to_owned(), "team-3".to_owned())]);
    let subject = Subject {
        provider: "openai",
        model: Some("gpt-4o-mini"),
        user_id: Some("user-42"),
        properties: &props,
        key_name: None,
    };
    let (off, _rx1) = engine(false);
    c.bench_function("budgets/check_no_enforcing_budget", |b| {
        b.iter(|| black_box(off.check(black_box(subject), NOW)))
    });
    // One user exhausted; the request is from another one, so every budget is looked at.
    let (on, _rx2) = engine(true);
    let mut r = record(0);
    r.cost_usd = Some(2e9);
    r.user_id = Some("big-spender".into());
    on.observe(&r, NOW);
    c.bench_function("budgets/check_2_enforcing_budgets", |b| {
        b.iter(|| black_box(on.check(black_box(subject), NOW)))
    });
}

criterion_group!(benches, observe, check);
criterion_main!(benches);
