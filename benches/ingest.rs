//! Sustained SQLite ingest: batches of 1,000 full records (1 KiB bodies) into a WAL file.
//!
//! `cargo bench --bench ingest`

use std::collections::BTreeMap;
use std::hint::black_box;
use std::sync::atomic::{AtomicI64, Ordering};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use tally_ingest::sqlite::{self, SqliteWriter};
use tally_ingest::{BatchWriter, CacheStatus, Record, Tokens};

/// Request start times only move forward, as in real traffic: every batch continues where the
/// last one ended, so time-leading indexes grow at their end.
static NEXT_TS: AtomicI64 = AtomicI64::new(1_795_305_600_000);

fn record(i: usize) -> Record {
    Record {
        request_id: uuid::Uuid::now_v7(),
        ts: NEXT_TS.fetch_add(1, Ordering::Relaxed),
        provider: "openai".into(),
        endpoint: "/v1/chat/completions".into(),
        method: "POST".into(),
        model: Some("gpt-4o-mini".into()),
        response_model: Some("gpt-4o-mini-2024-07-18".into()),
        status: 200,
        stream: true,
        latency_ms: 812,
        ttft_ms: Some(210),
        tokens: Some(Tokens {
            prompt: 120,
            completion: 300,
            cache_read: 0,
            cache_write: 0,
            reasoning: 0,
        }),
        tokens_estimated: false,
        cost_usd: Some(0.000198),
        user_id: Some(format!("user-{}", i % 100)),
        session_id: Some(format!("s-{}", i % 1000)),
        session_path: Some("/plan/step-1".into()),
        session_name: None,
        properties: BTreeMap::from([("env".into(), "prod".into())]),
        cache_status: CacheStatus::None,
        error: None,
        request_bytes: 1024,
        response_bytes: 4096,
        api_key_hint: Some("sk-…abcd".into()),
        provider_request_id: Some("req_123".into()),
        request_body: Some("x".repeat(1024)),
        response_body: Some("y".repeat(1024)),
        request_body_truncated: false,
        response_body_truncated: false,
        router: None,
        attempts: 1,
        parent_request_id: None,
        cost_saved_usd: None,
    }
}

fn sqlite_batches(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut conn = sqlite::open_rw(&dir.path().join("bench.db")).expect("open");
    sqlite::migrate(&mut conn).expect("migrate");
    let mut writer = SqliteWriter::new(conn);
    let mut g = c.benchmark_group("sqlite_ingest");
    g.throughput(Throughput::Elements(1000));
    g.sample_size(20);
    g.bench_function("batch_of_1000_records", |b| {
        b.iter_batched(
            || (0..1000).map(record).collect::<Vec<_>>(),
            |batch| writer.write_batch(black_box(&batch)).expect("write"),
            criterion::BatchSize::LargeInput,
        )
    });
    g.finish();
}

criterion_group!(benches, sqlite_batches);
criterion_main!(benches);
