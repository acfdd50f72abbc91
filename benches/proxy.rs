//! Proxy overhead on loopback: the same request sent straight to a fast fake upstream and
//! through Tally (logging to SQLite), one at a time over a kept-alive connection. The
//! difference of the two is what Tally adds per request with full logging on.
//!
//! `cargo bench --bench proxy`
//!
//! This is a closed-loop latency comparison, not a load test; the open-loop harness at fixed
//! arrival rates is the performance issue's work.

mod common;

use std::hint::black_box;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;

fn overhead(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("rt");
    let dir = tempfile::tempdir().expect("tempdir");
    let (upstream, proxy) = rt.block_on(async {
        let upstream = common::fake_upstream().await;
        let proxy = common::start_tally(upstream, dir.path(), |_| {}).await;
        (upstream, proxy)
    });
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let body = Bytes::from_static(
        br#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Say hello"}]}"#,
    );
    let stream_body = Bytes::from_static(br#"{"model":"gpt-4o-mini","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"Say hello"}]}"#);

    let mut g = c.benchmark_group("roundtrip");
    for (name, addr, stream) in [
        ("direct_json", upstream, false),
        ("tally_json", proxy, false),
        ("direct_stream_22_events", upstream, true),
        ("tally_stream_22_events", proxy, true),
    ] {
        let url = format!("http://{addr}/v1/chat/completions");
        let payload = if stream {
            stream_body.clone()
        } else {
            body.clone()
        };
        g.bench_function(name, |b| {
            b.to_async(&rt).iter(|| {
                let mut req = Request::post(&url).header("content-type", "application/json");
                if stream {
                    req = req.header("x-stream", "1");
                }
                let req = req.body(Full::new(payload.clone())).expect("req");
                let client = client.clone();
                async move {
                    let resp = client.request(req).await.expect("resp");
                    black_box(resp.into_body().collect().await.expect("body").to_bytes())
                }
            })
        });
    }
    g.finish();
}

criterion_group!(benches, overhead);
criterion_main!(benches);
