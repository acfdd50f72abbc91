//! ClickHouse as the store, against a real ClickHouse engine (see `support/clickhouse.rs`).

use std::collections::BTreeMap;

use serde_json::{json, Value};
use tally_ingest::clickhouse::ClickHouseWriter;
use tally_ingest::{BatchWriter, Record, Tokens};

use crate::support::bin::{Bin, Options};
use crate::support::clickhouse::{ClickHouse, FaultGate};
use crate::support::{get, post_json, request_id, FakeUpstream, TestTally};

async fn count(ch: &ClickHouse, sql: &str) -> u64 {
    ch.client().query(sql).fetch_one::<u64>().await.expect(sql)
}

async fn wait_for_rows(ch: &ClickHouse, n: u64) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let c = count(ch, "SELECT count() FROM requests").await;
        if c >= n {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "only {c} of {n} rows arrived in ClickHouse"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Writes `rows` with a fresh `ClickHouseWriter`, on a blocking thread as the ingest worker
/// would (the writer drives its own runtime).
async fn write_rows(settings: &tally_ingest::clickhouse::ClickHouseSettings, rows: Vec<Record>) {
    let settings = settings.clone();
    tokio::task::spawn_blocking(move || {
        ClickHouseWriter::new(&settings)
            .expect("writer")
            .write_batch(&rows)
            .expect("write")
    })
    .await
    .expect("join");
}

/// The API's view of a record, minus what differs between two runs of the same request.
fn comparable(mut rec: Value) -> Value {
    let o = rec.as_object_mut().expect("object");
    for k in ["request_id", "ts", "latency_ms", "ttft_ms"] {
        assert!(o.remove(k).is_some(), "{k} missing");
    }
    rec
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_lands_in_clickhouse_with_every_field_as_in_sqlite() {
    let up = FakeUpstream::start().await;
    let ch = ClickHouse::started().await;
    let on_ch = TestTally::start_with(&up.url(), |c| {
        ch.configure(c);
        c.proxy.keep_translated_bodies = true;
    })
    .await;
    let on_sqlite =
        TestTally::start_with(&up.url(), |c| c.proxy.keep_translated_bodies = true).await;
    let headers = [
        ("authorization", "Bearer sk-proj-secretsecretsecret-abcd"),
        ("Tally-User-Id", "alice"),
        ("Tally-Session-Id", "s-1"),
        ("Tally-Session-Path", "/plan/step-1"),
        ("Tally-Session-Name", "Trip"),
        ("Tally-Property-Env", "prod"),
        ("Tally-Property-Team", "search"),
    ];
    let cases = [
        (
            "/v1/chat/completions",
            json!({"model": "gpt-4o", "stream": true, "messages": [{"role": "user", "content": "hi"}]}),
        ),
        (
            "/anthropic/v1/messages",
            json!({"model": "claude-sonnet-4-5", "max_tokens": 9, "messages": []}),
        ),
        (
            "/compat/v1/chat/completions",
            json!({"model": "mystery", "stream": true, "messages": []}),
        ),
    ];
    for (path, body) in cases {
        let (_, h1, b1) = post_json(&on_ch.url(path), &headers, &body).await;
        let (_, h2, b2) = post_json(&on_sqlite.url(path), &headers, &body).await;
        assert_eq!(b1, b2);
        let from_ch = on_ch.record(&request_id(&h1)).await;
        let from_sqlite = on_sqlite.record(&request_id(&h2)).await;
        assert_eq!(from_ch["ts"].as_str().map(str::len), Some(24), "{from_ch}");
        assert_eq!(comparable(from_ch), comparable(from_sqlite), "{path}");
    }
    // The list endpoint and its filters read ClickHouse too.
    let (status, _, body) =
        get(&on_ch
            .dashboard_url("/api/requests?property.env=prod&user_id=alice&status=2xx&limit=2"))
        .await;
    assert_eq!(status, 200);
    let page: Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(page["requests"].as_array().expect("rows").len(), 2);
    let cursor = page["next_cursor"].as_str().expect("a next page");
    let (_, _, body) = get(&on_ch.dashboard_url(&format!(
        "/api/requests?property.env=prod&limit=2&cursor={cursor}"
    )))
    .await;
    let rest: Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(rest["requests"].as_array().expect("rows").len(), 1);
    assert!(rest["next_cursor"].is_null());
    // What sets a price besides the token classes (#22) is stored and read back alike.
    let mut billing = headers.to_vec();
    billing.push(("x-fake-mode", "billing"));
    let ask = json!({"model": "claude-sonnet-4-6", "max_tokens": 9, "messages": []});
    let path = "/anthropic/v1/messages";
    let (_, h1, _) = post_json(&on_ch.url(path), &billing, &ask).await;
    let (_, h2, _) = post_json(&on_sqlite.url(path), &billing, &ask).await;
    let from_ch = on_ch.record(&request_id(&h1)).await;
    assert_eq!(from_ch["cache_write_1h_tokens"], 40, "{from_ch}");
    assert_eq!(from_ch["web_search_calls"], 2, "{from_ch}");
    assert_eq!(from_ch["service_tier"], "standard", "{from_ch}");
    assert_eq!(
        comparable(from_ch),
        comparable(on_sqlite.record(&request_id(&h2)).await),
        "{path} billing"
    );
    // A translated request, with the provider's side of its bodies kept.
    let ask = json!({"model": "anthropic/claude-sonnet-4-5", "messages": [{"role": "user", "content": "hi"}]});
    let path = "/unified/v1/chat/completions";
    let (_, h1, _) = post_json(&on_ch.url(path), &headers, &ask).await;
    let (_, h2, _) = post_json(&on_sqlite.url(path), &headers, &ask).await;
    let mut from_ch = comparable(on_ch.record(&request_id(&h1)).await);
    let mut from_sqlite = comparable(on_sqlite.record(&request_id(&h2)).await);
    let upstream = from_ch["upstream_response_body"].as_str().unwrap_or("");
    assert!(upstream.contains(r#""type":"message""#), "{from_ch}");
    assert!(from_ch["upstream_request_body"]
        .as_str()
        .is_some_and(|b| b.contains(r#""max_tokens""#)));
    // The client's answer carries the time it was written (`created`), so it differs.
    for r in [&mut from_ch, &mut from_sqlite] {
        r.as_object_mut().expect("object").remove("response_body");
    }
    assert_eq!(from_ch, from_sqlite, "{path}");
    on_ch.stop().await;
    on_sqlite.stop().await;
}

fn record(i: i64, model: &str, cost: Option<f64>, status: u16) -> Record {
    Record {
        provider: if i % 2 == 0 {
            "openai".into()
        } else {
            "anthropic".into()
        },
        endpoint: "/v1/chat/completions".into(),
        method: "POST".into(),
        model: Some(model.into()),
        status,
        stream: i % 3 == 0,
        latency_ms: 100 + (i as u64 * 37) % 900,
        ttft_ms: Some(20 + i as u64),
        tokens: Some(Tokens {
            prompt: 10 + i as u64,
            completion: 5,
            cache_read: 2,
            cache_write: 0,
            cache_write_1h: 0,
            reasoning: 0,
        }),
        tokens_estimated: i % 5 == 0,
        cost_usd: cost,
        user_id: Some(format!("u{}", i % 3)),
        session_id: Some(format!("s{}", i % 4)),
        properties: BTreeMap::from([(
            "env".to_owned(),
            if i % 2 == 0 { "prod" } else { "dev" }.to_owned(),
        )]),
        error: (status >= 400).then(|| "boom".to_owned()),
        request_bytes: 100,
        response_bytes: 200,
        request_body: Some("{}".into()),
        response_body: Some("{}".into()),
        ..Record::new(uuid::Uuid::now_v7(), 1_795_305_600_000 + i * 60_000)
    }
}

fn seed() -> Vec<Record> {
    (0..120)
        .map(|i| {
            let model = ["gpt-4o", "gpt-4o-mini", "claude-haiku-4-5"][i as usize % 3];
            let cost = (i % 7 != 0).then_some(0.001 * (i as f64 + 1.0));
            let status = if i % 11 == 0 { 500 } else { 200 };
            record(i, model, cost, status)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_are_idempotent_retries_count_once_and_rollups_agree() {
    let ch = ClickHouse::started().await;
    let settings = ch.settings();
    assert_eq!(
        tally_ingest::clickhouse::migrate(&settings)
            .await
            .expect("first"),
        tally_schema::CLICKHOUSE.len()
    );
    assert_eq!(
        tally_ingest::clickhouse::migrate(&settings)
            .await
            .expect("second"),
        0
    );

    let batches: Vec<Vec<Record>> = seed().chunks(40).map(<[Record]>::to_vec).collect();
    let written = tokio::task::spawn_blocking({
        let settings = settings.clone();
        let batches = batches.clone();
        move || {
            let mut w = ClickHouseWriter::new(&settings).expect("writer");
            for b in &batches {
                w.write_batch(b).expect("write");
            }
            // The acknowledgement of the last batch was "lost": it is sent again, twice.
            w.write_batch(&batches[2]).expect("retry");
            w.write_batch(&batches[2]).expect("retry");
            // What a crash leaves in the journal: some stored, some not. Only the second kind
            // is written again.
            let mut left = batches[1][30..].to_vec();
            let held: std::collections::HashSet<uuid::Uuid> =
                left.iter().map(|r| r.request_id).collect();
            left.push(record(1_000, "gpt-4o", Some(0.5), 200));
            assert_eq!(w.stored(&left).expect("ask"), held);
        }
    })
    .await;
    written.expect("writer thread");
    assert_eq!(
        count(&ch, "SELECT count() FROM requests").await,
        120,
        "a retried batch was counted twice"
    );
    assert_eq!(
        count(&ch, "SELECT uniqExact(request_id) FROM requests").await,
        120
    );

    // The rollup agrees with aggregates over the raw rows, group by group.
    #[derive(Debug, PartialEq, serde::Deserialize, clickhouse::Row)]
    struct Agg {
        provider: String,
        model: String,
        requests: u64,
        errors: u64,
        prompt: u64,
        cost_millis: i64,
        unpriced: u64,
        estimated: u64,
        latency: Vec<f64>,
    }
    let raw: Vec<Agg> = ch
        .client()
        .query(
            "SELECT provider, ifNull(model, '') AS model, count() AS requests,
                    countIf(status = 0 OR status >= 400 OR error IS NOT NULL) AS errors,
                    sum(ifNull(prompt_tokens, 0)) AS prompt,
                    toInt64(round(sum(ifNull(cost_usd, 0)) * 1000000)) AS cost_millis,
                    countIf(cost_usd IS NULL AND prompt_tokens IS NOT NULL) AS unpriced,
                    countIf(tokens_estimated) AS estimated,
                    quantiles(0.5, 0.95, 0.99)(latency_ms) AS latency
             FROM requests GROUP BY provider, model ORDER BY provider, model",
        )
        .fetch_all()
        .await
        .expect("raw aggregates");
    let rolled: Vec<Agg> = ch
        .client()
        .query(
            "SELECT provider, model, sum(requests) AS requests, sum(errors) AS errors,
                    sum(prompt_tokens) AS prompt,
                    toInt64(round(sum(cost_usd) * 1000000)) AS cost_millis,
                    sum(unpriced) AS unpriced, sum(estimated) AS estimated,
                    quantilesMerge(0.5, 0.95, 0.99)(latency_ms) AS latency
             FROM requests_hourly GROUP BY provider, model ORDER BY provider, model",
        )
        .fetch_all()
        .await
        .expect("rollup aggregates");
    assert!(!raw.is_empty());
    assert_eq!(raw.iter().map(|a| a.requests).sum::<u64>(), 120);
    assert_eq!(rolled, raw);
}

/// Every `sql` block of README's cookbook runs against the real engine and returns rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readme_cookbook_queries_run() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).expect("README");
    let section = readme
        .split("### SQL cookbook")
        .nth(1)
        .expect("cookbook section");
    let section = section.split("\n## ").next().unwrap_or(section);
    let queries: Vec<&str> = section
        .split("```sql")
        .skip(1)
        .map(|b| b.split("```").next().unwrap_or("").trim())
        .collect();
    assert!(
        queries.len() >= 10,
        "the cookbook has {} queries",
        queries.len()
    );

    let ch = ClickHouse::started().await;
    let settings = ch.settings();
    tally_ingest::clickhouse::migrate(&settings)
        .await
        .expect("migrate");
    let now = chrono::Utc::now().timestamp_millis();
    let rows: Vec<Record> = seed()
        .into_iter()
        .enumerate()
        .map(|(i, mut r)| {
            r.ts = now - (i as i64) * 60_000;
            r
        })
        .collect();
    write_rows(&settings, rows).await;
    for q in queries {
        let mut cursor = ch
            .client()
            .query(q)
            .fetch_bytes("TabSeparatedWithNames")
            .expect("query");
        let out = cursor
            .collect()
            .await
            .unwrap_or_else(|e| panic!("{q}\nfailed: {e}"));
        let lines = String::from_utf8_lossy(&out).lines().count();
        assert!(lines >= 2, "no rows from:\n{q}");
    }
}

async fn spooled(tally: &TestTally) -> f64 {
    tally.metric("tally_records_spooled_total", "").await
}

async fn wait_metric(tally: &TestTally, name: &str, want: f64) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let v = tally.metric(name, "").await;
        if v >= want {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{name} stuck at {v}, want {want}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clickhouse_outage_loses_nothing_and_counts_nothing_twice() {
    let up = FakeUpstream::start().await;
    let ch = ClickHouse::started().await;
    let gate = FaultGate::start(&ch.url).await;
    let tally = TestTally::start_with(&up.url(), |c| {
        ch.configure_via(c, &gate.url);
        c.ingest.max_attempts = 2;
    })
    .await;

    gate.down();
    for i in 0..20 {
        let user = format!("u{i}");
        let (status, _, _) = post_json(
            &tally.url("/v1/chat/completions"),
            &[("Tally-User-Id", &user)],
            &json!({"model": "gpt-4o", "stream": i % 2 == 0, "messages": []}),
        )
        .await;
        assert_eq!(
            status, 200,
            "the proxy keeps serving while the store is down"
        );
    }
    wait_metric(&tally, "tally_records_spooled_total", 20.0).await;
    assert_eq!(count(&ch, "SELECT count() FROM requests").await, 0);

    gate.up();
    wait_for_rows(&ch, 20).await;
    wait_metric(&tally, "tally_records_replayed_total", 20.0).await;
    assert_eq!(count(&ch, "SELECT count() FROM requests").await, 20);
    assert_eq!(
        count(&ch, "SELECT uniqExact(user_id) FROM requests").await,
        20
    );
    assert_eq!(tally.metric("tally_records_dropped_total", "").await, 0.0);
    // Metrics are separate atomics: give the gauge its moment rather than racing it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while tally.metric("tally_spool_segments", "").await != 0.0 {
        assert!(std::time::Instant::now() < deadline, "spool never emptied");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    tally.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spool_left_at_shutdown_is_replayed_after_restart() {
    let up = FakeUpstream::start().await;
    let ch = ClickHouse::started().await;
    let gate = FaultGate::start(&ch.url).await;
    let spool = tempfile::tempdir().expect("spool dir");
    let configure = |c: &mut tally::Config| {
        ch.configure_via(c, &gate.url);
        c.store.spool_dir = spool.path().to_owned();
        c.ingest.max_attempts = 1;
    };
    let first = TestTally::start_with(&up.url(), configure).await;
    gate.down();
    for _ in 0..10 {
        let (status, _, _) = post_json(
            &first.url("/v1/embeddings"),
            &[],
            &json!({"model": "text-embedding-3-small", "input": "x"}),
        )
        .await;
        assert_eq!(status, 200);
    }
    let _first_dir = first.stop().await;
    assert!(
        std::fs::read_dir(spool.path()).expect("spool").count() > 0,
        "nothing was spooled"
    );

    gate.up();
    let second = TestTally::start_with(&up.url(), configure).await;
    wait_for_rows(&ch, 10).await;
    assert_eq!(
        count(
            &ch,
            "SELECT count() FROM requests WHERE endpoint = '/v1/embeddings'"
        )
        .await,
        10
    );
    assert!(
        spooled(&second).await == 0.0,
        "the second run spooled nothing itself"
    );
    wait_metric(&second, "tally_records_replayed_total", 10.0).await;
    second.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_are_sent_and_a_wrong_password_stops_startup_with_a_clear_error() {
    let up = FakeUpstream::start().await;
    let ch = tokio::task::spawn_blocking(|| ClickHouse::start_with_credentials("tally", "s3cret"))
        .await
        .expect("start engine");
    let tally = TestTally::start_with(&up.url(), |c| ch.configure(c)).await;
    let (status, h, _) = post_json(
        &tally.url("/v1/chat/completions"),
        &[],
        &json!({"model": "gpt-4o"}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(tally.record(&request_id(&h)).await["prompt_tokens"], 21);
    tally.stop().await;

    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = crate::support::test_config(&up.url(), dir.path().join("unused.db"));
    ch.configure(&mut config);
    config.store.password = Some("wrong".into());
    let server = tally::Server::bind(config.validate().expect("valid"))
        .await
        .expect("bind");
    let err = server
        .run(std::future::pending())
        .await
        .expect_err("must not start");
    let text = format!("{err:#}");
    assert!(text.contains("Authentication failed"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_changes_apply_to_existing_tables() {
    let ch = ClickHouse::started().await;
    let show = |ch: &ClickHouse| {
        let client = ch.client();
        async move {
            let ddl = client
                .query("SHOW CREATE TABLE requests")
                .fetch_bytes("TabSeparatedRaw")
                .expect("query")
                .collect()
                .await
                .expect("ddl");
            String::from_utf8_lossy(&ddl).into_owned()
        }
    };
    let mut settings = ch.settings();
    tally_ingest::clickhouse::migrate(&settings)
        .await
        .expect("create without TTL");
    assert!(!show(&ch).await.contains("TTL"));

    settings.retention_days = 90;
    settings.body_ttl_days = 14;
    assert_eq!(
        tally_ingest::clickhouse::migrate(&settings)
            .await
            .expect("apply"),
        0
    );
    let ddl = show(&ch).await;
    assert!(
        ddl.contains("\nTTL toDateTime(ts) + toIntervalDay(90)"),
        "{ddl}"
    );
    assert_eq!(
        ddl.matches("TTL toDateTime(ts) + toIntervalDay(14)")
            .count(),
        4,
        "the four body columns (the client's and, when translated, the provider's): {ddl}"
    );

    settings.retention_days = 0;
    settings.body_ttl_days = 0;
    tally_ingest::clickhouse::migrate(&settings)
        .await
        .expect("remove");
    assert!(!show(&ch).await.contains("TTL"), "{}", show(&ch).await);
}

/// ClickHouse answering each insert only after seconds, then cut in the middle of an insert:
/// the proxy keeps its normal pace, the slow inserts still land, the cut batch is retried or
/// spooled, and with ClickHouse's deduplication token nothing is counted twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clickhouse_then_a_cut_mid_insert_loses_and_doubles_nothing() {
    let up = FakeUpstream::start().await;
    let ch = ClickHouse::started().await;
    let gate = FaultGate::start(&ch.url).await;
    let tally = TestTally::start_with(&up.url(), |c| {
        ch.configure_via(c, &gate.url);
        c.ingest.max_attempts = 2;
    })
    .await;
    gate.slow(2_000);
    let send = |i: usize| {
        let url = tally.url("/v1/chat/completions");
        async move {
            let user = format!("u{i}");
            let started = std::time::Instant::now();
            let (status, _, _) = post_json(
                &url,
                &[("Tally-User-Id", &user)],
                &json!({"model": "gpt-4o", "messages": []}),
            )
            .await;
            assert_eq!(status, 200);
            started.elapsed()
        }
    };
    let mut slowest = std::time::Duration::ZERO;
    for i in 0..10 {
        slowest = slowest.max(send(i).await);
    }
    // An insert is now waiting on the slow answer; cut ClickHouse in the middle of it.
    tokio::time::sleep(std::time::Duration::from_millis(1_200)).await;
    gate.down();
    for i in 10..20 {
        slowest = slowest.max(send(i).await);
    }
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    gate.slow(0);
    gate.up();
    wait_for_rows(&ch, 20).await;
    tokio::time::sleep(std::time::Duration::from_millis(1_500)).await;
    assert_eq!(count(&ch, "SELECT count() FROM requests").await, 20);
    assert_eq!(
        count(&ch, "SELECT uniqExact(user_id) FROM requests").await,
        20
    );
    assert_eq!(tally.metric("tally_records_dropped_total", "").await, 0.0);
    eprintln!("slowest proxied request while ClickHouse was slow or down: {slowest:?}");
    assert!(
        slowest < std::time::Duration::from_secs(1),
        "the proxy waited on the store ({slowest:?})"
    );
    tally.stop().await;
}

/// ClickHouse down and the spool at its byte limit: the proxy keeps serving, the batches that
/// fit are kept and replayed, and every record that did not fit is counted (`spool_full`) and
/// shown on the overview. Nothing is lost silently.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_spool_counts_every_record_it_cannot_keep() {
    let up = FakeUpstream::start().await;
    let ch = ClickHouse::started().await;
    let gate = FaultGate::start(&ch.url).await;
    let tally = TestTally::start_with(&up.url(), |c| {
        ch.configure_via(c, &gate.url);
        c.ingest.max_attempts = 1;
        c.ingest.batch_max_rows = Some(1);
        // Room for a handful of one-record batches.
        c.store.spool_max_bytes = 8 * 1024;
    })
    .await;
    gate.down();
    for i in 0..30 {
        let user = format!("u{i}");
        let (status, _, _) = post_json(
            &tally.url("/v1/chat/completions"),
            &[("Tally-User-Id", &user)],
            &json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "x".repeat(200)}]}),
        )
        .await;
        assert_eq!(status, 200, "the proxy keeps serving");
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let (spooled, full) = loop {
        let spooled = tally.metric("tally_records_spooled_total", "").await;
        let full = tally
            .metric("tally_records_dropped_total", "reason=\"spool_full\"")
            .await;
        if spooled + full >= 30.0 {
            break (spooled, full);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{spooled} spooled + {full} dropped of 30"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert!(
        spooled >= 1.0 && full >= 1.0,
        "{spooled} spooled, {full} dropped"
    );
    assert_eq!(
        spooled + full,
        30.0,
        "every record is either kept or counted"
    );
    // The store is down, so the overview cannot show numbers; it shows the losses instead.
    let (status, _, body) = get(&tally.dashboard_url("/api/overview")).await;
    assert_eq!(status, 503);
    let o: Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(o["ingest"]["dropped"], full as u64, "{o}");
    assert!(
        o["ingest"]["spooled_batches"]
            .as_i64()
            .is_some_and(|n| n >= 1),
        "{o}"
    );
    let (status, _, page) = get(&tally.dashboard_url("/")).await;
    assert_eq!(status, 503);
    let page = String::from_utf8_lossy(&page);
    assert!(
        page.contains(&format!("{} records dropped", full as u64)),
        "{page}"
    );
    gate.up();
    wait_for_rows(&ch, spooled as u64).await;
    tokio::time::sleep(std::time::Duration::from_millis(1_000)).await;
    assert_eq!(
        count(&ch, "SELECT count() FROM requests").await,
        spooled as u64,
        "what was spooled is replayed once"
    );
    tally.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_load_loses_nothing_and_the_journal_stores_nothing_twice() {
    let up = FakeUpstream::start().await;
    let ch = ClickHouse::started().await;
    let options = Options {
        store: ch.store_toml(),
        ..Options::default()
    };
    let mut tally =
        Bin::start_with(&up.url(), tempfile::tempdir().expect("tempdir"), &options).await;
    let answered =
        crate::faults::kill_under_load(&mut tally, std::time::Duration::from_millis(2_500)).await
            as u64;
    assert!(answered > 100, "the load ran ({answered})");
    let at_crash = count(&ch, "SELECT count() FROM requests WHERE status = 200").await;
    // The same store again: the journal holds what was not yet inserted, and maybe a batch
    // that was, whose acknowledgement the kill cut off.
    let dir = std::mem::replace(&mut tally.dir, tempfile::tempdir().expect("tempdir"));
    let again = Bin::start_with(&up.url(), dir, &options).await;
    again
        .wait_for_log("journal recovery done", std::time::Duration::from_secs(30))
        .await;
    wait_for_rows(&ch, answered).await;
    let stored = count(&ch, "SELECT count() FROM requests WHERE status = 200").await;
    let distinct = count(
        &ch,
        "SELECT uniqExact(request_id) FROM requests WHERE status = 200",
    )
    .await;
    eprintln!(
        "kill -9 on ClickHouse: {answered} answered, {at_crash} stored at the crash, {stored} after the restart"
    );
    assert!(at_crash < answered, "the crash left something to recover");
    assert!(stored >= answered, "lost {}", answered - stored);
    assert!(stored <= answered + 16, "{stored} stored of {answered}");
    assert_eq!(stored, distinct, "a record was stored twice");
    // The rollup counted each once too.
    assert_eq!(
        count(&ch, "SELECT toUInt64(sum(requests)) FROM requests_hourly").await,
        count(&ch, "SELECT count() FROM requests").await
    );
}

/// `tally reprice` on ClickHouse: the changed records are updated, the hourly rollup is
/// corrected to agree with them (costs and unpriced counts), a cache hit keeps costing 0 and
/// saves its new price, and a rerun changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reprice_updates_records_and_corrects_the_rollup_once() {
    use tally_ingest::{reprice, CacheStatus};
    let ch = ClickHouse::started().await;
    let settings = ch.settings();
    tally_ingest::clickhouse::migrate(&settings)
        .await
        .expect("migrate");
    // 90 priced records over two hours, 10 unpriced, one cache hit.
    let mut rows: Vec<Record> = (0..90)
        .map(|i| record(i, "house-model", Some(0.5), 200))
        .collect();
    rows.extend((90..100).map(|i| record(i, "mystery-9", None, 200)));
    rows.push(Record {
        cache_status: CacheStatus::Hit,
        cost_usd: Some(0.0),
        cost_saved_usd: Some(0.001),
        ..record(100, "house-model", Some(0.0), 200)
    });
    let n = rows.len() as u64;
    write_rows(&settings, rows).await;
    wait_for_rows(&ch, n).await;

    let mut table = tally_proxy::PricingTable::default();
    for (model, input) in [("house-model", 10.0), ("mystery-9", 1.0)] {
        table.insert(
            model,
            tally_proxy::Price {
                input,
                output: 2.0 * input,
                ..Default::default()
            },
        );
    }
    let price = |r: &Record| table.price_record(r, None);
    let scope = reprice::Scope {
        from_ms: 0,
        to_ms: i64::MAX / 2,
        ..Default::default()
    };
    let out = reprice::clickhouse(&settings, &scope, Some("test"), &price)
        .await
        .expect("reprice");
    assert_eq!((out.examined, out.changed, out.now_priced), (n, n, 10));

    #[derive(Debug, PartialEq, serde::Deserialize, clickhouse::Row)]
    struct Sums {
        cost: f64,
        unpriced: u64,
    }
    let sums = |sql: &'static str| {
        let c = ch.client();
        async move { c.query(sql).fetch_one::<Sums>().await.expect(sql) }
    };
    let records = sums(
        "SELECT sum(ifNull(cost_usd, 0)) AS cost,
                countIf(cost_usd IS NULL AND prompt_tokens IS NOT NULL) AS unpriced FROM requests",
    )
    .await;
    let rollup =
        sums("SELECT sum(cost_usd) AS cost, sum(unpriced) AS unpriced FROM requests_hourly").await;
    // house-model: (prompt 10+i at $10, completion 5 at $20) per 1M; mystery-9 at $1 / $2.
    let expected: f64 = (0..90)
        .map(|i| ((10 + i) as f64 * 10.0 + 5.0 * 20.0) / 1e6)
        .chain((90..100).map(|i| ((10 + i) as f64 + 5.0 * 2.0) / 1e6))
        .sum();
    assert!(
        (records.cost - expected).abs() < 1e-9,
        "{records:?} vs {expected}"
    );
    assert_eq!(records.unpriced, 0);
    assert!(
        (rollup.cost - records.cost).abs() < 1e-9,
        "rollup {rollup:?}, records {records:?}"
    );
    assert_eq!(rollup.unpriced, 0, "the unpriced counts were taken back");
    let hit = count(
        &ch,
        "SELECT count() FROM requests WHERE cache_status = 'hit' AND cost_usd = 0
           AND abs(cost_saved_usd - (110 * 10 + 5 * 20) / 1e6) < 1e-12",
    )
    .await;
    assert_eq!(hit, 1, "a cache hit costs 0 and saves its new price");

    let again = reprice::clickhouse(&settings, &scope, None, &price)
        .await
        .expect("rerun");
    assert_eq!((again.examined, again.changed), (n, 0));
    let after =
        sums("SELECT sum(cost_usd) AS cost, sum(unpriced) AS unpriced FROM requests_hourly").await;
    assert_eq!(after, rollup, "a rerun corrects nothing twice");
    assert_eq!(count(&ch, "SELECT count() FROM reprices").await, 2);
    let reader = tally_dashboard::store::clickhouse::ClickHouseReader::new(&settings);
    let runs = reader.reprices(0, i64::MAX / 2, 5).await.expect("reprices");
    assert_eq!(
        runs.len(),
        1,
        "only the run that changed something: {runs:?}"
    );
    assert_eq!(runs[0].changed, n);
}

/// `tally reconcile` reads Tally's side from ClickHouse too, and keeps its report there for
/// the dashboard.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_reads_and_keeps_its_report_in_clickhouse() {
    use crate::reconcile::{reconcile, report, row, today_and_yesterday};
    use crate::support::fake_admin::{Billed, FakeAdmin, ADMIN_KEY};
    let up = FakeUpstream::start().await;
    let ch = ClickHouse::started().await;
    let options = Options {
        store: ch.store_toml(),
        ..Options::default()
    };
    let bin = Bin::start_with(&up.url(), tempfile::tempdir().expect("tempdir"), &options).await;
    for _ in 0..2 {
        let body = json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]});
        let (status, _, _) = post_json(&bin.url("/v1/chat/completions"), &[], &body).await;
        assert_eq!(status, 200);
    }
    wait_for_rows(&ch, 2).await;
    let (prompt, completion, cached, _) = crate::support::fake_upstream::OPENAI_USAGE;
    let (today, _) = today_and_yesterday();
    let admin = FakeAdmin::start(vec![Billed {
        day: today.clone(),
        model: "gpt-4o-mini-2024-07-18".into(),
        requests: 5,
        uncached_input: 5 * (prompt - cached),
        cache_read: 5 * cached,
        cache_write: 0,
        output: 5 * completion,
        cost_usd: 1.0,
    }])
    .await;
    let r = report(&reconcile(&bin, &admin, "openai", Some(ADMIN_KEY)));
    let mini = row(&r, &today, "gpt-4o-mini");
    assert_eq!(mini["tally"]["requests"], 2, "{mini}");
    assert_eq!(mini["gaps"], json!(["not through Tally"]));
    assert_eq!(count(&ch, "SELECT count() FROM reconciliations").await, 1);
    let (_, _, page) = get(&bin.dashboard_url("/reconcile")).await;
    assert!(String::from_utf8_lossy(&page).contains("not through Tally"));
}

/// The rollup's exact columns, summed from the rollup or computed from the records.
#[derive(Debug, PartialEq, serde::Deserialize, clickhouse::Row)]
struct ExactSums {
    requests: u64,
    errors: u64,
    prompt: u64,
    completion: u64,
    cache_read: u64,
    cost_micros: i64,
    unpriced: u64,
    estimated: u64,
    cache_hits: u64,
    latency_sum: u64,
    ttft_count: u64,
}

async fn rollup_and_records(ch: &ClickHouse) -> (ExactSums, ExactSums) {
    let c = ch.client();
    let rollup = c
        .query(
            "SELECT sum(requests) AS requests, sum(errors) AS errors,
                    sum(prompt_tokens) AS prompt, sum(completion_tokens) AS completion,
                    sum(cache_read_tokens) AS cache_read,
                    toInt64(round(sum(cost_usd) * 1e6)) AS cost_micros,
                    sum(unpriced) AS unpriced, sum(estimated) AS estimated,
                    sum(cache_hits) AS cache_hits, sum(latency_ms_sum) AS latency_sum,
                    sum(ttft_count) AS ttft_count
             FROM requests_hourly",
        )
        .fetch_one::<ExactSums>()
        .await
        .expect("rollup");
    let records = c
        .query(&format!(
            "SELECT count() AS requests, countIf({}) AS errors,
                    sum(ifNull(prompt_tokens, 0)) AS prompt,
                    sum(ifNull(completion_tokens, 0)) AS completion,
                    sum(ifNull(cache_read_tokens, 0)) AS cache_read,
                    toInt64(round(sum(ifNull(cost_usd, 0)) * 1e6)) AS cost_micros,
                    countIf(cost_usd IS NULL AND prompt_tokens IS NOT NULL) AS unpriced,
                    countIf(tokens_estimated) AS estimated,
                    countIf(cache_status = 'hit') AS cache_hits,
                    sum(latency_ms) AS latency_sum, countIf(ttft_ms IS NOT NULL) AS ttft_count
             FROM requests",
            tally_ingest::IS_ERROR_SQL
        ))
        .fetch_one::<ExactSums>()
        .await
        .expect("records");
    (rollup, records)
}

/// `tally purge` on ClickHouse: a user's records are deleted and the rollup's exact sums
/// follow them; the purge is kept in `purges` with its count; the writer then leaves that
/// user's older records out of every batch (a replay after the purge), and keeps newer ones;
/// a property purge works the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_deletes_corrects_the_rollup_and_the_writer_refuses_late_records() {
    use tally_ingest::purge::{self, Scope};
    let ch = ClickHouse::started().await;
    let settings = ch.settings();
    tally_ingest::clickhouse::migrate(&settings)
        .await
        .expect("migrate");
    let rows = seed();
    let n = rows.len() as u64;
    write_rows(&settings, rows).await;
    wait_for_rows(&ch, n).await;
    let spool = tempfile::tempdir().expect("tempdir");

    let out = purge::clickhouse(
        &settings,
        &Scope::User("u1".into()),
        (spool.path(), u64::MAX),
    )
    .await
    .expect("purge");
    assert_eq!((out.records, out.spool_scrubbed), (n / 3, true));
    assert_eq!(count(&ch, "SELECT count() FROM requests").await, n - n / 3);
    assert_eq!(
        count(&ch, "SELECT count() FROM requests WHERE user_id = 'u1'").await,
        0
    );
    let (rollup, records) = rollup_and_records(&ch).await;
    assert_eq!(rollup, records, "the rollup's sums follow the deletes");
    assert_eq!(
        count(
            &ch,
            "SELECT records FROM purges WHERE kind = 'user' AND value = 'u1'"
        )
        .await,
        n / 3
    );

    // A batch after the purge (a spool or journal replay): u1's old record is left out, the
    // others and u1's new request are stored.
    let mut late = record(500, "gpt-4o", Some(0.01), 200);
    late.user_id = Some("u1".into());
    let other = record(501, "gpt-4o", Some(0.01), 200);
    let mut fresh = record(502, "gpt-4o", Some(0.01), 200);
    fresh.user_id = Some("u1".into());
    fresh.ts = chrono::Utc::now().timestamp_millis() + 1_000;
    write_rows(&settings, vec![late, other, fresh]).await;
    assert_eq!(
        count(&ch, "SELECT count() FROM requests").await,
        n - n / 3 + 2
    );
    assert_eq!(
        count(&ch, "SELECT count() FROM requests WHERE user_id = 'u1'").await,
        1,
        "only the request made after the purge"
    );

    let dev = count(
        &ch,
        "SELECT count() FROM requests WHERE properties['env'] = 'dev'",
    )
    .await;
    assert!(dev > 0);
    let out = purge::clickhouse(
        &settings,
        &Scope::Property("env".into(), "dev".into()),
        (spool.path(), u64::MAX),
    )
    .await
    .expect("purge env=dev");
    assert_eq!(out.records, dev);
    let (rollup, records) = rollup_and_records(&ch).await;
    assert_eq!(rollup, records);
    assert_eq!(count(&ch, "SELECT count() FROM purges").await, 2);
}

/// `[[store.retention]]` on ClickHouse: `env=prod` keeps records 10 days and bodies 3, the
/// rest 365 and 30. After ClickHouse's TTL merge each record is kept, stripped of its bodies
/// or gone as its own part says; the rollup is kept as long as the longest-kept records; and
/// removing the rules brings back the plain TTLs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_rules_keep_each_property_value_its_own_days() {
    use tally_ingest::retention::Rule;
    let ch = ClickHouse::started().await;
    let mut settings = ch.settings();
    settings.retention_days = 365;
    settings.body_ttl_days = 30;
    settings.retention_rules = vec![Rule {
        property: ("env".into(), "prod".into()),
        records_days: 10,
        bodies_days: 3,
    }];
    tally_ingest::clickhouse::migrate(&settings)
        .await
        .expect("migrate with rules");
    let now = chrono::Utc::now().timestamp_millis();
    let day = 86_400_000;
    // record(i) tags even i env=prod, odd i env=dev.
    let rows: Vec<Record> = [(0, 1), (2, 5), (4, 20), (1, 20), (3, 40), (5, 400)]
        .into_iter()
        .map(|(i, days)| Record {
            ts: now - days * day,
            ..record(i, "gpt-4o", Some(0.01), 200)
        })
        .collect();
    write_rows(&settings, rows).await;
    ch.client()
        .query("OPTIMIZE TABLE requests FINAL")
        .execute()
        .await
        .expect("merge, applying the TTLs");
    #[derive(Debug, PartialEq, serde::Deserialize, clickhouse::Row)]
    struct Left {
        env: String,
        days: i64,
        bodies: bool,
    }
    let left: Vec<Left> = ch
        .client()
        .query(
            "SELECT properties['env'] AS env,
                    intDiv(toUnixTimestamp64Milli(now64(3)) - toUnixTimestamp64Milli(ts), 86400000) AS days,
                    request_body IS NOT NULL AND response_body IS NOT NULL AS bodies
             FROM requests ORDER BY ts DESC",
        )
        .fetch_all()
        .await
        .expect("left");
    let want = |env: &str, days, bodies| Left {
        env: env.into(),
        days,
        bodies,
    };
    assert_eq!(
        left,
        [
            want("prod", 1, true),
            want("prod", 5, false),
            want("dev", 20, true),
            want("dev", 40, false),
        ]
    );
    let rollup = ch
        .client()
        .query("SHOW CREATE TABLE requests_hourly")
        .fetch_bytes("TabSeparatedRaw")
        .expect("query")
        .collect()
        .await
        .expect("ddl");
    let rollup = String::from_utf8_lossy(&rollup);
    assert!(
        rollup.contains("TTL toDateTime(hour) + toIntervalDay(365)"),
        "{rollup}"
    );

    settings.retention_rules.clear();
    tally_ingest::clickhouse::migrate(&settings)
        .await
        .expect("rules removed");
    let ddl = ch
        .client()
        .query("SHOW CREATE TABLE requests")
        .fetch_bytes("TabSeparatedRaw")
        .expect("query")
        .collect()
        .await
        .expect("ddl");
    let ddl = String::from_utf8_lossy(&ddl);
    assert!(!ddl.contains("multiIf"), "{ddl}");
    assert!(
        ddl.contains("\nTTL toDateTime(ts) + toIntervalDay(365)"),
        "{ddl}"
    );
}

/// The Grafana board on ClickHouse: every query (the panels' and the variable's), with the
/// data source's macros as Grafana expands them, runs on the engine over the documented
/// schema and finds the seeded records.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_clickhouse_dashboard_queries_run_on_the_schema() {
    let ch = ClickHouse::started().await;
    let settings = ch.settings();
    tally_ingest::clickhouse::migrate(&settings)
        .await
        .expect("migrate");
    let rows = seed();
    write_rows(&settings, rows).await;
    wait_for_rows(&ch, 120).await;
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/docker/grafana/dashboards/tally-clickhouse.json"
    );
    let d: Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("read")).expect("json");
    let queries = crate::observability::queries(&d, "rawSql");
    assert_eq!(queries.len(), 5, "four panels and the variable");
    for (uid, sql) in queries {
        assert_eq!(uid, "tally-clickhouse");
        let expanded = sql
            .replace(
                "$__timeFilter(ts)",
                "ts >= toDateTime64('2020-01-01 00:00:00', 3, 'UTC') AND ts <= now64(3)",
            )
            .replace(
                "$__timeInterval(ts)",
                "toStartOfInterval(ts, INTERVAL 3600 second)",
            )
            .replace("${property}", "env")
            .replace("tally.requests", &format!("{}.requests", settings.database));
        assert!(!expanded.contains('$'), "an unexpanded macro: {expanded}");
        let out = ch
            .client()
            .query(&expanded)
            .fetch_bytes("JSONEachRow")
            .expect("query")
            .collect()
            .await
            .unwrap_or_else(|e| panic!("{e}\n{expanded}"));
        assert!(!out.is_empty(), "no rows from\n{expanded}");
    }
}
