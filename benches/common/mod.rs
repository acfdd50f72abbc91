//! What the proxy benches share: a fast fake upstream (a fixed JSON answer, or a 22-event
//! stream when the request has `x-stream`) and a Tally on loopback in front of it.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

const JSON: &str = r#"{"id":"chatcmpl-bench","object":"chat.completion","created":1700000000,"model":"gpt-4o-mini-2024-07-18","choices":[{"index":0,"message":{"role":"assistant","content":"Hello from the bench upstream."},"finish_reason":"stop"}],"usage":{"prompt_tokens":21,"completion_tokens":7,"total_tokens":28}}"#;

fn sse() -> String {
    let mut s = String::new();
    for i in 0..20 {
        s.push_str(&format!("data: {{\"id\":\"c\",\"model\":\"gpt-4o-mini\",\"choices\":[{{\"delta\":{{\"content\":\" t{i}\"}}}}],\"usage\":null}}\n\n"));
    }
    s.push_str("data: {\"id\":\"c\",\"model\":\"gpt-4o-mini\",\"choices\":[],\"usage\":{\"prompt_tokens\":21,\"completion_tokens\":20,\"total_tokens\":41}}\n\ndata: [DONE]\n\n");
    s
}

pub async fn fake_upstream() -> SocketAddr {
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

/// A Tally logging to SQLite in `dir`, with `openai` pointed at `upstream`; `customize` adds
/// stage config. Returns the proxy's address; the server runs until the runtime stops.
pub async fn start_tally(
    upstream: SocketAddr,
    dir: &std::path::Path,
    customize: impl FnOnce(&mut tally::Config),
) -> SocketAddr {
    let mut config = tally::Config::default();
    config.proxy.listen = "127.0.0.1:0".into();
    config.dashboard.listen = "127.0.0.1:0".into();
    config.store.path = dir.join("bench.db");
    config.store.spool_dir = dir.join("spool");
    config.providers.insert(
        "openai".into(),
        tally_proxy::ProviderConfig {
            base_url: Some(format!("http://{upstream}")),
            ..Default::default()
        },
    );
    customize(&mut config);
    let server = tally::Server::bind(config.validate().expect("config"))
        .await
        .expect("bind");
    let proxy = server.proxy_addr().expect("addr");
    tokio::spawn(server.run(std::future::pending()));
    proxy
}
