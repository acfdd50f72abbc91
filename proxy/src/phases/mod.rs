//! The request path, as named phases over one per-request context.
//!
//! [`handle`] is the whole life of a request; reading [`run`] tells you every step and where a
//! new one goes. Each phase is a function in its own module (or, for an optional stage, in
//! `stages/`) that takes the [`Ctx`] and returns `Result<_, Refusal>`: a phase that stops the
//! request says why in a [`Refusal`], and [`respond::respond`] renders and records every
//! refusal at one exit. Once a request is let through, the response body goes to the client
//! through the tee (`body::TeeBody`), and its record is finished by the exchange
//! (`exchange.rs`), which shows it to the stages that asked (`StageHook`).
//!
//! | phase | module | decides |
//! |---|---|---|
//! | route | [`route::route`] | the API the client speaks: a provider or router by path, its wire format, the path to forward |
//! | tags | [`tags`] | who and what the request is for (`Tally-*` headers) |
//! | body head | [`request_body::read`] | the bounded body head; model, stream flag, user, read as the upstream will; an unreadable JSON body is refused where budgets or limits apply |
//! | destination | [`route::destination`] | who serves it: the path's provider, a router (`Tally-Router`, a model alias), or on the unified API the body's `provider/model` |
//! | authenticate | [`authenticate::authenticate`] | the caller's Tally key: checked, its allow-lists applied, and taken off the request |
//! | privacy guard | [`crate::stages::guard::check`] | a blocking detector's finding refuses; a masking one's is replaced before forwarding |
//! | budgets | [`crate::stages::budget::enforce`] | an exhausted enforcing budget refuses |
//! | rate limits | [`crate::stages::ratelimit::admit`] | a policy over its limit refuses |
//! | guardrails | [`crate::stages::guardrail::check`] | external hooks (moderation, a classifier) allow or block; a failed hook fails open or closed |
//! | cache | [`crate::stages::cache::lookup`] | a stored answer is replayed |
//! | send | [`send::send`] | the upstream request: headers, injection, translation to the target's dialect, attempts, retries, fallbacks |
//! | respond | [`respond::respond`] | the client's answer: the tee around the upstream's, a replay, or a refusal |

pub(crate) mod authenticate;
mod refusal;
pub(crate) mod request_body;
pub(crate) mod respond;
pub(crate) mod route;
pub(crate) mod send;

use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use http::header::{HeaderMap, HeaderValue};
use http::request::Parts;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::json;
use tally_ingest::Record;
use uuid::Uuid;

use crate::body::ResponseBody;
use crate::client::UpstreamClient;
use crate::exchange::Exchange;
use crate::formats::WireFormat;
use crate::headers::{self, Attribution};
use crate::stages;
use crate::Shared;

pub(crate) use refusal::Refusal;

/// Response header carrying the record's id.
pub const REQUEST_ID_HEADER: &str = "tally-request-id";

/// One request's context, shared by its phases.
pub(crate) struct Ctx {
    pub(crate) shared: Arc<Shared>,
    /// The upstream client of the event loop serving this request.
    pub(crate) client: Arc<UpstreamClient>,
    /// The request's state and its record-to-be.
    pub(crate) exchange: Exchange,
    /// Headers the stages add to whichever answer the client gets (`Tally-Cache`,
    /// `RateLimit-*`).
    pub(crate) response_headers: HeaderMap,
    /// The client's address (failed authentications are limited per address).
    pub(crate) peer: std::net::IpAddr,
    /// The Tally key the request authenticated with, from the authenticate phase on.
    pub(crate) key: Option<Arc<tally_keys::Key>>,
    /// How long the send phase waited for the upstream's response head.
    pub(crate) upstream_wait: Option<std::time::Duration>,
}

impl Ctx {
    pub(crate) fn record(&mut self) -> &mut Record {
        &mut self.exchange.state().record
    }

    /// The wire format the client speaks; known from the route phase on.
    pub(crate) fn format(&mut self) -> WireFormat {
        self.exchange.state().format.unwrap_or(WireFormat::OpenAi)
    }
}

/// How a request that was let through is answered.
pub(crate) enum Answer {
    /// By its upstream.
    Upstream(Response<Incoming>),
    /// From the response cache.
    Cached(Arc<stages::cache::Entry>),
}

pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Handles one proxied request. Never fails: every problem becomes a refusal and a record.
/// Every answer carries `Tally-Request-Id`.
pub(crate) async fn handle(
    shared: Arc<Shared>,
    client: Arc<UpstreamClient>,
    peer: std::net::IpAddr,
    req: Request<Incoming>,
) -> Response<ResponseBody> {
    let started = Instant::now();
    let id = Uuid::now_v7();
    let (parts, body) = req.into_parts();
    let record = Record {
        method: parts.method.as_str().to_owned(),
        endpoint: parts.uri.path().to_owned(),
        ..Record::new(id, now_ms())
    };
    let mut exchange = Exchange::new(shared.clone(), record, started);
    if let Some(tracer) = &shared.stages.tracing {
        exchange.state().trace = tracer.begin(&parts.headers).map(Box::new);
    }
    let mut ctx = Ctx {
        exchange,
        shared,
        client,
        response_headers: HeaderMap::new(),
        peer,
        key: None,
        upstream_wait: None,
    };
    let answer = run(&mut ctx, parts, body).await;
    let timing = ctx.upstream_wait.map(|upstream| {
        let to_head = started.elapsed();
        let tally = to_head.saturating_sub(upstream);
        ctx.shared
            .metrics
            .usage
            .overhead
            .get_or_create(&crate::metrics::usage::ProviderLabels {
                provider: ctx.exchange.state().record.provider.clone(),
            })
            .observe(tally.as_secs_f64());
        (tally, upstream)
    });
    let server_timing = ctx.shared.settings.server_timing;
    let mut resp = respond::respond(ctx, answer);
    if let Ok(v) = HeaderValue::from_str(&id.to_string()) {
        resp.headers_mut().insert(REQUEST_ID_HEADER, v);
    }
    if server_timing {
        if let Some(v) = timing.and_then(|t| HeaderValue::from_str(&server_timing_value(t)).ok()) {
            resp.headers_mut()
                .append(http::header::HeaderName::from_static("server-timing"), v);
        }
    }
    resp
}

/// `Server-Timing` (W3C): Tally's time and the upstream's, in milliseconds, to the head.
fn server_timing_value((tally, upstream): (std::time::Duration, std::time::Duration)) -> String {
    format!(
        "tally;dur={:.3}, upstream;dur={:.3}",
        tally.as_secs_f64() * 1000.0,
        upstream.as_secs_f64() * 1000.0
    )
}

/// The phases that may refuse, in order. See the module docs.
async fn run(ctx: &mut Ctx, mut parts: Parts, body: Incoming) -> Result<Answer, Refusal> {
    transfer_coding(&parts)?;
    let route = route::route(ctx, &parts)?;
    let tags = tags(ctx, &parts.headers)?;
    let mut head = request_body::read(ctx, body, &tags).await?;
    request_body::readable_when_metered(ctx, &head, &tags, &parts.headers)?;
    let destination = route::destination(ctx, route.destination, &tags, &mut head.facts)?;
    authenticate::authenticate(ctx, &mut parts.headers, &destination, &head.facts)?;
    stages::guard::check(ctx, destination.name(), &mut head)?;
    stages::budget::enforce(ctx, &head)?;
    stages::ratelimit::admit(ctx, destination.name(), &tags, &parts.headers).await?;
    stages::guardrail::check(ctx, destination.name(), &head, &parts.headers).await?;
    let forward = send::Forward {
        parts,
        path: route.forward_path,
        head,
    };
    if let Some(hit) = stages::cache::lookup(ctx, destination.name(), &tags, &forward).await {
        return Ok(Answer::Cached(hit));
    }
    let sent = Instant::now();
    let upstream = send::send(ctx, destination, forward).await;
    ctx.upstream_wait = Some(sent.elapsed());
    Ok(Answer::Upstream(upstream?))
}

/// hyper decodes `chunked` only. Any other transfer coding (`gzip, chunked`) would reach the
/// upstream as coded bytes without the header that says so; RFC 9112 §6.1 says 501.
fn transfer_coding(parts: &Parts) -> Result<(), Refusal> {
    let codings: Vec<String> = parts
        .headers
        .get_all(http::header::TRANSFER_ENCODING)
        .iter()
        .flat_map(|v| {
            String::from_utf8_lossy(v.as_bytes())
                .split(',')
                .map(|c| c.trim().to_ascii_lowercase())
                .collect::<Vec<_>>()
        })
        .filter(|c| !c.is_empty())
        .collect();
    if codings.is_empty() || codings == ["chunked"] {
        return Ok(());
    }
    Err(Refusal::new(
        StatusCode::NOT_IMPLEMENTED,
        "tally_transfer_encoding",
        format!(
            "Transfer-Encoding {:?} is not supported; only chunked is",
            codings.join(", ")
        ),
    ))
}

/// The tags phase: the `Tally-*` (and `Helicone-*`) headers, into the record.
fn tags(ctx: &mut Ctx, headers: &HeaderMap) -> Result<Attribution, Refusal> {
    let tags = headers::parse(headers).map_err(|e| {
        Refusal::new(
            StatusCode::BAD_REQUEST,
            "tally_invalid_header",
            e.to_string(),
        )
        .details(json!({ "header": e.header }))
    })?;
    let s = ctx.exchange.state();
    let r = &mut s.record;
    r.session_id = tags.session_id.clone();
    r.session_path = tags.session_path.clone();
    r.session_name = tags.session_name.clone();
    r.properties = tags.properties.clone();
    s.omit_request_body = tags.omit_request_body;
    s.omit_response_body = tags.omit_response_body;
    Ok(tags)
}
