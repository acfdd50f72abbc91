//! Proxy overhead on loopback: the same request sent straight to a fast fake upstream and
//! through Tally (logging to SQLite), one at a time over a kept-alive connection. The
//! difference of the two is what Tally adds per request with full logging on.
//!
//! `cargo bench --bench proxy`
//!
//! This is a closed-loop latency comparison, not a load test; the open-loop harness at fixed
//! arrival rates is the performance issue's work.

use std::convert::Infallible;
use std::hint::black_box;
use std::net::SocketAddr;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioIo};

const JSON: &str = r#"{"id":"chatcmpl-bench","object":"chat.completion","created":1700000000,"model":"gpt-4o-mini-2024-07-18","choices":[{"index":0,"message":{"role":"assistant","content":"Hello from the bench upstream."},"finish_reason":"stop"}],"usage":{"prompt_tokens":21,"completion_tokens":7,"total_tokens":28}}"#;

fn sse() -> String {
    let mut s = String::new();
    for i in 0..20 {
        s.push_str(&format!("data: {{\"id\":\"c\",\"model\":\"gpt-4o-mini\",\"choices\":[{{\"delta\":{{\"content\":\" t{i}\"}}}}],\"usage\":null}}\n\n"));
    }
    s.push_str("data: {\"id\":\"c\",\"model\":\"gpt-4o-mini\",\"choices\":[],\"usage\":{\"prompt_tokens\":21,\"completion_tokens\":20,\"total_tokens\":41}}\n\ndata: [DONE]\n\n");
    s
}

async fn fake_upstream() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let sse = Bytes::from(sse());
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let sse = sse.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                    let sse = sse.clone();
                    async move {
                        let stream = req.headers().contains_key("x-stream");
                        let _ = req.into_body().collect().await;
                        let (ct, body) = if stream {
                            ("text/event-stream", sse)
                        } else {
                            ("application/json", Bytes::from_static(JSON.as_bytes()))
                        };
                        let mut r = Response::new(Full::new(body));
                        r.headers_mut()
                            .insert("content-type", ct.parse().expect("ct"));
                        Ok::<_, Infallible>(r)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

fn overhead(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("rt");
    let dir = tempfile::tempdir().expect("tempdir");
    let (upstream, proxy) = rt.block_on(async {
        let upstream = fake_upstream().await;
        let mut config = tally::Config::default();
        config.proxy.listen = "127.0.0.1:0".into();
        config.dashboard.listen = "127.0.0.1:0".into();
        config.store.path = dir.path().join("bench.db");
        config.store.spool_dir = dir.path().join("spool");
        config.providers.insert(
            "openai".into(),
            tally_proxy::ProviderConfig {
                base_url: Some(format!("http://{upstream}")),
                ..Default::default()
            },
        );
        let server = tally::Server::bind(config.validate().expect("config"))
            .await
            .expect("bind");
        let proxy = server.proxy_addr().expect("addr");
        tokio::spawn(server.run(std::future::pending()));
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
