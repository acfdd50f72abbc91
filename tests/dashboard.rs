//! The dashboard: pages show the right numbers, both stores agree, bodies render inert, auth
//! holds, and a real browser loads every page without an error.

use std::collections::BTreeMap;

use http::Method;
use serde_json::{json, Value};
use tally_ingest::clickhouse::{ClickHouseSettings, ClickHouseWriter};
use tally_ingest::sqlite::SqliteWriter;
use tally_ingest::{BatchWriter, CacheStatus, Record, Tokens};

use crate::support::clickhouse::{python, ClickHouse};
use crate::support::{get, post_json, request_id, send, FakeUpstream, TestTally};

/// 2026-11-20T00:00:00Z: the seeded records fill the hour after it.
const T0: i64 = 1_795_132_800_000;
const RANGE: &str = "from=2026-11-20T00:00:00Z&to=2026-11-20T02:00:00Z";
const N: i64 = 30;

/// A dataset with every case the numbers depend on: errors (500, 429, error text), unpriced
/// and estimated records, cache hits, records with and without TTFT, three models on two
/// providers, four users, three sessions with paths, two property keys.
fn seeded() -> Vec<Record> {
    (0..N)
        .map(|i| {
            let model = ["gpt-4o", "gpt-4o-mini", "claude-sonnet-4-5"][i as usize % 3];
            let status = match i {
                7 | 17 => 500,
                13 => 429,
                _ => 200,
            };
            Record {
                provider: if model.starts_with("claude") {
                    "anthropic"
                } else {
                    "openai"
                }
                .into(),
                endpoint: "/v1/chat/completions".into(),
                method: "POST".into(),
                model: Some(model.into()),
                status,
                stream: i % 2 == 0,
                latency_ms: 100 + (i as u64 * 37) % 900,
                ttft_ms: (i % 2 == 0).then_some(20 + i as u64),
                tokens: Some(Tokens {
                    prompt: 10 + i as u64,
                    completion: 5,
                    ..Tokens::default()
                }),
                tokens_estimated: i % 5 == 0,
                cost_usd: (i % 11 != 4).then(|| 0.001 * (i + 1) as f64 + 1e-7 * (i * i) as f64),
                user_id: Some(format!("u{}", i % 4)),
                session_id: Some(format!("s{}", i % 3)),
                session_path: Some(format!("/step-{}{}", i % 2, if i % 4 < 2 { "" } else { "/sub" })),
                session_name: Some("Trip".into()),
                properties: BTreeMap::from([
                    ("env".to_owned(), if i % 2 == 0 { "prod" } else { "dev" }.to_owned()),
                    ("team".to_owned(), format!("t{}", i % 2)),
                ]),
                cache_status: if i % 6 == 0 { CacheStatus::Hit } else { CacheStatus::Miss },
                error: (i == 21).then(|| "client disconnected".to_owned()),
                request_bytes: 100,
                response_bytes: 200,
                api_key_hint: Some("sk-…abcd".into()),
                request_body: Some(r#"{"model":"gpt-4o","messages":[]}"#.into()),
                response_body: Some(if i % 2 == 0 {
                    "data: {\"choices\":[{\"delta\":{\"content\":\"Hello\"}}]}\n\ndata: {\"choices\":[{\"delta\":{\"content\":\" there\"}}]}\n\ndata: [DONE]\n\n".into()
                } else {
                    r#"{"choices":[{"message":{"content":"Hello there"}}]}"#.into()
                }),
                ..Record::new(uuid::Uuid::now_v7(), T0 + i * 120_000)
            }
        })
        .collect()
}

fn write_sqlite(t: &TestTally, records: &[Record]) {
    let mut conn = tally_ingest::sqlite::open_rw(&t.db).expect("open store");
    tally_ingest::sqlite::migrate(&mut conn).expect("migrate");
    SqliteWriter::new(conn)
        .write_batch(records)
        .expect("write records");
}

async fn write_clickhouse(settings: &ClickHouseSettings, records: Vec<Record>) {
    let settings = settings.clone();
    tokio::task::spawn_blocking(move || {
        ClickHouseWriter::new(&settings)
            .expect("writer")
            .write_batch(&records)
            .expect("write to ClickHouse")
    })
    .await
    .expect("join");
}

/// `floor(q * n)`: the quantile rule the dashboard documents.
fn quantile(values: &[u64], q: f64) -> u64 {
    let mut v = values.to_vec();
    v.sort_unstable();
    v[((q * v.len() as f64) as usize).min(v.len() - 1)]
}

async fn page(t: &TestTally, path: &str) -> String {
    let (status, headers, body) = get(&t.dashboard_url(path)).await;
    let body = String::from_utf8(body.to_vec()).expect("utf-8 page");
    assert_eq!(status, 200, "{path}: {body}");
    assert!(
        headers["content-type"]
            .to_str()
            .is_ok_and(|c| c.starts_with("text/html")),
        "{path}"
    );
    body
}

async fn api(t: &TestTally, path: &str) -> Value {
    let (status, _, body) = get(&t.dashboard_url(path)).await;
    assert_eq!(status, 200, "{path}: {}", String::from_utf8_lossy(&body));
    serde_json::from_slice(&body).expect("json")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_show_the_numbers_of_a_seeded_dataset() {
    let up = FakeUpstream::start().await;
    let t = TestTally::start(&up.url()).await;
    let records = seeded();
    write_sqlite(&t, &records);

    // Expected numbers, computed here independently of the dashboard's code.
    let cost: f64 = records.iter().filter_map(|r| r.cost_usd).sum();
    let latencies: Vec<u64> = records.iter().map(|r| r.latency_ms).collect();
    let ttfts: Vec<u64> = records.iter().filter_map(|r| r.ttft_ms).collect();
    let errors = records
        .iter()
        .filter(|r| r.status >= 400 || r.error.is_some())
        .count();
    assert_eq!(errors, 4);

    let html = page(&t, &format!("/?{RANGE}")).await;
    assert!(html.contains(r#"id="requests">30<"#), "{html}");
    assert!(
        html.contains(&format!(r#"id="cost">${cost:.4}<"#)),
        "{html}"
    );
    let latency = format!(
        "{} ms / {} ms / {} ms",
        quantile(&latencies, 0.5),
        quantile(&latencies, 0.95),
        quantile(&latencies, 0.99)
    );
    assert!(html.contains(&latency), "{latency} not in {html}");
    let ttft = format!(
        "{} ms / {} ms / {} ms",
        quantile(&ttfts, 0.5),
        quantile(&ttfts, 0.95),
        quantile(&ttfts, 0.99)
    );
    assert!(html.contains(&ttft), "{ttft}");
    assert!(html.contains(r#"id="error-rate">13.3%<"#), "errors 4/30");
    assert!(html.contains(r#"id="cache">16.7%<"#), "cache hits 5/30");
    // Unpriced: i = 4, 15, 26; estimated: every fifth.
    assert!(html.contains(r#"id="unpriced">3 · 6<"#));
    assert_eq!(html.matches("<svg").count(), 6, "six charts");
    assert!(!html.contains("were dropped"), "no ingest warning");

    // The same numbers as JSON.
    let o = api(&t, &format!("/api/overview?{RANGE}")).await;
    assert_eq!(o["summary"]["requests"], 30);
    assert_eq!(o["summary"]["errors"], 4);
    assert_eq!(
        o["summary"]["latency_ms"]["p95"],
        quantile(&latencies, 0.95)
    );
    assert!((o["summary"]["cost_usd"].as_f64().expect("cost") - cost).abs() < 1e-9);
    let series = o["series"].as_array().expect("series");
    let in_series: u64 = series
        .iter()
        .map(|p| p["requests"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(in_series, 30, "every record falls in one bucket");
    let cost_of = |model: &str| -> f64 {
        records
            .iter()
            .filter(|r| r.model.as_deref() == Some(model))
            .filter_map(|r| r.cost_usd)
            .sum()
    };
    let mut models = ["gpt-4o", "gpt-4o-mini", "claude-sonnet-4-5"];
    models.sort_by(|a, b| cost_of(b).total_cmp(&cost_of(a)));
    let top: Vec<&str> = o["top_models"]
        .as_array()
        .expect("top models")
        .iter()
        .filter_map(|m| m["key"].as_str())
        .collect();
    assert_eq!(top, models);

    // Models and providers.
    let claude_cost: f64 = records
        .iter()
        .filter(|r| r.provider == "anthropic")
        .filter_map(|r| r.cost_usd)
        .sum();
    let html = page(&t, &format!("/models?{RANGE}")).await;
    assert!(html.contains(&format!("${claude_cost:.4}")), "{html}");
    let m = api(&t, &format!("/api/models?{RANGE}")).await;
    assert_eq!(m["providers"][1]["key"], "anthropic");
    assert_eq!(m["providers"][1]["requests"], 10);
    assert_eq!(m["providers"][0]["requests"], 20);

    // Users: u0 has requests 0, 4, …, 28.
    let u0: Vec<&Record> = records
        .iter()
        .filter(|r| r.user_id.as_deref() == Some("u0"))
        .collect();
    let html = page(&t, &format!("/users?{RANGE}")).await;
    assert!(html.contains(r#"href="/users/u0?"#), "{html}");
    let html = page(&t, &format!("/users/u0?{RANGE}")).await;
    assert!(html.contains(&format!(r#"id="requests">{}<"#, u0.len())));
    let u0_cost: f64 = u0.iter().filter_map(|r| r.cost_usd).sum();
    assert!(html.contains(&format!(r#"id="cost">${u0_cost:.4}<"#)));

    // Sessions, the session tree and the waterfall.
    let sessions = api(&t, &format!("/api/sessions?{RANGE}")).await;
    assert_eq!(sessions["rows"].as_array().map(Vec::len), Some(3));
    let s0 = &sessions["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .find(|r| r["key"] == "s0")
        .expect("s0")
        .clone();
    assert_eq!(s0["requests"], 10);
    assert_eq!(s0["users"], 4);
    // s0 holds i = 0, 3, …, 27: from T0 to the end of request 27.
    assert_eq!(s0["duration_ms"], 27 * 120_000 + (100 + 27 * 37 % 900));
    let html = page(&t, "/sessions/s0").await;
    assert!(html.contains("<code>/step-0</code>"), "{html}");
    assert!(html.contains("<code>/sub</code>"));
    assert_eq!(
        html.matches("<rect").count(),
        10,
        "one waterfall bar per request"
    );

    // Properties: the breakdown by env.
    let p = api(&t, &format!("/api/properties?key=env&{RANGE}")).await;
    assert_eq!(p["keys"], json!(["env", "team"]));
    let values: Vec<(&str, u64)> = p["values"]
        .as_array()
        .expect("values")
        .iter()
        .map(|v| {
            (
                v["key"].as_str().unwrap_or(""),
                v["requests"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    assert_eq!(values.len(), 2);
    assert!(values.contains(&("prod", 15)) && values.contains(&("dev", 15)));
    let html = page(&t, &format!("/properties?key=env&{RANGE}")).await;
    assert!(html.contains(">prod</a>"));

    // Requests: filters, pagination, detail.
    let html = page(&t, &format!("/requests?status=5xx&{RANGE}")).await;
    assert_eq!(html.matches(r#"<tr class="err">"#).count(), 2, "{html}");
    let html = page(&t, &format!("/requests?limit=20&{RANGE}")).await;
    let next = html
        .split(r#"id="next" href=""#)
        .nth(1)
        .and_then(|s| s.split('"').next())
        .expect("a next link")
        .replace("&#38;", "&");
    let rest = page(&t, &next).await;
    assert_eq!(rest.matches("<a href=\"/requests/").count(), 10, "{rest}");
    let html = page(&t, &format!("/requests?pkey=team&pvalue=t1&{RANGE}")).await;
    assert_eq!(html.matches("<a href=\"/requests/").count(), 15);
    let streamed = &records[0];
    let html = page(&t, &format!("/requests/{}", streamed.request_id)).await;
    assert!(
        html.contains(r#"<pre class="body" id="reassembled">Hello there</pre>"#),
        "{html}"
    );
    assert!(
        html.contains("{\n  &#34;model&#34;: &#34;gpt-4o&#34;,\n  &#34;messages&#34;: []\n}"),
        "request pretty-printed in its own key order"
    );

    // Auto-refresh is a meta tag, no script, and the range links keep it.
    let html = page(&t, &format!("/models?refresh=30&{RANGE}")).await;
    assert!(html.contains(r#"<meta http-equiv="refresh" content="30">"#));
    assert!(
        html.contains("href=\"/models?range=1h&#38;refresh=30\""),
        "{html}"
    );
    assert!(!page(&t, "/models").await.contains("http-equiv"));

    // Bad input gets a clear error page, not a 500.
    let (status, _, body) = get(&t.dashboard_url("/?range=2y")).await;
    assert_eq!(status, 400);
    assert!(String::from_utf8_lossy(&body).contains("range: expected one of"));
    let (status, _, _) = get(&t.dashboard_url("/requests/not-a-uuid")).await;
    assert_eq!(status, 400);
    let (status, _, _) = get(&t.dashboard_url("/sessions/none-such")).await;
    assert_eq!(status, 404);
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logged_bodies_and_tags_render_inert() {
    let up = FakeUpstream::start().await;
    let t = TestTally::start(&up.url()).await;
    let evil = "<script>alert(1)</script><img src=x onerror=alert(2)>";
    let (status, headers, _) = post_json(
        &t.url("/v1/chat/completions"),
        &[
            ("Tally-User-Id", "<b>mallory</b>"),
            ("Tally-Property-Note", evil),
        ],
        &json!({"model": "gpt-4o", "messages": [{"role": "user", "content": evil}]}),
    )
    .await;
    assert_eq!(status, 200);
    let id = request_id(&headers);
    t.wait_for_rows(1).await;
    for path in [
        format!("/requests/{id}"),
        "/requests".to_owned(),
        "/users".to_owned(),
        "/".to_owned(),
        "/properties?key=note".to_owned(),
    ] {
        let html = page(&t, &path).await;
        assert!(!html.contains("<script"), "{path}: {html}");
        assert!(!html.contains("<img"), "{path}");
        assert!(!html.contains("<b>mallory"), "{path}");
    }
    // Ids with spaces, slashes, `+` and `?` survive the round trip through links.
    let odd = "a b/c+d?e";
    let (status, _, _) = post_json(
        &t.url("/v1/chat/completions"),
        &[("Tally-User-Id", odd), ("Tally-Session-Id", odd)],
        &json!({"model": "gpt-4o", "messages": []}),
    )
    .await;
    assert_eq!(status, 200);
    t.wait_for_rows(2).await;
    let html = page(&t, "/users").await;
    let href = html
        .split("href=\"/users/a")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .expect("a link to the odd user");
    let user_page = page(&t, &format!("/users/a{}", href.replace("&#38;", "&"))).await;
    assert!(user_page.contains(r#"id="requests">1<"#), "{user_page}");
    let session_page = page(&t, "/sessions/a%20b%2Fc%2Bd%3Fe").await;
    assert!(session_page.contains(r#"id="requests">1<"#));

    let html = page(&t, &format!("/requests/{id}")).await;
    // Shown as text (askama escapes `<` as `&#60;`).
    assert!(
        html.contains("&#60;script&#62;alert(1)&#60;/script&#62;"),
        "{html}"
    );
    assert!(html.contains("&#60;b&#62;mallory&#60;/b&#62;"));
    let html = page(&t, "/properties?key=note").await;
    assert!(
        html.contains("&#60;img src=x onerror=alert(2)&#62;"),
        "{html}"
    );
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_guards_every_route_but_healthz() {
    let up = FakeUpstream::start().await;
    let t = TestTally::start_with(&up.url(), |c| {
        c.dashboard.auth_token = Some("let-me-in".into());
    })
    .await;
    for path in [
        "/",
        "/requests",
        "/sessions",
        "/users",
        "/models",
        "/properties",
        "/budgets",
        "/api/budgets",
        "/metrics",
        "/api/requests",
        "/api/overview",
        "/api/users",
        "/assets/tally.css",
    ] {
        let (status, headers, _) = get(&t.dashboard_url(path)).await;
        assert_eq!(status, 401, "{path}");
        assert!(headers["www-authenticate"]
            .to_str()
            .is_ok_and(|v| v.starts_with("Basic")));
        let (status, _, _) = send(
            Method::GET,
            &t.dashboard_url(path),
            &[("authorization", "Bearer wrong")],
            "",
        )
        .await;
        assert_eq!(status, 401, "{path}");
        let (status, _, _) = send(
            Method::GET,
            &t.dashboard_url(path),
            &[("authorization", "Bearer let-me-in")],
            "",
        )
        .await;
        assert_eq!(status, 200, "{path}");
        // A browser's basic-auth prompt: any user, the token as password.
        let (status, _, _) = send(
            Method::GET,
            &t.dashboard_url(path),
            &[("authorization", "Basic b3BzOmxldC1tZS1pbg==")],
            "",
        )
        .await;
        assert_eq!(status, 200, "{path}");
    }
    assert_eq!(get(&t.dashboard_url("/healthz")).await.0, 200);

    // Every route the router declares, including ones added after this test was written: read
    // them from the source and ask each one without credentials.
    let router = include_str!("../dashboard/src/lib.rs");
    let declared: Vec<String> = router
        .split(".route(\"")
        .skip(1)
        .filter_map(|r| r.split('"').next())
        .map(|r| {
            r.split('/')
                .map(|seg| if seg.starts_with('{') { "x" } else { seg })
                .collect::<Vec<_>>()
                .join("/")
        })
        .collect();
    assert!(declared.len() >= 20, "{declared:?}");
    for path in declared {
        let (status, _, _) = get(&t.dashboard_url(&path)).await;
        if path == "/healthz" {
            assert_eq!(status, 200);
        } else {
            assert_eq!(status, 401, "{path} answered without credentials");
        }
    }
    t.stop().await;
}

const MONTH: &str = "from=2026-11-01T00:00:00Z&to=2026-12-01T00:00:00Z";

/// Removes every `p50`/`p95`/`p99` from `v`, returning them with their paths, in order.
fn take_quantiles(v: &mut Value) -> Vec<(String, f64)> {
    fn walk(v: &mut Value, path: String, out: &mut Vec<(String, f64)>) {
        match v {
            Value::Object(o) => {
                for level in ["p50", "p95", "p99"] {
                    if let Some(q) = o.remove(level) {
                        if let Some(q) = q.as_f64() {
                            out.push((format!("{path}.{level}"), q));
                        }
                    }
                }
                for (k, v) in o.iter_mut() {
                    walk(v, format!("{path}.{k}"), out);
                }
            }
            Value::Array(a) => {
                for (i, v) in a.iter_mut().enumerate() {
                    walk(v, format!("{path}[{i}]"), out);
                }
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(v, String::new(), &mut out);
    out
}

/// Every number is a float rounded to 9 places, so sums in different orders compare equal.
fn rounded(v: Value) -> Value {
    match v {
        Value::Number(n) if n.is_f64() => {
            json!((n.as_f64().unwrap_or(0.0) * 1e9).round() / 1e9)
        }
        Value::Array(a) => Value::Array(a.into_iter().map(rounded).collect()),
        Value::Object(o) => Value::Object(o.into_iter().map(|(k, v)| (k, rounded(v))).collect()),
        v => v,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_stores_return_the_same_numbers_on_every_endpoint() {
    let up = FakeUpstream::start().await;
    let ch = ClickHouse::started().await;
    let on_ch = TestTally::start_with(&up.url(), |c| ch.configure(c)).await;
    let on_sqlite = TestTally::start(&up.url()).await;
    let records = seeded();
    write_sqlite(&on_sqlite, &records);
    write_clickhouse(&ch.settings(), records.clone()).await;

    let paths = [
        format!("/api/overview?{RANGE}"),
        format!("/api/overview?{RANGE}&model=gpt-4o&status=2xx"),
        format!("/api/overview?{RANGE}&property.env=prod"),
        format!("/api/models?{RANGE}"),
        format!("/api/sessions?{RANGE}"),
        "/api/sessions/s1".to_owned(),
        format!("/api/users?{RANGE}"),
        format!("/api/users/u2?{RANGE}"),
        format!("/api/properties?{RANGE}"),
        format!("/api/properties?key=team&{RANGE}"),
        format!("/api/requests?{RANGE}&limit=7&provider=openai"),
        // A month, which no rollup serves when filtered by user: SQLite splits the scan into
        // parallel parts and merges them; ClickHouse reads the records.
        format!("/api/users?{MONTH}"),
        format!("/api/overview?{MONTH}&user_id=u1"),
    ];
    for path in &paths {
        let a = rounded(api(&on_sqlite, path).await);
        let b = rounded(api(&on_ch, path).await);
        assert_eq!(a, b, "{path}");
    }
    // A month unfiltered: ClickHouse reads its hourly rollup. Every sum and count is still
    // exact; only the quantiles are merged t-digest estimates. With ten records per model a
    // t-digest is coarse, so they are only checked to be in the right region (no zeros, no
    // unit errors); at realistic volumes a t-digest is within about a percent.
    for path in [
        format!("/api/overview?{MONTH}"),
        format!("/api/overview?{MONTH}&model=gpt-4o"),
        format!("/api/models?{MONTH}"),
    ] {
        let (mut a, mut b) = (
            rounded(api(&on_sqlite, &path).await),
            rounded(api(&on_ch, &path).await),
        );
        let (qa, qb) = (take_quantiles(&mut a), take_quantiles(&mut b));
        assert_eq!(a, b, "{path}");
        assert_eq!(qa.len(), qb.len(), "{path}");
        assert!(!qa.is_empty());
        for ((name, x), (_, y)) in qa.iter().zip(&qb) {
            assert!(
                (x - y).abs() <= (0.3 * x).max(150.0),
                "{path} {name}: exact {x}, rollup {y}"
            );
        }
    }
    // Which path served what: with the rollup emptied, the month shows nothing on ClickHouse
    // while the two hours (read from the records) still show everything.
    ch.client()
        .query("TRUNCATE TABLE requests_hourly")
        .execute()
        .await
        .expect("truncate rollup");
    let month = api(&on_ch, &format!("/api/overview?{MONTH}")).await;
    assert_eq!(
        month["summary"]["requests"], 0,
        "the month is read from the rollup"
    );
    let hours = api(&on_ch, &format!("/api/overview?{RANGE}")).await;
    assert_eq!(
        hours["summary"]["requests"], 30,
        "short ranges read the records"
    );
    // And the numbers are not all zero: the comparison compared something.
    let o = api(&on_ch, &paths[0]).await;
    assert_eq!(o["summary"]["requests"], 30);
    assert_eq!(
        o["summary"]["ttft_ms"]["p50"],
        json!(quantile(
            &records.iter().filter_map(|r| r.ttft_ms).collect::<Vec<_>>(),
            0.5
        ))
    );
    on_ch.stop().await;
    on_sqlite.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_browser_loads_every_page_without_errors() {
    let chromium = std::path::Path::new("/usr/bin/chromium");
    assert!(
        chromium.exists(),
        "the browser test needs Debian's chromium; scripts/test.sh installs it"
    );
    let up = FakeUpstream::start().await;
    let t = TestTally::start_with(&up.url(), |c| {
        c.budgets = vec![serde_json::from_value(serde_json::json!({
            "name": "monthly", "scope": "per_user", "limit_usd": 10.0, "window": "month",
        }))
        .expect("budget")];
    })
    .await;
    let records = seeded();
    write_sqlite(&t, &records);
    let artifacts = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-artifacts");
    std::fs::create_dir_all(&artifacts).expect("artifact dir");
    let pages = [
        format!("/?{RANGE}"),
        format!("/requests?{RANGE}"),
        format!("/requests/{}", records[0].request_id),
        format!("/requests/{}", records[1].request_id),
        format!("/sessions?{RANGE}"),
        "/sessions/s0".to_owned(),
        format!("/users?{RANGE}"),
        format!("/users/u1?{RANGE}"),
        format!("/models?{RANGE}"),
        format!("/properties?key=env&{RANGE}"),
        "/budgets".to_owned(),
    ];
    let base = t.dashboard_url("");
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser/check_pages.py");
    let shot = artifacts.join("overview.png");
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(python())
            .arg(script)
            .arg(&base)
            .arg(shot)
            .args(&pages)
            .output()
    })
    .await
    .expect("join")
    .expect("run the browser check");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "browser check failed:\n{stdout}\n{stderr}"
    );
    assert_eq!(stdout.matches("ok /").count(), 11, "{stdout}");
    let png = std::fs::read(artifacts.join("overview.png")).expect("screenshot kept");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "a real screenshot"
    );
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_overview_warns_when_records_were_dropped_or_are_spooled() {
    use tally_dashboard::store::sqlite::SqliteReader;
    use tally_ingest::metrics::{DropLabels, IngestMetrics};

    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("tally.db");
    let mut conn = tally_ingest::sqlite::open_rw(&db).expect("open");
    tally_ingest::sqlite::migrate(&mut conn).expect("migrate");
    let metrics = IngestMetrics::default();
    let app = |metrics: &IngestMetrics| {
        tally_dashboard::app(tally_dashboard::AppState {
            reader: tally_dashboard::store::Reader::Sqlite(SqliteReader::new(&db)),
            registry: Default::default(),
            ingest: Some(metrics.clone()),
            auth: None,
            alerts: None,
            keys: None,
        })
    };
    let serve = |router: axum::Router| async move {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(listener, router).await });
        format!("http://{addr}")
    };
    let base = serve(app(&metrics)).await;
    let (_, _, body) = get(&format!("{base}/")).await;
    assert!(!String::from_utf8_lossy(&body).contains(r#"role="alert""#));

    metrics
        .dropped
        .get_or_create(&DropLabels {
            reason: "channel_full",
        })
        .inc_by(3);
    metrics.spool_segments.set(2);
    metrics.spool_bytes.set(4096);
    let (_, _, body) = get(&format!("{base}/")).await;
    let html = String::from_utf8_lossy(&body);
    assert!(html.contains(r#"role="alert""#), "{html}");
    assert!(html.contains("3 records were dropped"), "{html}");
    assert!(html.contains("2 batches (4096 bytes) are waiting in the spool"));
    let (_, _, body) = get(&format!("{base}/api/overview")).await;
    let o: Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(o["ingest"]["dropped"], 3);
    assert_eq!(o["ingest"]["spooled_batches"], 2);
}

/// Migration 3 alters the rollup of a store that already has data: the old rows keep
/// counting, and rows written after it fill the new columns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rollup_upgrade_keeps_old_rows_and_fills_new_columns() {
    let ch = ClickHouse::started().await;
    let settings = ch.settings();
    let client = ch.client();
    // The store as the previous release left it: migrations 1 and 2, with data.
    settings
        .server_client()
        .query(&format!(
            "CREATE DATABASE IF NOT EXISTS {}",
            settings.database
        ))
        .execute()
        .await
        .expect("database");
    client
        .query(
            "CREATE TABLE IF NOT EXISTS tally_migrations \
             (version UInt32, name String, applied_at DateTime64(3, 'UTC')) \
             ENGINE = MergeTree ORDER BY version",
        )
        .execute()
        .await
        .expect("migrations table");
    for m in &tally_schema::CLICKHOUSE[..2] {
        for stmt in tally_ingest::clickhouse::render_statements(&settings, m.sql) {
            client.query(&stmt).execute().await.expect("old migration");
        }
        client
            .query("INSERT INTO tally_migrations SELECT ?, ?, now64(3)")
            .bind(m.version)
            .bind(m.name)
            .execute()
            .await
            .expect("record migration");
    }
    // Today's writer sends the columns added from migration 5 on too; add them (idempotently,
    // as those migrations do) so it can write the old rows. The rollups are what this tests.
    for m in tally_schema::CLICKHOUSE.iter().filter(|m| m.version >= 5) {
        for stmt in tally_ingest::clickhouse::render_statements(&settings, m.sql) {
            client.query(&stmt).execute().await.expect("row columns");
        }
    }
    let records = seeded();
    let (old, new) = records.split_at(12);
    write_clickhouse(&settings, old.to_vec()).await;
    assert_eq!(
        tally_ingest::clickhouse::migrate(&settings)
            .await
            .expect("upgrade"),
        tally_schema::CLICKHOUSE.len() - 2,
        "every migration after 2 is new"
    );
    write_clickhouse(&settings, new.to_vec()).await;

    let up = FakeUpstream::start().await;
    let t = TestTally::start_with(&up.url(), |c| ch.configure(c)).await;
    let o = api(&t, &format!("/api/overview?{MONTH}")).await;
    let s = &o["summary"];
    assert_eq!(s["requests"], 30, "old and new rows both count: {s}");
    let cost: f64 = records.iter().filter_map(|r| r.cost_usd).sum();
    assert!((s["cost_usd"].as_f64().unwrap_or(0.0) - cost).abs() < 1e-9);
    // Cache hits and the latency sum exist only for rows written after the upgrade.
    let new_hits = new
        .iter()
        .filter(|r| r.cache_status == CacheStatus::Hit)
        .count();
    assert_eq!(s["cache_hits"], new_hits as u64, "{s}");
    let new_latency: u64 = new.iter().map(|r| r.latency_ms).sum();
    assert_eq!(s["latency_sum_ms"], new_latency);
    t.stop().await;
}
