//! A fake LLM provider on a real socket: OpenAI (chat completions, Responses, legacy
//! completions, embeddings) and Anthropic Messages, streaming and not, with deterministic
//! output and usage, and Google's Gemini API (`generateContent`, `streamGenerateContent` as SSE
//! with `alt=sse` and as a streamed JSON array without, `countTokens`), shaped as
//! ai.google.dev/api/generate-content documents it, and Claude on Vertex AI (`rawPredict`,
//! `streamRawPredict`), and AWS Bedrock's runtime ([`super::fake_bedrock`]). The only faked
//! component of the suite.
//!
//! Modes, chosen per request with the `x-fake-mode` header:
//! - `error<status>` (`error500`, `error429`, `error503`…), optionally `-ra<secs>` for a
//!   `Retry-After` (`error429-ra1`): an error in the provider's shape;
//! - `no-usage`: streams never carry usage, even when asked (like many compatible providers);
//! - `reset`: two events, then the connection is cut;
//! - `stall`: two events, then silence; `stall<n>` (`stall8`): `n` events, then silence;
//! - `linger`: every event, then the body stays open (a client that stops at the end event
//!   closes before the upstream does);
//! - `spaced`: stream events written as Python's `json.dumps` writes them (`", "` and `": "`),
//!   as Python-based upstreams and proxies do;
//! - `xai`: chat usage as xAI reports a reasoning model's, reasoning outside
//!   `completion_tokens` ([`XAI_USAGE`]);
//! - `gzip`: the answer gzip-compressed, JSON or event stream (every event written, then the
//!   whole body compressed, as one gzip member sent in 4 KiB pieces);
//! - `gzip-big`: an embeddings answer of [`BIG_EMBEDDINGS`] vectors (about 3.4 MB decoded),
//!   usage at the end, gzip-compressed;
//! - `echo-key`: a 401 whose message quotes the `Authorization` header and the `key` query
//!   parameter, as some upstreams do;
//! - `echo-key-stream`: a 200 stream whose error event quotes them;
//! - `empty204`, `empty200`: a 204, or a 200 with `Content-Length: 0`;
//! - `absurd`: chat usage of `u64::MAX` prompt tokens;
//! - `binary`: a non-JSON binary body;
//! - `big`: an event stream of `x-fake-bytes` bytes, generated as it is read;
//! - `content-filter`: Azure's 400 for a prompt its content filter refused (Azure answers
//!   otherwise carry all-safe `prompt_filter_results` and `content_filter_results`);
//! - `tools`: chat, Messages, Gemini and Converse answer with the two parallel calls of
//!   [`TOOL_CALLS`] in their own shapes; streams split each call's arguments across events as
//!   OpenAI, Anthropic and Converse do (Gemini sends each call whole).
//!
//! - `billing`: what else sets a price besides the token classes: OpenAI chat answers name
//!   `"service_tier": "flex"` (in every chunk of a stream), Anthropic's usage splits its cache
//!   writes into [`ANTHROPIC_1H_WRITES`] one-hour writes and the rest five-minute ones
//!   (`cache_creation`) and reports [`ANTHROPIC_SEARCHES`] web searches (`server_tool_use`,
//!   in `message_delta` for a stream, as the API sends them).
//!
//! Besides the providers' APIs: OpenAI's `/v1/moderations` (flags an input holding "violent",
//! in the documented answer shape), and a guardrail hook at `/guardrail/<mode>` speaking
//! Tally's hook protocol: `allow`, `block`, `slow` (answers after 3 s), `malformed`, `error`
//! (a 500), `block-if-injection` (blocks a text holding "ignore previous instructions").
//!
//! `x-fake-delay-ms` delays the response head; `x-fake-interval-ms` spaces stream events.
//! [`FakeUpstream::script`] queues modes for the next requests, whatever their headers say, so
//! two fakes can stand for a failing and a healthy provider behind one router.

use std::convert::Infallible;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

pub type Body = UnsyncBoxBody<Bytes, std::io::Error>;

/// Words the fake model always answers with.
pub const WORDS: [&str; 5] = ["Hello", " from", " the", " fake", " upstream."];

/// The calls the fake makes in `tools` mode: (call id, function, arguments as JSON text).
pub const TOOL_CALLS: [(&str, &str, &str); 2] = [
    ("call_paris", "get_weather", r#"{"city":"Paris"}"#),
    ("call_tokyo", "get_weather", r#"{"city":"Tokyo"}"#),
];

/// A call's arguments in the two pieces a stream sends them in.
pub fn argument_pieces(arguments: &str) -> [&str; 2] {
    let (a, b) = arguments.split_at(arguments.len() / 2);
    [a, b]
}

fn arguments_value(arguments: &str) -> Value {
    serde_json::from_str(arguments).expect("TOOL_CALLS hold JSON")
}

/// Usage the fake reports for OpenAI chat and legacy completions.
pub const OPENAI_USAGE: (u64, u64, u64, u64) = (21, 5, 4, 2); // prompt, completion, cached, reasoning
/// Usage the fake reports for Gemini: prompt (cached included), candidates, cached, thoughts.
pub const GEMINI_USAGE: (u64, u64, u64, u64) = (11, 5, 4, 3);
/// Usage the fake reports for the Responses API.
pub const RESPONSES_USAGE: (u64, u64, u64, u64) = (30, 9, 10, 3);
/// Usage the fake reports for Anthropic: input (uncached), cache write, cache read, output.
pub const ANTHROPIC_USAGE: (u64, u64, u64, u64) = (12, 100, 200, 9);
/// Of [`ANTHROPIC_USAGE`]'s cache writes, those `billing` mode reports as one-hour writes.
pub const ANTHROPIC_1H_WRITES: u64 = 40;
/// Web searches `billing` mode reports for Anthropic.
pub const ANTHROPIC_SEARCHES: u64 = 2;
/// Chat usage in `xai` mode: prompt, completion, reasoning, total (a grok-3-mini answer).
pub const XAI_USAGE: (u64, u64, u64, u64) = (12, 1, 290, 303);
/// Vectors in a `gzip-big` embeddings answer (1,536 floats each).
pub const BIG_EMBEDDINGS: usize = 200;
/// Prompt tokens the fake reports for embeddings.
pub const EMBEDDING_TOKENS: u64 = 8;

/// One request as the fake received it.
#[derive(Debug, Clone)]
pub struct Received {
    pub path_and_query: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub at: std::time::Instant,
}

pub struct FakeUpstream {
    pub addr: SocketAddr,
    pub received: Arc<Mutex<Vec<Received>>>,
    script: Arc<Mutex<std::collections::VecDeque<String>>>,
    task: JoinHandle<()>,
}

impl Drop for FakeUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeUpstream {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind fake upstream");
        let addr = listener.local_addr().expect("addr");
        let received = Arc::new(Mutex::new(Vec::new()));
        let script = Arc::new(Mutex::new(std::collections::VecDeque::new()));
        let log = received.clone();
        let queue = script.clone();
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let log = log.clone();
                let queue = queue.clone();
                conns.spawn(async move {
                    let svc = service_fn(move |req| {
                        let log = log.clone();
                        let scripted = queue.lock().expect("lock").pop_front();
                        async move { Ok::<_, Infallible>(handle(req, log, scripted).await) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
                while conns.try_join_next().is_some() {}
            }
        });
        Self {
            addr,
            received,
            script,
            task,
        }
    }

    /// The next requests get these modes, one each, in order (`""` for a normal answer).
    pub fn script(&self, modes: &[&str]) {
        let mut q = self.script.lock().expect("lock");
        q.extend(modes.iter().map(|m| (*m).to_owned()));
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn received(&self) -> Vec<Received> {
        self.received.lock().expect("lock").clone()
    }
}

pub fn full(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(
        Full::new(body.into())
            .map_err(|n| match n {})
            .boxed_unsync(),
    );
    *r.status_mut() = status;
    r.headers_mut()
        .insert("content-type", content_type.parse().expect("ct"));
    r
}

/// One Gemini answer. A stream repeats `usageMetadata` with the counts so far on every chunk,
/// as Gemini does; the last chunk has the `finishReason` and the final counts.
fn gemini_response(
    path: &str,
    query: &str,
    mode: &str,
    interval: Duration,
    text: &str,
) -> Response<Body> {
    let (model, method) = path
        .rsplit_once("/models/")
        .and_then(|(_, m)| m.split_once(':'))
        .unwrap_or(("gemini-2.0-flash", "generateContent"));
    let (prompt, candidates, cached, thoughts) = GEMINI_USAGE;
    let chunk = |text: &str, out: Option<u64>, finish: bool| {
        let mut candidate =
            json!({"content": {"parts": [{"text": text}], "role": "model"}, "index": 0});
        let mut usage = json!({"promptTokenCount": prompt, "cachedContentTokenCount": cached,
            "totalTokenCount": prompt});
        if let Some(out) = out {
            usage["candidatesTokenCount"] = json!(out);
            usage["totalTokenCount"] = json!(prompt + out);
        }
        if finish {
            candidate["finishReason"] = json!("STOP");
            usage["thoughtsTokenCount"] = json!(thoughts);
            usage["totalTokenCount"] = json!(prompt + candidates + thoughts);
        }
        json!({"candidates": [candidate], "usageMetadata": usage,
            "modelVersion": model, "responseId": "gemini-fake-response"})
    };
    if mode == "tools" && method.ends_with("enerateContent") {
        // Gemini sends no call ids; each call is one part, whole.
        let call = |(_, name, args): (&str, &str, &str)| json!({"functionCall": {"name": name, "args": arguments_value(args)}});
        let usage = json!({"promptTokenCount": prompt, "cachedContentTokenCount": cached,
            "candidatesTokenCount": candidates, "thoughtsTokenCount": thoughts,
            "totalTokenCount": prompt + candidates + thoughts});
        let answer = |parts: Vec<Value>, last: bool| {
            let mut v = json!({"candidates": [{"content": {"parts": parts, "role": "model"}, "index": 0}],
                "modelVersion": model, "responseId": "gemini-fake-tools"});
            if last {
                v["candidates"][0]["finishReason"] = json!("STOP");
                v["usageMetadata"] = usage.clone();
            }
            v
        };
        if method == "generateContent" {
            return json_response(answer(TOOL_CALLS.map(call).to_vec(), true));
        }
        let steps = TOOL_CALLS
            .iter()
            .enumerate()
            .map(|(i, c)| Step::Data(format!("data: {}\r\n\r\n", answer(vec![call(*c)], i == 1))))
            .collect();
        return sse(steps, interval);
    }
    match method {
        "countTokens" => json_response(json!({"totalTokens": prompt})),
        // The Gemini API reports no usage for embeddings (ai.google.dev/api/embeddings).
        "embedContent" => json_response(json!({"embedding": {"values": [0.1, -0.2, 0.3]}})),
        "batchEmbedContents" => json_response(json!({"embeddings": [
            {"values": [0.1, -0.2, 0.3]}, {"values": [0.3, 0.2, -0.1]}]})),
        "generateContent" => json_response(chunk(text, Some(candidates), true)),
        "streamGenerateContent" => {
            let n = WORDS.len();
            let chunks: Vec<Value> = WORDS
                .iter()
                .enumerate()
                .map(|(i, w)| {
                    let last = i + 1 == n;
                    chunk(w, last.then_some(candidates), last)
                })
                .collect();
            let sse_framing = query.split('&').any(|kv| kv == "alt=sse");
            let mut steps: Vec<Step> = if sse_framing {
                chunks
                    .iter()
                    .map(|c| Step::Data(format!("data: {c}\r\n\r\n")))
                    .collect()
            } else {
                let mut steps = vec![Step::Data("[".to_owned())];
                for (i, c) in chunks.iter().enumerate() {
                    let sep = if i == 0 { "" } else { ",\r\n" };
                    steps.push(Step::Data(format!("{sep}{c}")));
                }
                steps.push(Step::Data("]".to_owned()));
                steps
            };
            if mode == "reset" {
                steps.truncate(2);
                steps.push(Step::Reset);
            }
            let mut r = sse(steps, interval);
            if !sse_framing {
                r.headers_mut()
                    .insert("content-type", "application/json; charset=UTF-8".parse().expect("ct"));
            }
            r
        }
        other => full(
            StatusCode::NOT_FOUND,
            "application/json",
            json!({"error": {"code": 404, "message": format!("no method {other}"), "status": "NOT_FOUND"}})
                .to_string(),
        ),
    }
}

fn json_response(v: Value) -> Response<Body> {
    full(StatusCode::OK, "application/json", v.to_string())
}

enum Step {
    Data(String),
    Reset,
    Stall,
}

fn sse(events: Vec<Step>, interval: Duration) -> Response<Body> {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(4);
    tokio::spawn(async move {
        for (i, e) in events.into_iter().enumerate() {
            if i > 0 && !interval.is_zero() {
                tokio::time::sleep(interval).await;
            }
            match e {
                Step::Data(s) => {
                    if tx.send(Ok(Frame::data(Bytes::from(s)))).await.is_err() {
                        return;
                    }
                }
                Step::Reset => {
                    let _ = tx
                        .send(Err(std::io::Error::new(
                            std::io::ErrorKind::ConnectionReset,
                            "fake reset",
                        )))
                        .await;
                    return;
                }
                Step::Stall => {
                    tokio::time::sleep(Duration::from_secs(60)).await;
                    return;
                }
            }
        }
    });
    let stream =
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|x| (x, rx)) });
    let mut r = Response::new(StreamBody::new(stream).boxed_unsync());
    r.headers_mut().insert(
        "content-type",
        "text/event-stream; charset=utf-8".parse().expect("ct"),
    );
    r.headers_mut()
        .insert("cache-control", "no-cache".parse().expect("cc"));
    r
}

fn contains_bytes(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// A binary stream (Bedrock's event stream): each frame its own chunk, then the end.
pub fn sse_bytes(frames: Vec<Vec<u8>>, content_type: &str) -> Response<Body> {
    let chunks = frames
        .into_iter()
        .map(|f| Ok::<_, std::io::Error>(Frame::data(Bytes::from(f))));
    let mut r = Response::new(StreamBody::new(futures_util::stream::iter(chunks)).boxed_unsync());
    r.headers_mut()
        .insert("content-type", content_type.parse().expect("ct"));
    r
}

/// An OpenAI-style event stream of about `total` bytes, generated as it is read (the fake
/// itself holds one 16 KiB event), ending with usage and `[DONE]`.
fn big_stream(total: usize) -> Response<Body> {
    let filler = "x".repeat(16 * 1024 - 80);
    let event = Bytes::from(format!(
        "data: {{\"choices\":[{{\"delta\":{{\"content\":\"{filler}\"}}}}],\"usage\":null}}\n\n"
    ));
    let n = total / event.len();
    let end =
        Bytes::from(data(json!({"choices": [], "usage": openai_usage("")})) + "data: [DONE]\n\n");
    let stream = futures_util::stream::iter(
        std::iter::repeat_n(event, n)
            .chain(std::iter::once(end))
            .map(|b| Ok::<_, std::io::Error>(Frame::data(b))),
    );
    let mut r = Response::new(StreamBody::new(stream).boxed_unsync());
    r.headers_mut()
        .insert("content-type", "text/event-stream".parse().expect("ct"));
    r
}

fn data(v: Value) -> String {
    format!("data: {v}\n\n")
}

fn event(name: &str, v: Value) -> String {
    format!("event: {name}\ndata: {v}\n\n")
}

fn openai_usage(mode: &str) -> Value {
    if mode == "absurd" {
        return json!({"prompt_tokens": u64::MAX, "completion_tokens": 5, "total_tokens": u64::MAX});
    }
    if mode == "xai" {
        let (p, c, reasoning, total) = XAI_USAGE;
        return json!({"prompt_tokens": p, "completion_tokens": c, "total_tokens": total,
               "completion_tokens_details": {"reasoning_tokens": reasoning}});
    }
    let (p, c, cached, reasoning) = OPENAI_USAGE;
    json!({"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c,
           "prompt_tokens_details": {"cached_tokens": cached},
           "completion_tokens_details": {"reasoning_tokens": reasoning}})
}

/// `v` as Python's `json.dumps(v)` writes it: `", "` between items, `": "` after keys.
fn python_dumps(v: &Value) -> String {
    match v {
        Value::Object(m) => {
            let items: Vec<String> = m
                .iter()
                .map(|(k, v)| format!("{}: {}", Value::String(k.clone()), python_dumps(v)))
                .collect();
            format!("{{{}}}", items.join(", "))
        }
        Value::Array(a) => {
            let items: Vec<String> = a.iter().map(python_dumps).collect();
            format!("[{}]", items.join(", "))
        }
        other => other.to_string(),
    }
}

/// Rewrites every JSON `data:` line of an event in Python's spacing.
fn spaced(event: String) -> String {
    let mut out = String::with_capacity(event.len() + 32);
    for line in event.split_inclusive('\n') {
        match line
            .strip_prefix("data: ")
            .and_then(|d| serde_json::from_str::<Value>(d.trim_end()).ok())
        {
            Some(v) => {
                out.push_str("data: ");
                out.push_str(&python_dumps(&v));
                out.push('\n');
            }
            None => out.push_str(line),
        }
    }
    out
}

fn response_model(model: &str) -> String {
    format!("{model}-2024-08-06")
}

/// Ends the event list according to the failure mode.
fn tail(mode: &str, mut events: Vec<Step>) -> Vec<Step> {
    match mode {
        "reset" => {
            events.truncate(2);
            events.push(Step::Reset);
        }
        "linger" => events.push(Step::Stall),
        "spaced" => {
            events = events
                .into_iter()
                .map(|e| match e {
                    Step::Data(s) => Step::Data(spaced(s)),
                    other => other,
                })
                .collect();
        }
        m if m.starts_with("stall") => {
            events.truncate(m["stall".len()..].parse().unwrap_or(2));
            events.push(Step::Stall);
        }
        _ => {}
    }
    events
}

async fn handle(
    req: Request<Incoming>,
    log: Arc<Mutex<Vec<Received>>>,
    scripted: Option<String>,
) -> Response<Body> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    log.lock().expect("lock").push(Received {
        path_and_query: parts
            .uri
            .path_and_query()
            .map(|p| p.to_string())
            .unwrap_or_default(),
        headers: parts.headers.clone(),
        body: body.clone(),
        at: std::time::Instant::now(),
    });
    let header = |name: &str| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    let mode = scripted.unwrap_or_else(|| header("x-fake-mode"));
    let ms = |name: &str| Duration::from_millis(header(name).parse().unwrap_or(0));
    tokio::time::sleep(ms("x-fake-delay-ms")).await;
    let interval = ms("x-fake-interval-ms");
    let path = parts.uri.path().to_owned();
    let anthropic = path.ends_with("/v1/messages");
    if super::fake_bedrock::serves(&path) {
        return super::fake_bedrock::respond(&parts, &body, &mode);
    }
    if super::fake_google_auth::serves(&path) {
        return super::fake_google_auth::token(&parts, &body);
    }
    if path == "/v1/moderations" || path.starts_with("/guardrail/") {
        return guardrail(&path, &body).await;
    }
    if path.contains("/projects/") {
        if let Some(refused) = super::fake_google_auth::refuse_expired(&parts) {
            return refused;
        }
    }

    match mode.as_str() {
        "big" => return big_stream(header("x-fake-bytes").parse().unwrap_or(0)),
        m if m.starts_with("error") => {
            let (code, retry_after) = match m["error".len()..].split_once("-ra") {
                Some((c, ra)) => (c, Some(ra)),
                None => (&m["error".len()..], None),
            };
            let status = code
                .parse::<u16>()
                .ok()
                .and_then(|c| StatusCode::from_u16(c).ok())
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let v = if anthropic {
                json!({"type": "error", "error": {"type": "overloaded_error", "message": "Fake overload"}})
            } else if path.contains("/models/") && path.contains(':') {
                // Google's shape: the HTTP code, a message and the canonical status name.
                json!({"error": {"code": status.as_u16(), "message": "Fake failure", "status": "RESOURCE_EXHAUSTED"}})
            } else {
                json!({"error": {"message": "Fake failure", "type": "server_error", "param": null, "code": null}})
            };
            let mut r = full(status, "application/json", v.to_string());
            if let Some(ra) = retry_after {
                r.headers_mut()
                    .insert("retry-after", ra.parse().expect("retry-after"));
            }
            return r;
        }
        "binary" => {
            return full(
                StatusCode::OK,
                "application/octet-stream",
                Bytes::from_static(b"\x00\xff\xfe binary \x89PNG"),
            )
        }
        "echo-key" | "echo-key-stream" => {
            let quoted = format!(
                "Incorrect API key provided: {} (key param {:?})",
                header("authorization"),
                parts.uri.query().unwrap_or("")
            );
            let v = json!({"error": {"message": quoted, "type": "invalid_request_error", "code": "invalid_api_key"}});
            if mode == "echo-key" {
                return full(StatusCode::UNAUTHORIZED, "application/json", v.to_string());
            }
            return sse(
                vec![Step::Data(data(v)), Step::Data("data: [DONE]\n\n".into())],
                Duration::ZERO,
            );
        }
        "empty204" => return full(StatusCode::NO_CONTENT, "application/json", Bytes::new()),
        "empty200" => return full(StatusCode::OK, "application/json", Bytes::new()),
        "gzip-big" => {
            let vector: Vec<f64> = (0..1536).map(|i| f64::from(i) * 0.000_731 - 0.5).collect();
            let data: Vec<Value> = (0..BIG_EMBEDDINGS)
                .map(|i| json!({"object": "embedding", "index": i, "embedding": vector}))
                .collect();
            let v = json!({"object": "list", "data": data, "model": "text-embedding-3-small",
                "usage": {"prompt_tokens": EMBEDDING_TOKENS * 1000, "total_tokens": EMBEDDING_TOKENS * 1000}});
            let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            enc.write_all(v.to_string().as_bytes()).expect("gzip");
            let mut r = full(
                StatusCode::OK,
                "application/json",
                enc.finish().expect("gzip"),
            );
            r.headers_mut()
                .insert("content-encoding", "gzip".parse().expect("ce"));
            return r;
        }
        _ => {}
    }

    let req_json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let model = req_json
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or("gpt-4o")
        .to_owned();
    let stream = req_json
        .get("stream")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let include_usage = req_json
        .pointer("/stream_options/include_usage")
        .and_then(Value::as_bool)
        .unwrap_or(false)
        && mode != "no-usage";
    // "echo": a chat answer that repeats the last message, for tests of what is stored of a
    // response.
    let echoed = (mode == "echo").then(|| {
        req_json
            .pointer("/messages")
            .and_then(Value::as_array)
            .and_then(|m| m.last())
            .and_then(|m| m.get("content"))
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned()
    });
    let text: String = echoed.clone().unwrap_or_else(|| WORDS.concat());

    let mut resp = if path.contains("/publishers/anthropic/models/") {
        // Claude on Vertex AI: Anthropic's Messages, the model and the stream flag in the path.
        let (model, method) = path
            .rsplit_once("/models/")
            .and_then(|(_, m)| m.split_once(':'))
            .unwrap_or(("claude-sonnet-4-5", "rawPredict"));
        anthropic_response(
            model,
            method == "streamRawPredict",
            &mode,
            interval,
            &WORDS.concat(),
        )
    } else if path.contains("/models/") && path.contains(':') {
        gemini_response(
            &path,
            parts.uri.query().unwrap_or(""),
            &mode,
            interval,
            &text,
        )
    } else if anthropic {
        anthropic_response(&model, stream, &mode, interval, &text)
    } else if path.ends_with("/chat/completions") {
        let azure = path.contains("/openai/deployments/");
        if azure && mode == "content-filter" {
            // Azure refusing a prompt, as its content-filter documentation shows.
            return full(StatusCode::BAD_REQUEST, "application/json", json!({"error": {
                "message": "The response was filtered due to the prompt triggering Azure OpenAI's content management policy.",
                "type": null, "param": "prompt", "code": "content_filter", "status": 400,
                "innererror": {"code": "ResponsibleAIPolicyViolation", "content_filter_result": {
                    "hate": {"filtered": false, "severity": "safe"}, "jailbreak": {"filtered": false, "detected": false},
                    "self_harm": {"filtered": false, "severity": "safe"}, "sexual": {"filtered": false, "severity": "safe"},
                    "violence": {"filtered": true, "severity": "medium"}}}}}).to_string());
        }
        if mode == "tools" {
            return openai_tool_calls(&model, stream, include_usage);
        }
        if !stream {
            let mut v = json!({
                "id": "chatcmpl-fake", "object": "chat.completion", "created": 1700000000,
                "model": response_model(&model),
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                "usage": openai_usage(&mode)});
            if mode == "billing" {
                v["service_tier"] = json!("flex");
            }
            if azure {
                let safe = json!({"hate": {"filtered": false, "severity": "safe"},
                    "self_harm": {"filtered": false, "severity": "safe"},
                    "sexual": {"filtered": false, "severity": "safe"},
                    "violence": {"filtered": false, "severity": "safe"}});
                v["choices"][0]["content_filter_results"] = safe.clone();
                v["prompt_filter_results"] =
                    json!([{"prompt_index": 0, "content_filter_results": safe}]);
            }
            json_response(v)
        } else {
            // With include_usage, OpenAI adds "usage":null to every chunk and a final
            // usage-only chunk; without it, neither.
            let chunk = |delta: Value, finish: Value| {
                let mut v = json!({"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1700000000,
                    "model": response_model(&model), "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]});
                if include_usage {
                    v["usage"] = Value::Null;
                }
                if mode == "billing" {
                    v["service_tier"] = json!("flex");
                }
                data(v)
            };
            let mut events = vec![Step::Data(chunk(
                json!({"role": "assistant", "content": ""}),
                Value::Null,
            ))];
            match &echoed {
                Some(t) => events.push(Step::Data(chunk(json!({"content": t}), Value::Null))),
                None => events.extend(
                    WORDS
                        .iter()
                        .map(|w| Step::Data(chunk(json!({"content": w}), Value::Null))),
                ),
            }
            events.push(Step::Data(chunk(json!({}), json!("stop"))));
            if include_usage {
                events.push(Step::Data(data(json!({"id": "chatcmpl-fake", "object": "chat.completion.chunk",
                    "created": 1700000000, "model": response_model(&model), "choices": [], "usage": openai_usage(&mode)}))));
            }
            events.push(Step::Data("data: [DONE]\n\n".into()));
            sse(tail(&mode, events), interval)
        }
    } else if let Some(id) = path
        .rsplit_once("/responses/")
        .map(|(_, id)| id.to_owned())
        .filter(|_| parts.method == http::Method::GET)
    {
        // Retrieving a response (a background one is done when it is first asked for).
        let (p, c, cached, reasoning) = RESPONSES_USAGE;
        json_response(
            json!({"id": id, "object": "response", "model": "gpt-4o-2024-08-06",
            "status": "completed", "background": id.starts_with("resp_bg"),
            "output": [{"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": text}]}],
            "usage": {"input_tokens": p, "input_tokens_details": {"cached_tokens": cached},
                "output_tokens": c, "output_tokens_details": {"reasoning_tokens": reasoning}, "total_tokens": p + c}}),
        )
    } else if path.ends_with("/responses")
        && req_json.get("background").and_then(Value::as_bool) == Some(true)
        && !stream
    {
        json_response(
            json!({"id": "resp_bg_fake", "object": "response", "model": response_model(&model),
            "status": "queued", "background": true, "output": [], "usage": null}),
        )
    } else if path.ends_with("/responses") {
        let (p, c, cached, reasoning) = RESPONSES_USAGE;
        let usage = json!({"input_tokens": p, "input_tokens_details": {"cached_tokens": cached},
            "output_tokens": c, "output_tokens_details": {"reasoning_tokens": reasoning}, "total_tokens": p + c});
        let done = json!({"id": "resp_fake", "object": "response", "model": response_model(&model), "status": "completed",
            "output": [{"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": text}]}],
            "usage": usage});
        if !stream {
            json_response(done)
        } else {
            let mut events = vec![Step::Data(event(
                "response.created",
                json!({"type": "response.created",
                "response": {"id": "resp_fake", "object": "response", "model": response_model(&model), "status": "in_progress", "usage": null}}),
            ))];
            events.extend(WORDS.iter().map(|w| {
                Step::Data(event(
                    "response.output_text.delta",
                    json!({"type": "response.output_text.delta", "delta": w}),
                ))
            }));
            events.push(Step::Data(event(
                "response.completed",
                json!({"type": "response.completed", "response": done}),
            )));
            sse(tail(&mode, events), interval)
        }
    } else if path.ends_with("/completions") {
        let usage = json!({"prompt_tokens": OPENAI_USAGE.0, "completion_tokens": OPENAI_USAGE.1,
            "total_tokens": OPENAI_USAGE.0 + OPENAI_USAGE.1});
        if !stream {
            json_response(
                json!({"id": "cmpl-fake", "object": "text_completion", "model": model,
                "choices": [{"text": text, "index": 0, "finish_reason": "stop"}], "usage": usage}),
            )
        } else {
            let chunk = |t: &str| {
                let mut v = json!({"id": "cmpl-fake", "object": "text_completion", "model": model,
                    "choices": [{"text": t, "index": 0, "finish_reason": null}]});
                if include_usage {
                    v["usage"] = Value::Null;
                }
                data(v)
            };
            let mut events: Vec<Step> = WORDS.iter().map(|w| Step::Data(chunk(w))).collect();
            if include_usage {
                events.push(Step::Data(data(
                    json!({"id": "cmpl-fake", "object": "text_completion", "model": model,
                    "choices": [], "usage": usage}),
                )));
            }
            events.push(Step::Data("data: [DONE]\n\n".into()));
            sse(tail(&mode, events), interval)
        }
    } else if path.ends_with("/embeddings") {
        json_response(
            json!({"object": "list", "data": [{"object": "embedding", "index": 0, "embedding": [0.1, -0.2, 0.3]}],
            "model": model, "usage": {"prompt_tokens": EMBEDDING_TOKENS, "total_tokens": EMBEDDING_TOKENS}}),
        )
    } else if path.ends_with("/images/generations") {
        // As platform.openai.com/docs/api-reference/images documents the answer: dall-e
        // models return one URL per image; gpt-image-1 base64 images and token usage.
        let n = req_json.get("n").and_then(Value::as_u64).unwrap_or(1);
        if model.starts_with("gpt-image") {
            json_response(
                json!({"created": 1700000000, "size": "1024x1024", "quality": "medium",
                "data": (0..n).map(|_| json!({"b64_json": "iVBORw0KGgo="})).collect::<Vec<_>>(),
                "usage": {"input_tokens": 12, "input_tokens_details": {"text_tokens": 12, "image_tokens": 0},
                    "output_tokens": 1056 * n, "total_tokens": 12 + 1056 * n}}),
            )
        } else {
            json_response(json!({"created": 1700000000,
                "data": (0..n).map(|i| json!({"url": format!("https://images.fake/{i}.png"),
                    "revised_prompt": "a cat"})).collect::<Vec<_>>()}))
        }
    } else if path.ends_with("/audio/speech") {
        full(
            StatusCode::OK,
            "audio/mpeg",
            Bytes::from_static(b"ID3\x04\x00\x00\x00\x00\x00\x00\xff\xfb\x90\x00 fake mp3"),
        )
    } else if path.ends_with("/audio/transcriptions") || path.ends_with("/audio/translations") {
        // whisper-1's plain `json` answer is the text alone; `verbose_json` adds the duration.
        if contains_bytes(&body, b"verbose_json") {
            json_response(
                json!({"task": "transcribe", "language": "english", "duration": 4.5,
                "text": "Hello from the fake upstream.", "segments": []}),
            )
        } else {
            json_response(json!({"text": "Hello from the fake upstream, five words and more."}))
        }
    } else if path.ends_with("/moderations") {
        json_response(
            json!({"id": "modr-fake", "model": "omni-moderation-2024-09-26",
            "results": [{"flagged": false, "categories": {"violence": false}, "category_scores": {"violence": 0.0001}}]}),
        )
    } else if path.ends_with("/models") {
        json_response(json!({"object": "list", "data": [{"id": "gpt-4o", "object": "model"}]}))
    } else {
        full(
            StatusCode::NOT_FOUND,
            "application/json",
            json!({"error": {"message": format!("no route {path}")}}).to_string(),
        )
    };

    if mode == "gzip" {
        let content_type = resp
            .headers()
            .get("content-type")
            .cloned()
            .unwrap_or_else(|| "application/json".parse().expect("ct"));
        let plain = resp
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(&plain).expect("gzip");
        let gz = Bytes::from(enc.finish().expect("gzip"));
        let pieces: Vec<Bytes> = (0..gz.len())
            .step_by(4096)
            .map(|i| gz.slice(i..(i + 4096).min(gz.len())))
            .collect();
        let stream = futures_util::stream::iter(
            pieces
                .into_iter()
                .map(|b| Ok::<_, std::io::Error>(Frame::data(b))),
        );
        resp = Response::new(StreamBody::new(stream).boxed_unsync());
        resp.headers_mut().insert("content-type", content_type);
        resp.headers_mut()
            .insert("content-encoding", "gzip".parse().expect("ce"));
    }
    let id_header = if anthropic {
        "request-id"
    } else {
        "x-request-id"
    };
    resp.headers_mut()
        .insert(id_header, "req_fake_123".parse().expect("id"));
    resp.headers_mut()
        .insert("x-fake-upstream", "1".parse().expect("marker"));
    resp
}

/// A chat completion calling [`TOOL_CALLS`], as platform.openai.com documents function calling:
/// a stream opens each call with its id and name and sends the arguments in pieces.
fn openai_tool_calls(model: &str, stream: bool, include_usage: bool) -> Response<Body> {
    let model = response_model(model);
    if !stream {
        let calls: Vec<Value> = TOOL_CALLS
            .iter()
            .map(|(id, name, args)| json!({"id": id, "type": "function", "function": {"name": name, "arguments": args}}))
            .collect();
        return json_response(
            json!({"id": "chatcmpl-tools", "object": "chat.completion", "created": 1700000000,
            "model": model, "choices": [{"index": 0, "message": {"role": "assistant", "content": null,
            "tool_calls": calls, "refusal": null}, "finish_reason": "tool_calls"}], "usage": openai_usage("")}),
        );
    }
    let chunk = |delta: Value, finish: Value| {
        let mut v = json!({"id": "chatcmpl-tools", "object": "chat.completion.chunk", "created": 1700000000,
            "model": model, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]});
        if include_usage {
            v["usage"] = Value::Null;
        }
        Step::Data(data(v))
    };
    let mut events = Vec::new();
    for (i, (id, name, args)) in TOOL_CALLS.iter().enumerate() {
        let mut open = json!({"tool_calls": [{"index": i, "id": id, "type": "function",
            "function": {"name": name, "arguments": ""}}]});
        if i == 0 {
            open["role"] = json!("assistant");
            open["content"] = Value::Null;
        }
        events.push(chunk(open, Value::Null));
        for piece in argument_pieces(args) {
            events.push(chunk(
                json!({"tool_calls": [{"index": i, "function": {"arguments": piece}}]}),
                Value::Null,
            ));
        }
    }
    events.push(chunk(json!({}), json!("tool_calls")));
    if include_usage {
        events.push(Step::Data(data(
            json!({"id": "chatcmpl-tools", "object": "chat.completion.chunk",
            "created": 1700000000, "model": model, "choices": [], "usage": openai_usage("")}),
        )));
    }
    events.push(Step::Data("data: [DONE]\n\n".into()));
    sse(events, Duration::ZERO)
}

/// A Messages answer calling [`TOOL_CALLS`], as docs.claude.com documents tool use: a stream
/// opens a `tool_use` block per call and sends its input as `input_json_delta` pieces.
fn anthropic_tool_calls(model: &str, stream: bool) -> Response<Body> {
    let (input, cache_write, cache_read, output) = ANTHROPIC_USAGE;
    let usage = json!({"input_tokens": input, "cache_creation_input_tokens": cache_write,
        "cache_read_input_tokens": cache_read, "output_tokens": output});
    if !stream {
        let blocks: Vec<Value> = TOOL_CALLS
            .iter()
            .map(|(id, name, args)| json!({"type": "tool_use", "id": id, "name": name, "input": arguments_value(args)}))
            .collect();
        return json_response(
            json!({"id": "msg_tools", "type": "message", "role": "assistant",
            "model": model, "content": blocks, "stop_reason": "tool_use", "stop_sequence": null, "usage": usage}),
        );
    }
    let mut start_usage = usage.clone();
    start_usage["output_tokens"] = json!(1);
    let mut events = vec![Step::Data(event(
        "message_start",
        json!({"type": "message_start", "message": {"id": "msg_tools", "type": "message",
            "role": "assistant", "model": model, "content": [], "stop_reason": null,
            "stop_sequence": null, "usage": start_usage}}),
    ))];
    for (i, (id, name, args)) in TOOL_CALLS.iter().enumerate() {
        events.push(Step::Data(event("content_block_start", json!({"type": "content_block_start",
            "index": i, "content_block": {"type": "tool_use", "id": id, "name": name, "input": {}}}))));
        for piece in std::iter::once("").chain(argument_pieces(args)) {
            events.push(Step::Data(event(
                "content_block_delta",
                json!({"type": "content_block_delta",
                "index": i, "delta": {"type": "input_json_delta", "partial_json": piece}}),
            )));
        }
        events.push(Step::Data(event(
            "content_block_stop",
            json!({"type": "content_block_stop", "index": i}),
        )));
    }
    events.push(Step::Data(event("message_delta", json!({"type": "message_delta",
        "delta": {"stop_reason": "tool_use", "stop_sequence": null}, "usage": {"output_tokens": output}}))));
    events.push(Step::Data(event(
        "message_stop",
        json!({"type": "message_stop"}),
    )));
    sse(events, Duration::ZERO)
}

fn anthropic_response(
    model: &str,
    stream: bool,
    mode: &str,
    interval: Duration,
    text: &str,
) -> Response<Body> {
    if mode == "tools" {
        return anthropic_tool_calls(model, stream);
    }
    let (input, cache_write, cache_read, output) = ANTHROPIC_USAGE;
    let billing = mode == "billing";
    let mut usage = json!({"input_tokens": input, "cache_creation_input_tokens": cache_write,
                           "cache_read_input_tokens": cache_read, "output_tokens": output});
    let mut final_usage = json!({"output_tokens": output});
    if billing {
        usage["cache_creation"] = json!({"ephemeral_5m_input_tokens": cache_write - ANTHROPIC_1H_WRITES,
                                         "ephemeral_1h_input_tokens": ANTHROPIC_1H_WRITES});
        usage["service_tier"] = json!("standard");
        usage["server_tool_use"] = json!({"web_search_requests": ANTHROPIC_SEARCHES});
        final_usage["server_tool_use"] = json!({"web_search_requests": ANTHROPIC_SEARCHES});
    }
    if !stream {
        return json_response(
            json!({"id": "msg_fake", "type": "message", "role": "assistant", "model": model,
            "content": [{"type": "text", "text": text}], "stop_reason": "end_turn", "stop_sequence": null,
            "usage": usage}),
        );
    }
    let mut start_usage = usage;
    start_usage["output_tokens"] = json!(1);
    if let Some(u) = start_usage.as_object_mut() {
        u.remove("server_tool_use");
    }
    let mut events = vec![
        Step::Data(event(
            "message_start",
            json!({"type": "message_start", "message": {"id": "msg_fake", "type": "message",
            "role": "assistant", "model": model, "content": [], "stop_reason": null, "stop_sequence": null,
            "usage": start_usage}}),
        )),
        Step::Data(event(
            "content_block_start",
            json!({"type": "content_block_start", "index": 0,
            "content_block": {"type": "text", "text": ""}}),
        )),
        Step::Data(event("ping", json!({"type": "ping"}))),
    ];
    events.extend(WORDS.iter().map(|w| {
        Step::Data(event(
            "content_block_delta",
            json!({"type": "content_block_delta",
        "index": 0, "delta": {"type": "text_delta", "text": w}}),
        ))
    }));
    events.push(Step::Data(event(
        "content_block_stop",
        json!({"type": "content_block_stop", "index": 0}),
    )));
    events.push(Step::Data(event(
        "message_delta",
        json!({"type": "message_delta",
        "delta": {"stop_reason": "end_turn", "stop_sequence": null}, "usage": final_usage}),
    )));
    events.push(Step::Data(event(
        "message_stop",
        json!({"type": "message_stop"}),
    )));
    sse(tail(mode, events), interval)
}

/// OpenAI's moderation endpoint and a guardrail hook; see the module docs.
async fn guardrail(path: &str, body: &[u8]) -> Response<Body> {
    let req: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let json_response =
        |status: StatusCode, v: Value| full(status, "application/json", v.to_string());
    if path == "/v1/moderations" {
        let input = req["input"].as_str().unwrap_or("");
        let flagged = input.contains("violent");
        return json_response(
            StatusCode::OK,
            json!({"id": "modr-fake", "model": req["model"], "results": [{
                "flagged": flagged,
                "categories": {"violence": flagged, "hate": false, "self-harm": false},
                "category_scores": {"violence": if flagged { 0.97 } else { 0.001 }, "hate": 0.0001, "self-harm": 0.0001}
            }]}),
        );
    }
    let text = req["text"].as_str().unwrap_or("");
    match &path["/guardrail/".len()..] {
        "allow" => json_response(StatusCode::OK, json!({"action": "allow"})),
        "block" => json_response(
            StatusCode::OK,
            json!({"action": "block", "reason": "blocked by the test hook"}),
        ),
        "block-if-injection" if text.contains("ignore previous instructions") => json_response(
            StatusCode::OK,
            json!({"action": "block", "reason": "prompt injection"}),
        ),
        "block-if-injection" => json_response(StatusCode::OK, json!({"action": "allow"})),
        "slow" => {
            tokio::time::sleep(Duration::from_secs(3)).await;
            json_response(StatusCode::OK, json!({"action": "allow"}))
        }
        "malformed" => json_response(StatusCode::OK, json!({"verdict": "fine"})),
        _ => json_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            json!({"error": "hook down"}),
        ),
    }
}
