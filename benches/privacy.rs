//! What redaction costs the ingest thread per record: request and response bodies of 1 KiB and
//! 64 KiB, as chat JSON of ordinary prose, under the default policy (secrets only) and with
//! every detector on; and a 1 KiB body that holds one of each kind of value, so every finder
//! does its checks and a rewrite happens. Throughput is of one body. The `guard` group is the
//! same detectors on the request path (`[privacy.request]`).
//! `cargo bench --bench privacy -- --warm-up-time 1 --measurement-time 3`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use tally_ingest::{Record, RecordFilter};
use tally_privacy::{Mode, PrivacyConfig, Redactor};

/// Prose with the things that look like findings and are not: numbers, dates, times,
/// versions, paths, hyphenated words, `@` handles, dashes.
const PROSE: &str = "The quarterly report for 2024-05-01 shows revenue up 12.5% to 4,311,200 \
    across 37 regions. At 10:30 the team (see @ops and the runbook at /srv/app/v1.2.3/README) \
    agreed that order 1000000000000008 and invoice 2024-0042 are settled; the follow-up is \
    scheduled for Q3. Latency p99 fell from 812 ms to 640 ms after build 7.14.2 shipped. \
    Non-trivial well-known side-effects were re-tested: a-b-c, x-y, e-mail, state-of-the-art. ";

/// One of each: email, phone, card, IBAN, SSN, IP, and five kinds of secret.
const FINDINGS: &str = "Contact bob.smith@example.com or +1 415-555-2671; card 4111 1111 1111 \
    1111, IBAN DE89 3704 0044 0532 0130 00, SSN 078-05-1121, from 203.0.113.77. Keys: \
    ghp_abcdefghijklmnopqrstuvwxyz0123456789, AKIAIOSFODNN7EXAMPLE, AIzaSyD0123456789abcdefghijklmnopqrstu, \
    xoxb-1234567890-abcdefghij, eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.c2lnbmF0dXJlLXNpZ25lZA. ";

fn body(size: usize, text: &str) -> String {
    let mut content = String::new();
    while content.len() + text.len() < size {
        content.push_str(text);
    }
    serde_json::json!({"model": "gpt-4o-mini", "messages": [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": content}]})
    .to_string()
}

fn record(request: &str) -> Record {
    Record {
        request_body: Some(request.to_owned()),
        ..Record::new(uuid::Uuid::now_v7(), 0)
    }
}

fn redactor(all: bool) -> Redactor {
    let mut config = PrivacyConfig::default();
    if all {
        for name in ["email", "phone", "card", "iban", "ssn", "ip"] {
            config.detectors.insert(name.into(), Mode::Mask);
        }
    }
    Redactor::new(&config, None).expect("redactor")
}

fn redaction(c: &mut Criterion) {
    let mut g = c.benchmark_group("redact");
    let cases = [
        ("prose 1KiB", body(1024, PROSE)),
        ("prose 64KiB", body(64 * 1024, PROSE)),
        ("findings 1KiB", body(1024, FINDINGS)),
    ];
    for (policy, all) in [("default", false), ("all", true)] {
        let r = redactor(all);
        for (name, text) in &cases {
            let rec = record(text);
            g.throughput(Throughput::Bytes(text.len() as u64));
            g.bench_with_input(BenchmarkId::new(policy, name), &rec, |b, rec| {
                b.iter_batched(
                    || rec.clone(),
                    |mut rec| {
                        r.filter(&mut rec);
                        black_box(rec)
                    },
                    criterion::BatchSize::SmallInput,
                )
            });
        }
    }
    g.finish();
    // Which detector the "all" figure is made of.
    let mut g = c.benchmark_group("redact one");
    let text = body(1024, PROSE);
    g.throughput(Throughput::Bytes(text.len() as u64));
    for name in ["email", "phone", "card", "iban", "ssn", "ip"] {
        let mut config = PrivacyConfig::default();
        config.detectors.insert(name.into(), Mode::Mask);
        let r = Redactor::new(&config, None).expect("redactor");
        let rec = record(&text);
        g.bench_function(BenchmarkId::new("prose 1KiB", name), |b| {
            b.iter_batched(
                || rec.clone(),
                |mut rec| {
                    r.filter(&mut rec);
                    black_box(rec)
                },
                criterion::BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

/// Text built to make a detector work hardest, 256 KiB of one repeated unit: the cost must
/// stay linear in the body (a `BEGIN` line repeated without an `END` was quadratic once).
fn adversarial(c: &mut Criterion) {
    let mut g = c.benchmark_group("redact adversarial 256KiB");
    g.sample_size(20);
    let r = redactor(true);
    for (name, unit) in [
        ("pem_begin", "-----BEGIN PRIVATE KEY-----"),
        ("aws_ids", "AKIAIOSFODNN7EXAMPLE "),
        ("iban_groups", "DE89 3704 "),
        ("dashed_digits", "12-"),
    ] {
        let text = unit.repeat(256 * 1024 / unit.len());
        g.throughput(Throughput::Bytes(text.len() as u64));
        let rec = record(&text);
        g.bench_function(name, |b| {
            b.iter_batched(
                || rec.clone(),
                |mut rec| {
                    r.filter(&mut rec);
                    black_box(rec)
                },
                criterion::BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

/// The request-path guard (`[privacy.request]`) on the same bodies: what it adds to a request
/// on its event loop, besides one UTF-8 check and, when it masks, one copy of the body. The
/// "secrets" guard blocks on every secret detector; "all" also masks every personal-data one.
fn guard(c: &mut Criterion) {
    let mut g = c.benchmark_group("guard");
    let cases = [
        ("prose 1KiB", body(1024, PROSE)),
        ("prose 64KiB", body(64 * 1024, PROSE)),
        ("findings 1KiB", body(1024, FINDINGS)),
    ];
    let secrets: Vec<String> = tally_privacy::detect::BUILTIN
        .iter()
        .filter(|n| tally_privacy::detect::is_secret(n))
        .map(|n| (*n).to_owned())
        .collect();
    let personal: Vec<String> = ["email", "phone", "card", "iban", "ssn", "ip"]
        .map(String::from)
        .to_vec();
    for (policy, mask) in [("secrets", Vec::new()), ("all", personal)] {
        let config = PrivacyConfig {
            request: tally_privacy::RequestConfig {
                block: secrets.clone(),
                mask,
                ..Default::default()
            },
            ..PrivacyConfig::default()
        };
        let guard = tally_privacy::RequestGuard::new(&config)
            .expect("guard")
            .expect("configured");
        for (name, text) in &cases {
            g.throughput(Throughput::Bytes(text.len() as u64));
            g.bench_with_input(BenchmarkId::new(policy, name), text, |b, text| {
                b.iter(|| black_box(guard.check(black_box(text), true)).is_clean())
            });
        }
    }
    g.finish();
}

criterion_group!(benches, redaction, adversarial, guard);
criterion_main!(benches);
