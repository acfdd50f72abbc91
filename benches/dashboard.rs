//! Dashboard pages over large stores: the overview and requests pages, rendered to HTML
//! through the same handlers the server runs, over 1M records in SQLite and 10M in the
//! ClickHouse test engine (chDB behind `tests/clickhouse/chdb_server.py`).
//!
//! `cargo bench --bench dashboard` (both stores), or `-- sqlite` / `-- clickhouse` for one.
//! The SQLite file is generated once into `target/bench-data/` (about 1.3 GB) and reused; the
//! ClickHouse data is generated per run (about a minute). Needs `.venv` from scripts/test.sh
//! for the ClickHouse half.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::response::Response;
use criterion::{criterion_group, criterion_main, Criterion};
use tally_dashboard::store::clickhouse::ClickHouseReader;
use tally_dashboard::store::sqlite::SqliteReader;
use tally_dashboard::store::Reader;
use tally_dashboard::{pages, AppState};

#[allow(dead_code)]
#[path = "../tests/support/clickhouse.rs"]
mod clickhouse_fixture;

/// The generated data ends here (2026-11-22T00:00:00Z) and spans the 30 days before.
const END: i64 = 1_795_305_600_000;
const SPAN: i64 = 30 * 86_400_000;

fn state(reader: Reader) -> AppState {
    AppState {
        reader,
        registry: Arc::new(Default::default()),
        ingest: None,
        auth: None,
        alerts: None,
        keys: None,
    }
}

fn query(pairs: &[(&str, String)]) -> Query<BTreeMap<String, String>> {
    Query(
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect(),
    )
}

fn range(days: i64) -> Vec<(&'static str, String)> {
    vec![
        ("from", (END - days * 86_400_000).to_string()),
        ("to", END.to_string()),
    ]
}

async fn ok(resp: Response) {
    assert_eq!(resp.status(), 200, "page failed");
    let body = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .expect("body");
    assert!(body.len() > 1000);
}

/// The SQL expressions that generate record `i` of `n`; `{i}` and `{n}` are substituted.
/// Shapes: 8 models on 3 providers, 5,000 users, 50,000 sessions, 2% errors, 1 KiB bodies.
const SQLITE_SEED: &str = "
INSERT INTO requests (request_id, ts, provider, endpoint, method, model, status, stream,
    latency_ms, ttft_ms, prompt_tokens, completion_tokens, tokens_estimated, cost_usd, user_id,
    session_id, session_path, properties, cache_status, request_bytes, response_bytes,
    request_body, response_body)
WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < ?1 - 1)
SELECT printf('%08x-0000-7000-8000-%012x', i, i),
       ?2 - 1 - (i * ?3 / ?1),
       CASE i % 8 WHEN 5 THEN 'anthropic' WHEN 6 THEN 'anthropic' WHEN 7 THEN 'groq' ELSE 'openai' END,
       '/v1/chat/completions', 'POST',
       CASE i % 8 WHEN 0 THEN 'gpt-4o' WHEN 1 THEN 'gpt-4o-mini' WHEN 2 THEN 'gpt-4.1'
                  WHEN 3 THEN 'o3-mini' WHEN 4 THEN 'gpt-5' WHEN 5 THEN 'claude-sonnet-4-5'
                  WHEN 6 THEN 'claude-haiku-4-5' ELSE 'llama-3.3-70b' END,
       CASE WHEN i % 50 = 0 THEN 500 ELSE 200 END,
       i % 2,
       50 + (i * 7919) % 3000,
       CASE WHEN i % 2 = 0 THEN 20 + (i * 104729) % 800 END,
       100 + i % 2000, 50 + i % 700, i % 40 = 0,
       CASE WHEN i % 97 = 0 THEN NULL ELSE (i % 1000) * 0.000013 END,
       'user-' || (i % 5000), 'sess-' || (i % 50000), '/agent/step-' || (i % 5),
       '{\"env\":\"' || CASE WHEN i % 3 = 0 THEN 'dev' ELSE 'prod' END || '\",\"team\":\"t' || (i % 12) || '\"}',
       CASE WHEN i % 10 = 0 THEN 'hit' ELSE 'miss' END,
       600, 500,
       '{\"model\":\"gpt-4o\",\"messages\":[{\"role\":\"user\",\"content\":\"' || substr(hex(zeroblob(300)), 1, 540) || '\"}]}',
       '{\"choices\":[{\"message\":{\"content\":\"' || substr(hex(zeroblob(300)), 1, 420) || '\"}}]}'
FROM n";

fn sqlite_store(n: i64) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench-data");
    std::fs::create_dir_all(&dir).expect("bench-data dir");
    let path = dir.join(format!("dashboard-{n}.db"));
    if let Ok(conn) = rusqlite::Connection::open(&path) {
        let have: rusqlite::Result<i64> =
            conn.query_row("SELECT count(*) FROM requests", [], |r| r.get(0));
        if have.ok() == Some(n) {
            return path;
        }
    }
    let _ = std::fs::remove_file(&path);
    let mut conn = tally_ingest::sqlite::open_rw(&path).expect("open");
    tally_ingest::sqlite::migrate(&mut conn).expect("migrate");
    eprintln!("generating {n} records into {}", path.display());
    conn.execute(SQLITE_SEED, rusqlite::params![n, END, SPAN])
        .expect("seed");
    conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE); ANALYZE;")
        .expect("checkpoint");
    path
}

const CLICKHOUSE_SEED: &str = "
INSERT INTO {db}.requests (request_id, ts, provider, endpoint, method, model, status, stream,
    latency_ms, ttft_ms, prompt_tokens, completion_tokens, tokens_estimated, cost_usd, user_id,
    session_id, session_path, properties, cache_status, request_bytes, response_bytes,
    request_body, response_body, request_body_truncated, response_body_truncated)
SELECT generateUUIDv4(),
       fromUnixTimestamp64Milli(toInt64({end} - 1 - intDiv(number * {span}, {n}))),
       ['openai','openai','openai','openai','openai','anthropic','anthropic','groq'][number % 8 + 1],
       '/v1/chat/completions', 'POST',
       ['gpt-4o','gpt-4o-mini','gpt-4.1','o3-mini','gpt-5','claude-sonnet-4-5','claude-haiku-4-5','llama-3.3-70b'][number % 8 + 1],
       if(number % 50 = 0, 500, 200),
       number % 2 = 1,
       50 + (number * 7919) % 3000,
       if(number % 2 = 0, 20 + (number * 104729) % 800, NULL),
       100 + number % 2000, 50 + number % 700, number % 40 = 0,
       if(number % 97 = 0, NULL, (number % 1000) * 0.000013),
       concat('user-', toString(number % 5000)), concat('sess-', toString(number % 50000)),
       concat('/agent/step-', toString(number % 5)),
       map('env', if(number % 3 = 0, 'dev', 'prod'), 'team', concat('t', toString(number % 12))),
       if(number % 10 = 0, 'hit', 'miss'),
       600, 500,
       concat('{\"model\":\"gpt-4o\",\"messages\":[{\"role\":\"user\",\"content\":\"', repeat('a', 540), '\"}]}'),
       concat('{\"choices\":[{\"message\":{\"content\":\"', repeat('b', 420), '\"}}]}'),
       false, false
FROM numbers({n})";

fn bench_pages(c: &mut Criterion, name: &str, rt: &tokio::runtime::Runtime, reader: Reader) {
    let st = state(reader);
    let mut g = c.benchmark_group(name);
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(20));
    for days in [1, 30] {
        g.bench_function(format!("overview_{days}d"), |b| {
            b.to_async(rt).iter(|| async {
                ok(pages::overview(State(st.clone()), query(&range(days)))
                    .await
                    .expect("overview"))
                .await
            })
        });
    }
    g.bench_function("requests_30d", |b| {
        b.to_async(rt).iter(|| async {
            ok(pages::requests(State(st.clone()), query(&range(30)))
                .await
                .expect("requests"))
            .await
        })
    });
    g.bench_function("requests_30d_user_filter", |b| {
        let mut q = range(30);
        q.push(("user_id", "user-42".into()));
        b.to_async(rt).iter(|| async {
            ok(pages::requests(State(st.clone()), query(&q))
                .await
                .expect("requests"))
            .await
        })
    });
    g.finish();
}

/// Whether the command line's filter (if any) selects this group, so that
/// `cargo bench --bench dashboard -- sqlite` does not generate ClickHouse data.
fn wanted(group: &str) -> bool {
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-') && a.parse::<f64>().is_err())
        .collect();
    filters.is_empty()
        || filters
            .iter()
            .any(|f| group.contains(f.as_str()) || f.starts_with(group))
}

fn sqlite(c: &mut Criterion) {
    if !wanted("sqlite_1m") {
        return;
    }
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let path = sqlite_store(1_000_000);
    bench_pages(c, "sqlite_1m", &rt, Reader::Sqlite(SqliteReader::new(path)));
}

fn clickhouse(c: &mut Criterion) {
    if !wanted("clickhouse_10m") {
        return;
    }
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let ch = clickhouse_fixture::ClickHouse::start();
    let settings = ch.settings();
    let n: u64 = 10_000_000;
    rt.block_on(async {
        tally_ingest::clickhouse::migrate(&settings)
            .await
            .expect("migrate");
        let sql = CLICKHOUSE_SEED
            .replace("{db}", &settings.database)
            .replace("{end}", &END.to_string())
            .replace("{span}", &SPAN.to_string())
            .replace("{n}", &n.to_string());
        eprintln!("generating {n} records into ClickHouse");
        ch.client()
            .with_setting("max_execution_time", "3600")
            .query(&sql)
            .execute()
            .await
            .expect("seed ClickHouse");
        ch.client()
            .query(&format!(
                "OPTIMIZE TABLE {}.requests FINAL",
                settings.database
            ))
            .execute()
            .await
            .expect("optimize");
    });
    bench_pages(
        c,
        "clickhouse_10m",
        &rt,
        Reader::ClickHouse(Box::new(ClickHouseReader::new(&settings))),
    );
}

criterion_group!(benches, sqlite, clickhouse);
criterion_main!(benches);
