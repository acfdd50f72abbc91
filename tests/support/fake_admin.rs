//! A fake of the providers' organization usage and cost reports, as their API references
//! document them, for `tally reconcile`:
//! - OpenAI: `GET /v1/organization/usage/completions` (buckets of
//!   `organization.usage.completions.result`, `start_time` in Unix seconds) and
//!   `GET /v1/organization/costs` (`organization.costs.result` with `amount.value` in USD and
//!   a `line_item` of `"<model>, input"` / `"<model>, output"`), `Authorization: Bearer`;
//! - Anthropic: `GET /v1/organizations/usage_report/messages` (`uncached_input_tokens`,
//!   `cache_read_input_tokens`, `cache_creation.ephemeral_{5m,1h}_input_tokens`,
//!   `output_tokens`; RFC 3339 `starting_at`) and `GET /v1/organizations/cost_report`
//!   (`amount` in cents as a decimal string), `x-api-key` and `anthropic-version`.
//!
//! Every report pages one day per page (`has_more`, `next_page`), so a reader that stops at
//! the first page misses days. A request without the admin key gets the provider's 401.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// What the provider billed for one model on one day.
#[derive(Debug, Clone)]
pub struct Billed {
    /// `YYYY-MM-DD`.
    pub day: String,
    /// As the provider names it (often dated).
    pub model: String,
    pub requests: u64,
    /// Input tokens not read from or written to the cache.
    pub uncached_input: u64,
    pub cache_read: u64,
    pub cache_write: u64,
    pub output: u64,
    pub cost_usd: f64,
}

pub struct FakeAdmin {
    pub addr: SocketAddr,
    /// Paths and queries asked for, in order.
    pub asked: Arc<Mutex<Vec<String>>>,
    task: JoinHandle<()>,
}

impl Drop for FakeAdmin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub const ADMIN_KEY: &str = "sk-admin-fake-0123456789";

impl FakeAdmin {
    pub async fn start(billed: Vec<Billed>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let asked = Arc::new(Mutex::new(Vec::new()));
        let log = asked.clone();
        let billed = Arc::new(billed);
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (log, billed) = (log.clone(), billed.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let (log, billed) = (log.clone(), billed.clone());
                        async move { Ok::<_, Infallible>(handle(req, &log, &billed)) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Self { addr, asked, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

fn respond(status: StatusCode, v: Value) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(v.to_string())))
        .expect("response")
}

fn day_start(day: &str) -> i64 {
    chrono::NaiveDate::parse_from_str(day, "%Y-%m-%d")
        .expect("day")
        .and_hms_opt(0, 0, 0)
        .expect("midnight")
        .and_utc()
        .timestamp()
}

fn rfc3339(secs: i64) -> String {
    chrono::DateTime::from_timestamp(secs, 0)
        .expect("time")
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn handle(
    req: Request<Incoming>,
    log: &Mutex<Vec<String>>,
    billed: &[Billed],
) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or("").to_owned();
    log.lock().expect("lock").push(format!("{path}?{query}"));
    let header = |n: &str| {
        req.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    let anthropic = path.starts_with("/v1/organizations/");
    let authorized = if anthropic {
        header("x-api-key") == ADMIN_KEY && header("anthropic-version") == "2023-06-01"
    } else {
        header("authorization") == format!("Bearer {ADMIN_KEY}")
    };
    if !authorized {
        return if anthropic {
            respond(
                StatusCode::UNAUTHORIZED,
                json!({"type": "error", "error": {"type": "authentication_error", "message": "invalid x-api-key"}}),
            )
        } else {
            respond(
                StatusCode::UNAUTHORIZED,
                json!({"error": {"message": "Incorrect API key provided", "type": "invalid_request_error", "code": "invalid_api_key"}}),
            )
        };
    }
    // One day per page: the page token is the day's index.
    let days: Vec<&str> = {
        let mut d: Vec<&str> = billed.iter().map(|b| b.day.as_str()).collect();
        d.sort();
        d.dedup();
        d
    };
    let page: usize = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("page="))
        .map(|p| {
            percent_encoding::percent_decode_str(p)
                .decode_utf8_lossy()
                .into_owned()
        })
        .and_then(|p| p.strip_prefix("page_").map(str::to_owned))
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    let Some(day) = days.get(page) else {
        return respond(
            StatusCode::OK,
            json!({"object": "page", "data": [], "has_more": false, "next_page": null}),
        );
    };
    let start = day_start(day);
    let rows: Vec<&Billed> = billed.iter().filter(|b| b.day == *day).collect();
    let results: Vec<Value> = match path.as_str() {
        "/v1/organization/usage/completions" => rows
            .iter()
            .map(|b| {
                json!({"object": "organization.usage.completions.result",
                       "input_tokens": b.uncached_input + b.cache_read + b.cache_write,
                       "output_tokens": b.output, "input_cached_tokens": b.cache_read,
                       "input_audio_tokens": 0, "output_audio_tokens": 0,
                       "num_model_requests": b.requests, "project_id": null, "user_id": null,
                       "api_key_id": null, "model": b.model, "batch": null})
            })
            .collect(),
        "/v1/organization/costs" => rows
            .iter()
            .flat_map(|b| {
                ["input", "output"].map(|class| {
                    json!({"object": "organization.costs.result",
                           "amount": {"value": b.cost_usd / 2.0, "currency": "usd"},
                           "line_item": format!("{}, {class}", b.model), "project_id": null})
                })
            })
            .collect(),
        "/v1/organizations/usage_report/messages" => rows
            .iter()
            .map(|b| {
                json!({"uncached_input_tokens": b.uncached_input,
                       "cache_read_input_tokens": b.cache_read,
                       "cache_creation": {"ephemeral_1h_input_tokens": 0,
                                          "ephemeral_5m_input_tokens": b.cache_write},
                       "output_tokens": b.output,
                       "server_tool_use": {"web_search_requests": 0},
                       "api_key_id": null, "workspace_id": null, "model": b.model,
                       "service_tier": null, "context_window": null})
            })
            .collect(),
        "/v1/organizations/cost_report" => rows
            .iter()
            .map(|b| {
                json!({"currency": "USD", "amount": format!("{:.6}", b.cost_usd * 100.0),
                       "workspace_id": null, "description": format!("{} Usage - Input Tokens", b.model),
                       "cost_type": "tokens", "context_window": "0-200k", "model": b.model,
                       "service_tier": "standard", "token_type": "uncached_input_tokens"})
            })
            .collect(),
        _ => return respond(StatusCode::NOT_FOUND, json!({"error": {"message": "no such path"}})),
    };
    let bucket = if anthropic {
        json!({"starting_at": rfc3339(start), "ending_at": rfc3339(start + 86_400), "results": results})
    } else {
        json!({"object": "bucket", "start_time": start, "end_time": start + 86_400, "results": results})
    };
    let more = page + 1 < days.len();
    let next = more.then(|| format!("page_{}", page + 1));
    let mut v = json!({"data": [bucket], "has_more": more, "next_page": next});
    if !anthropic {
        v["object"] = json!("page");
    }
    respond(StatusCode::OK, v)
}
