//! What the optional stages cost per request: the same JSON request through Tally with the
//! stages off (the default), configured but not used by this request, and used (a memory
//! cache hit, a one-target router, a memory rate limit). Each Tally logs to SQLite.
//!
//! `cargo bench --bench stages`

mod common;

use std::hint::black_box;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use tally_proxy::stages::{PolicyConfig, RouterConfig, TargetConfig};

/// Extra request headers of one case.
type Headers = &'static [(&'static str, &'static str)];

fn router() -> RouterConfig {
    RouterConfig {
        targets: vec![TargetConfig {
            provider: "openai".into(),
            model: None,
            weight: 1,
        }],
        ..RouterConfig::default()
    }
}

fn policy(providers: Vec<String>) -> PolicyConfig {
    PolicyConfig {
        name: "bench".into(),
        limit: 1e12,
        window_secs: 1,
        unit: Default::default(),
        scope: "user".into(),
        providers,
    }
}

fn stages(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("rt");
    let dirs: Vec<_> = (0..3)
        .map(|_| tempfile::tempdir().expect("tempdir"))
        .collect();
    let (off, unused, used) = rt.block_on(async {
        let upstream = common::fake_upstream().await;
        let off = common::start_tally(upstream, dirs[0].path(), |_| {}).await;
        // Configured, but for another provider and another path than the request's.
        let unused = common::start_tally(upstream, dirs[1].path(), |c| {
            c.routers.insert("r".into(), router());
            c.rate_limits
                .policies
                .push(policy(vec!["anthropic".into()]));
            c.cache.providers = vec!["anthropic".into()];
        })
        .await;
        let used = common::start_tally(upstream, dirs[2].path(), |c| {
            c.routers.insert("r".into(), router());
            c.rate_limits.policies.push(policy(vec![]));
        })
        .await;
        (off, unused, used)
    });
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let body = Bytes::from_static(
        br#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Say hello"}]}"#,
    );

    let mut g = c.benchmark_group("stages");
    let cases: [(&str, String, Headers); 5] = [
        ("off", format!("http://{off}/v1/chat/completions"), &[]),
        (
            "configured_unused",
            format!("http://{unused}/v1/chat/completions"),
            &[],
        ),
        (
            "rate_limit_memory",
            format!("http://{off}/v1/chat/completions"),
            &[("tally-ratelimit-policy", "1000000000;w=1;s=user")],
        ),
        (
            "router_one_target_plus_rate_limit",
            format!("http://{used}/router/r/v1/chat/completions"),
            &[],
        ),
        (
            "cache_hit_memory",
            format!("http://{off}/v1/chat/completions"),
            &[("tally-cache", "true")],
        ),
    ];
    for (name, url, headers) in cases {
        g.bench_function(name, |b| {
            b.to_async(&rt).iter(|| {
                let mut req = Request::post(&url).header("content-type", "application/json");
                for (k, v) in headers {
                    req = req.header(*k, *v);
                }
                let req = req.body(Full::new(body.clone())).expect("req");
                let client = client.clone();
                async move {
                    let resp = client.request(req).await.expect("resp");
                    assert!(resp.status().is_success());
                    black_box(resp.into_body().collect().await.expect("body").to_bytes())
                }
            })
        });
    }
    g.finish();
}

criterion_group!(benches, stages);
criterion_main!(benches);
