//! The request handler: route, read tags, forward, and wrap the response body in the tee.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::json;
use tally_ingest::{CacheStatus, Record};
use uuid::Uuid;

use crate::body::{read_head, PrefixedBody, ResponseBody, StripUsage, TeeBody};
use crate::client::UpstreamClient;
use crate::error_response::error_response;
use crate::exchange::{CacheFill, Encoding, Exchange};
use crate::headers;
use crate::metrics::{AttemptLabels, PolicyLabels, ResultLabels};
use crate::providers::{Provider, StreamUsage};
use crate::stages::cache::{self, CacheRequest, Entry};
use crate::stages::ratelimit::{self, Decision, Policy, RateLimiter, Subject};
use crate::stages::routing::{self, Next, Outcome, Router};
use crate::usage::WireFormat;
use crate::Shared;

/// Response header carrying the record's id.
pub const REQUEST_ID_HEADER: &str = "tally-request-id";
/// Response header of the cache stage: `HIT` or `MISS`.
pub const CACHE_HEADER: &str = "tally-cache";

/// Hop-by-hop headers (RFC 9110 §7.6.1) are for one connection and never forwarded.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// The few request-body fields Tally reads. Unknown fields are skipped without allocating.
#[derive(Debug, Default, Deserialize)]
struct Peek {
    model: Option<String>,
    stream: Option<bool>,
    user: Option<String>,
    metadata: Option<PeekMetadata>,
    stream_options: Option<serde::de::IgnoredAny>,
}

#[derive(Debug, Default, Deserialize)]
struct PeekMetadata {
    user_id: Option<String>,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn skeleton(id: Uuid, method: &str, path: &str) -> Record {
    Record {
        request_id: id,
        ts: now_ms(),
        provider: String::new(),
        endpoint: path.to_owned(),
        method: method.to_owned(),
        model: None,
        response_model: None,
        status: 0,
        stream: false,
        latency_ms: 0,
        ttft_ms: None,
        tokens: None,
        tokens_estimated: false,
        cost_usd: None,
        user_id: None,
        session_id: None,
        session_path: None,
        session_name: None,
        properties: BTreeMap::new(),
        cache_status: CacheStatus::None,
        error: None,
        request_bytes: 0,
        response_bytes: 0,
        api_key_hint: None,
        provider_request_id: None,
        request_body: None,
        response_body: None,
        request_body_truncated: false,
        response_body_truncated: false,
        router: None,
        attempts: 1,
        parent_request_id: None,
        cost_saved_usd: None,
    }
}

/// The request's transfer codings when they are anything but exactly `chunked`.
fn unsupported_transfer_coding(headers: &HeaderMap) -> Option<String> {
    let codings: Vec<String> = headers
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .flat_map(|v| {
            String::from_utf8_lossy(v.as_bytes())
                .split(',')
                .map(|c| c.trim().to_ascii_lowercase())
                .collect::<Vec<_>>()
        })
        .filter(|c| !c.is_empty())
        .collect();
    (!codings.is_empty() && codings != ["chunked"]).then(|| codings.join(", "))
}

/// Removes hop-by-hop headers, including any the `Connection` header names.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for n in named {
        headers.remove(n);
    }
    for h in HOP_BY_HOP {
        headers.remove(*h);
    }
}

/// Adds `"stream_options":{"include_usage":true}` to a JSON object body, textually, so every
/// other byte the client sent reaches the upstream unchanged.
fn inject_include_usage(body: &[u8]) -> Option<Bytes> {
    let end = body.iter().rposition(|b| !b.is_ascii_whitespace())?;
    if body[end] != b'}' {
        return None;
    }
    let inner_empty = body[..end]
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .is_some_and(|i| body[i] == b'{');
    let insert: &[u8] = if inner_empty {
        br#""stream_options":{"include_usage":true}"#
    } else {
        br#","stream_options":{"include_usage":true}"#
    };
    let mut out = Vec::with_capacity(body.len() + insert.len());
    out.extend_from_slice(&body[..end]);
    out.extend_from_slice(insert);
    out.extend_from_slice(&body[end..]);
    Some(out.into())
}

fn budget_message(r: &tally_budgets::Rejection) -> String {
    format!(
        "budget {:?} is exhausted for {}: ${:.4} spent of ${:.2}; it resets at {}",
        r.budget,
        r.scope,
        r.spend_usd,
        r.limit_usd,
        tally_budgets::event::rfc3339(r.resets_at)
    )
}

/// 429 in the provider's error shape, naming the budget, with `Retry-After` in whole seconds.
fn budget_rejection(
    format: WireFormat,
    r: &tally_budgets::Rejection,
    message: &str,
    now: i64,
) -> Response<ResponseBody> {
    let mut resp = error_response(
        Some(format),
        StatusCode::TOO_MANY_REQUESTS,
        "tally_budget_exceeded",
        message,
        Some(json!({
            "budget": r.budget,
            "scope": r.scope,
            "scope_key": r.scope_key,
            "spend_usd": r.spend_usd,
            "limit_usd": r.limit_usd,
            "resets_at": tally_budgets::event::rfc3339(r.resets_at),
        })),
    );
    let secs = ((r.resets_at - now).max(0) as u64).div_ceil(1000).max(1);
    resp.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    resp
}

fn full(bytes: Bytes) -> ResponseBody {
    Full::new(bytes)
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// Handles one proxied request. Never fails: every problem becomes an error response and a
/// record. Every response carries `Tally-Request-Id`, and the headers the stages added
/// (`Tally-Cache`, `RateLimit-*`).
pub(crate) async fn handle(
    shared: Arc<Shared>,
    client: Arc<UpstreamClient>,
    req: Request<Incoming>,
) -> Response<ResponseBody> {
    let id = Uuid::now_v7();
    let mut extra = HeaderMap::new();
    let mut resp = forward(shared, &client, req, id, &mut extra).await;
    if let Ok(v) = HeaderValue::from_str(&id.to_string()) {
        resp.headers_mut().insert(REQUEST_ID_HEADER, v);
    }
    for (name, value) in extra {
        if let Some(name) = name {
            resp.headers_mut().insert(name, value);
        }
    }
    resp
}

/// Where a request goes: one provider, or a router over several.
enum Destination {
    Provider(Arc<Provider>),
    Router(Arc<Router>),
}

/// Why no upstream response head arrived.
struct SendFailure {
    status: StatusCode,
    code: &'static str,
    message: String,
}

/// A request as it leaves for a provider, before its URL is resolved against the provider's.
struct Outbound<'a> {
    method: &'a http::Method,
    path: &'a str,
    query: Option<&'a str>,
    headers: HeaderMap,
    body: ResponseBody,
}

/// Sends one request upstream and waits (bounded) for its response head.
async fn send_upstream(
    shared: &Shared,
    client: &UpstreamClient,
    provider: &Provider,
    out: Outbound<'_>,
) -> Result<Response<Incoming>, SendFailure> {
    let Outbound {
        method,
        path,
        query,
        headers,
        body,
    } = out;
    let uri = provider
        .upstream_uri(path, query)
        .map_err(|e| SendFailure {
            status: StatusCode::BAD_REQUEST,
            code: "tally_bad_path",
            message: format!("invalid upstream URL: {e}"),
        })?;
    let mut upstream_req = Request::new(body);
    *upstream_req.method_mut() = method.clone();
    *upstream_req.uri_mut() = uri;
    *upstream_req.headers_mut() = headers;
    match tokio::time::timeout(
        shared.settings.upstream_timeout,
        client.request(upstream_req),
    )
    .await
    {
        Ok(Ok(r)) => Ok(r),
        Ok(Err(e)) => {
            let detail = crate::body::error_chain(&e);
            shared.metrics.upstream_error(&provider.name, "connect");
            tracing::warn!(provider = %provider.name, error = %detail, "upstream request failed");
            Err(SendFailure {
                status: StatusCode::BAD_GATEWAY,
                code: "tally_upstream_unreachable",
                message: format!("upstream {} unreachable: {detail}", provider.origin()),
            })
        }
        Err(_) => {
            shared.metrics.upstream_error(&provider.name, "timeout");
            Err(SendFailure {
                status: StatusCode::GATEWAY_TIMEOUT,
                code: "tally_upstream_timeout",
                message: format!(
                    "upstream {} did not answer within {} ms",
                    provider.origin(),
                    shared.settings.upstream_timeout.as_millis()
                ),
            })
        }
    }
}

/// Whether Tally should ask this provider for stream usage on this request.
fn wants_injection(provider: &Provider, path: &str) -> bool {
    provider.format == WireFormat::OpenAi
        && provider.stream_usage == StreamUsage::Inject
        && (path.ends_with("/chat/completions") || path.ends_with("/completions"))
}

/// `RateLimit-*` headers (IETF draft) for the tightest policy a request was checked against.
fn rate_limit_headers(extra: &mut HeaderMap, policy: &Policy, d: &Decision) {
    let secs = |ms: u64| HeaderValue::from(ms.div_ceil(1000));
    extra.insert(
        HeaderName::from_static("ratelimit-limit"),
        HeaderValue::from(d.limit.floor() as u64),
    );
    extra.insert(
        HeaderName::from_static("ratelimit-remaining"),
        HeaderValue::from(d.remaining),
    );
    extra.insert(HeaderName::from_static("ratelimit-reset"), secs(d.reset_ms));
    if let Ok(v) = HeaderValue::from_str(&policy.describe()) {
        extra.insert(HeaderName::from_static("ratelimit-policy"), v);
    }
}

fn cache_header(extra: &mut HeaderMap, hit: bool) {
    extra.insert(
        HeaderName::from_static(CACHE_HEADER),
        HeaderValue::from_static(if hit { "HIT" } else { "MISS" }),
    );
}

/// A hex digest of the caller's key, so the `key` rate-limit scope can tell keys apart
/// without the key itself reaching memory dumps of the limiter or Redis.
fn key_id(headers: &HeaderMap) -> Option<String> {
    use sha2::{Digest, Sha256};
    let v = ["authorization", "x-api-key", "api-key"]
        .iter()
        .find_map(|h| headers.get(*h))?;
    let d = Sha256::digest(v.as_bytes());
    Some(d[..12].iter().map(|b| format!("{b:02x}")).collect())
}

async fn forward(
    shared: Arc<Shared>,
    client: &UpstreamClient,
    req: Request<Incoming>,
    id: Uuid,
    extra: &mut HeaderMap,
) -> Response<ResponseBody> {
    let started = Instant::now();
    let (parts, body) = req.into_parts();
    let record = skeleton(id, parts.method.as_str(), parts.uri.path());
    let mut exchange = Exchange::new(shared.clone(), record, started);

    // hyper decodes `chunked` only. Any other transfer coding (`gzip, chunked`) would reach the
    // upstream as coded bytes without the header that says so; RFC 9112 §6.1 says 501.
    if let Some(te) = unsupported_transfer_coding(&parts.headers) {
        let msg = format!("Transfer-Encoding {te:?} is not supported; only chunked is");
        exchange.fail(msg.clone());
        return error_response(
            None,
            StatusCode::NOT_IMPLEMENTED,
            "tally_transfer_encoding",
            &msg,
            None,
        );
    }

    // Route: `/router/<name>/…` to a router, anything else to a provider.
    let path = parts.uri.path();
    let routed = path.strip_prefix("/router/").map(|rest| {
        let (name, fwd) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        (name, if fwd.is_empty() { "/" } else { fwd })
    });
    let (mut destination, forward_path) = match routed {
        Some((name, fwd)) => match shared.stages.routers.as_ref().and_then(|r| r.get(name)) {
            Some(r) => (Destination::Router(r.clone()), fwd.to_owned()),
            None => {
                let msg = unknown_router(&shared, name);
                exchange.state().record.provider = "router".to_owned();
                exchange.fail(msg.clone());
                return error_response(
                    None,
                    StatusCode::NOT_FOUND,
                    "tally_unknown_router",
                    &msg,
                    None,
                );
            }
        },
        None => match shared.providers.route(path) {
            Ok((p, fwd)) => (Destination::Provider(p.clone()), fwd.to_owned()),
            Err(e) => {
                let names = shared.providers.names();
                let msg = format!(
                    "unknown provider {:?}; use /v1/... for {} or one of: {}",
                    e.name,
                    crate::providers::DEFAULT_PROVIDER,
                    names.join(", ")
                );
                exchange.state().record.provider = e.name;
                exchange.fail(msg.clone());
                return error_response(
                    None,
                    StatusCode::NOT_FOUND,
                    "tally_unknown_provider",
                    &msg,
                    Some(json!({ "providers": names })),
                );
            }
        },
    };
    let format = match &destination {
        Destination::Provider(p) => p.format,
        Destination::Router(r) => r.targets[0].provider.format,
    };
    {
        let s = exchange.state();
        s.record.provider = match &destination {
            Destination::Provider(p) => p.name.clone(),
            Destination::Router(r) => r.targets[0].provider.name.clone(),
        };
        s.record.endpoint = forward_path.clone();
        s.format = Some(format);
        s.record.api_key_hint = headers::key_hint(&parts.headers);
    }

    // Tags.
    let tags = match headers::parse(&parts.headers) {
        Ok(t) => t,
        Err(e) => {
            let msg = e.to_string();
            exchange.fail(msg.clone());
            return error_response(
                Some(format),
                StatusCode::BAD_REQUEST,
                "tally_invalid_header",
                &msg,
                Some(json!({ "header": e.header })),
            );
        }
    };
    if let (Some(name), Destination::Provider(_)) = (tags.router.as_deref(), &destination) {
        match shared.stages.routers.as_ref().and_then(|r| r.get(name)) {
            Some(r) if r.targets[0].provider.format != format => {
                let msg = format_mismatch(r, format);
                exchange.fail(msg.clone());
                return error_response(
                    Some(format),
                    StatusCode::BAD_REQUEST,
                    "tally_router_format",
                    &msg,
                    None,
                );
            }
            Some(r) => destination = Destination::Router(r.clone()),
            None => {
                let msg = unknown_router(&shared, name);
                exchange.fail(msg.clone());
                return error_response(
                    Some(format),
                    StatusCode::NOT_FOUND,
                    "tally_unknown_router",
                    &msg,
                    None,
                );
            }
        }
    }

    // Request body: read a bounded head (see `read_head` for why).
    let limit = shared.settings.max_body_bytes;
    let head =
        match tokio::time::timeout(shared.settings.request_body_timeout, read_head(body, limit))
            .await
        {
            Ok(Ok(h)) => h,
            Ok(Err(e)) => {
                let msg = format!("could not read the request body: {e}");
                exchange.fail(msg.clone());
                return error_response(
                    Some(format),
                    StatusCode::BAD_REQUEST,
                    "tally_request_body",
                    &msg,
                    None,
                );
            }
            Err(_) => {
                let msg = "the request body did not arrive in time".to_owned();
                exchange.fail(msg.clone());
                return error_response(
                    Some(format),
                    StatusCode::REQUEST_TIMEOUT,
                    "tally_request_body",
                    &msg,
                    None,
                );
            }
        };
    let complete_body = head.rest.is_none();
    let peek: Peek = if complete_body {
        serde_json::from_slice(&head.bytes).unwrap_or_default()
    } else {
        Peek::default()
    };
    // A model alias selects a router.
    if let (Destination::Provider(_), Some(model), Some(routers)) = (
        &destination,
        peek.model.as_deref(),
        shared.stages.routers.as_ref(),
    ) {
        if let Some(r) = routers.for_alias(model) {
            if r.targets[0].provider.format != format {
                let msg = format_mismatch(r, format);
                exchange.fail(msg.clone());
                return error_response(
                    Some(format),
                    StatusCode::BAD_REQUEST,
                    "tally_router_format",
                    &msg,
                    None,
                );
            }
            destination = Destination::Router(r.clone());
        }
    }
    let wants_stream = peek.stream == Some(true);
    let can_inject = complete_body && wants_stream && peek.stream_options.is_none();

    {
        let s = exchange.state();
        let r = &mut s.record;
        r.model = peek.model;
        r.user_id = tags
            .user_id
            .clone()
            .or(peek.user)
            .or(peek.metadata.and_then(|m| m.user_id));
        r.session_id = tags.session_id.clone();
        r.session_path = tags.session_path.clone();
        r.session_name = tags.session_name.clone();
        r.properties = tags.properties.clone();
        r.request_bytes = head.bytes.len() as u64;
        r.stream = wants_stream;
        if let Destination::Router(router) = &destination {
            r.router = Some(router.name.clone());
        }
        s.omit_request_body = tags.omit_request_body;
        s.omit_response_body = tags.omit_response_body;
        s.request_truncated = !complete_body;
        s.request_head = if complete_body {
            head.bytes.clone()
        } else {
            head.bytes.slice(..limit.min(head.bytes.len()))
        };
    }
    // The name stages key their config on: the provider's or the router's.
    let scope_name = match &destination {
        Destination::Provider(p) => p.name.clone(),
        Destination::Router(r) => r.name.clone(),
    };

    // Budget enforcement: the tags and the model are known, nothing has been sent yet.
    if let Some(budgets) = shared.stages.budgets.as_ref().filter(|b| b.enforcing()) {
        let r = &exchange.state().record;
        let subject = tally_budgets::Subject {
            provider: &r.provider,
            model: r.model.as_deref(),
            user_id: r.user_id.as_deref(),
            properties: &r.properties,
        };
        let now = now_ms();
        if let Some(rejection) = budgets.check(subject, now) {
            shared.metrics.budget_rejections.inc();
            let msg = budget_message(&rejection);
            let resp = budget_rejection(format, &rejection, &msg, now);
            exchange.reject(429, msg);
            return resp;
        }
    }

    // Rate limits: configured policies for this destination, and the request's own.
    if let Some(limiter) = shared.stages.rate_limits.as_ref() {
        let header_policy = tags.rate_limit.clone().map(Arc::new);
        if limiter.has_policies() || header_policy.is_some() {
            let policies: Vec<Arc<Policy>> = limiter
                .policies_for(&scope_name)
                .cloned()
                .chain(header_policy)
                .collect();
            let refused = check_rate_limits(
                &shared,
                limiter,
                &policies,
                &parts.headers,
                &mut exchange,
                format,
                extra,
            )
            .await;
            if let Some((resp, msg)) = refused {
                exchange.reject(429, msg);
                return resp;
            }
        }
    }

    // Response cache.
    let cache_req = CacheRequest {
        enabled: tags.cache,
        ttl_secs: tags.cache_ttl_secs,
        namespace: tags.cache_namespace.as_deref(),
    };
    let cache = shared
        .stages
        .cache
        .as_ref()
        .filter(|c| complete_body && c.wanted(&scope_name, &cache_req));
    if let Some(cache) = cache {
        let pq = match parts.uri.query() {
            Some(q) => format!("{forward_path}?{q}"),
            None => forward_path.clone(),
        };
        let key = cache::key(
            &scope_name,
            &parts.method,
            &pq,
            cache_req.namespace,
            &parts.headers,
            &head.bytes,
        );
        let found = match cache.get(&key).await {
            Ok(found) => found,
            Err(e) => {
                shared.metrics.stage_error("cache");
                tracing::warn!(error = %e, "cache lookup failed; treating it as a miss");
                None
            }
        };
        let result = if found.is_some() { "hit" } else { "miss" };
        shared
            .metrics
            .cache_lookups
            .get_or_create(&ResultLabels { result })
            .inc();
        cache_header(extra, found.is_some());
        if let Some(entry) = found {
            return replay(&shared, exchange, &entry);
        }
        let ttl = cache.ttl(&cache_req, &parts.headers);
        let s = exchange.state();
        s.record.cache_status = CacheStatus::Miss;
        s.stages.cache_fill = Some(CacheFill::new(cache.clone(), key, ttl));
    }

    // Upstream request headers: hop-by-hop and Tally's own never leave.
    let mut headers = parts.headers;
    strip_hop_by_hop(&mut headers);
    headers.remove(header::HOST);
    // hyper already answered any `Expect: 100-continue` when the body head was read; the
    // upstream gets the body right away.
    headers.remove(header::EXPECT);
    let tally: Vec<HeaderName> = headers
        .keys()
        .filter(|k| headers::is_tally_header(k.as_str()))
        .cloned()
        .collect();
    for k in tally {
        headers.remove(k);
    }
    let original_length = headers.remove(header::CONTENT_LENGTH);
    let query = parts.uri.query();

    let (resp, injected) = match destination {
        Destination::Provider(provider) => {
            let forwarded_body = if can_inject && wants_injection(&provider, &forward_path) {
                inject_include_usage(&head.bytes)
            } else {
                None
            };
            let injected = forwarded_body.is_some();
            let upstream_body = match (forwarded_body, head.rest) {
                (Some(b), _) => full(b),
                (None, None) => full(head.bytes),
                (None, Some(rest)) => {
                    let counted = Arc::new(AtomicU64::new(0));
                    exchange.state().request_rest_bytes = Some(counted.clone());
                    if let Some(len) = original_length {
                        headers.insert(header::CONTENT_LENGTH, len);
                    }
                    PrefixedBody::new(head.bytes, rest, counted).boxed_unsync()
                }
            };
            let sent = send_upstream(
                &shared,
                client,
                &provider,
                Outbound {
                    method: &parts.method,
                    path: &forward_path,
                    query,
                    headers,
                    body: upstream_body,
                },
            )
            .await;
            match sent {
                Ok(r) => (r, injected),
                Err(f) => {
                    exchange.fail(f.message.clone());
                    return error_response(Some(format), f.status, f.code, &f.message, None);
                }
            }
        }
        Destination::Router(router) => {
            if !complete_body {
                let msg = format!(
                    "a routed request body must fit in proxy.max_body_bytes ({limit} bytes): it is kept to be sent again on a retry"
                );
                exchange.fail(msg.clone());
                return error_response(
                    Some(format),
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "tally_request_body",
                    &msg,
                    None,
                );
            }
            let attempt = Attempt {
                method: &parts.method,
                path: &forward_path,
                query,
                headers: &headers,
                body: &head.bytes,
                can_inject,
            };
            match route(&shared, client, &router, &mut exchange, attempt).await {
                Ok(r) => r,
                Err(f) => {
                    exchange.fail(f.message.clone());
                    return error_response(Some(format), f.status, f.code, &f.message, None);
                }
            }
        }
    };
    respond(&shared, exchange, resp, injected)
}

/// A router whose targets speak another wire format than the route the request came in on.
fn format_mismatch(router: &Router, route: WireFormat) -> String {
    format!(
        "router {:?} sends to {:?}-format providers; this route speaks {route:?}, so its body would not fit",
        router.name, router.targets[0].provider.format
    )
}

fn unknown_router(shared: &Shared, name: &str) -> String {
    let names = shared
        .stages
        .routers
        .as_ref()
        .map(|r| r.names())
        .unwrap_or_default();
    if names.is_empty() {
        format!("unknown router {name:?}; no routers are configured")
    } else {
        format!("unknown router {name:?}; configured: {}", names.join(", "))
    }
}

/// Checks every policy; the first refusal is the 429 to answer (and its message). The tightest admitted policy's figures
/// go into the `RateLimit-*` headers.
async fn check_rate_limits(
    shared: &Arc<Shared>,
    limiter: &Arc<RateLimiter>,
    policies: &[Arc<Policy>],
    headers: &HeaderMap,
    exchange: &mut Exchange,
    format: WireFormat,
    extra: &mut HeaderMap,
) -> Option<(Response<ResponseBody>, String)> {
    let key_id = policies
        .iter()
        .any(|p| matches!(p.scope, crate::stages::ratelimit::Scope::Key))
        .then(|| key_id(headers))
        .flatten();
    let mut tightest: Option<(Arc<Policy>, Decision)> = None;
    let mut charges = Vec::new();
    for policy in policies {
        let key = {
            let r = &exchange.state().record;
            ratelimit::counter_key(
                policy,
                &Subject {
                    user_id: r.user_id.as_deref(),
                    key_id: key_id.as_deref(),
                    properties: &r.properties,
                },
            )
        };
        let decision = match limiter.check(policy, &key).await {
            Ok(d) => d,
            Err(e) => {
                // Fail open: a Redis outage must not take the API down with it.
                shared.metrics.stage_error("rate_limit");
                tracing::warn!(policy = %policy.name, error = %e, "rate limit check failed; admitting the request");
                continue;
            }
        };
        if !decision.allowed {
            let label = if policy.name.starts_with("header:") {
                "header".to_owned()
            } else {
                policy.name.clone()
            };
            shared
                .metrics
                .rate_limited
                .get_or_create(&PolicyLabels { policy: label })
                .inc();
            let what = if policy.is_cost() {
                "spend"
            } else {
                "requests"
            };
            let msg = format!(
                "rate limit {:?} reached: {} {what} per {} s; retry in {} s",
                policy.name,
                policy.quota,
                policy.window_ms / 1000.0,
                decision.retry_after_ms.div_ceil(1000)
            );
            rate_limit_headers(extra, policy, &decision);
            extra.insert(
                header::RETRY_AFTER,
                HeaderValue::from(decision.retry_after_ms.div_ceil(1000).max(1)),
            );
            let resp = error_response(
                Some(format),
                StatusCode::TOO_MANY_REQUESTS,
                "tally_rate_limited",
                &msg,
                Some(json!({
                    "policy": policy.name,
                    "limit": policy.quota,
                    "window_secs": policy.window_ms / 1000.0,
                    "retry_after_ms": decision.retry_after_ms,
                })),
            );
            return Some((resp, msg));
        }
        if policy.is_cost() {
            charges.push((policy.clone(), key));
        }
        if tightest
            .as_ref()
            .is_none_or(|(_, d)| decision.remaining < d.remaining)
        {
            tightest = Some((policy.clone(), decision));
        }
    }
    if let Some((p, d)) = &tightest {
        rate_limit_headers(extra, p, d);
    }
    if !charges.is_empty() {
        let s = exchange.state();
        s.stages.charges = charges;
        s.stages.limiter = Some(limiter.clone());
    }
    None
}

/// Answers from the cache: the stored bytes go through the same tee as a live response, so
/// the record gets the same usage (and its cost becomes the saving).
fn replay(shared: &Shared, mut exchange: Exchange, entry: &Entry) -> Response<ResponseBody> {
    let (headers, injected) = cache::replay_headers(entry);
    let is_sse = is_event_stream(&headers);
    let encoding = Encoding::from_header(
        headers
            .get(header::CONTENT_ENCODING)
            .and_then(|v| v.to_str().ok()),
    );
    {
        let s = exchange.state();
        s.record.cache_status = CacheStatus::Hit;
        s.stages.cache_hit = true;
    }
    exchange.responded(entry.status, is_sse, encoding);
    let tee = TeeBody::new(
        Full::new(entry.body.clone()),
        exchange,
        shared.settings.idle_timeout,
    );
    let body = if injected && is_sse && encoding == Encoding::Identity {
        StripUsage::new(tee).boxed_unsync()
    } else {
        tee.boxed_unsync()
    };
    let mut resp = Response::new(body);
    *resp.status_mut() = StatusCode::from_u16(entry.status).unwrap_or(StatusCode::OK);
    *resp.headers_mut() = headers;
    resp
}

fn is_event_stream(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().starts_with("text/event-stream"))
}

/// Wraps the upstream's response in the tee.
fn respond(
    shared: &Shared,
    mut exchange: Exchange,
    resp: Response<Incoming>,
    injected: bool,
) -> Response<ResponseBody> {
    let (mut rparts, incoming) = resp.into_parts();
    strip_hop_by_hop(&mut rparts.headers);
    let is_sse = is_event_stream(&rparts.headers);
    let encoding = Encoding::from_header(
        rparts
            .headers
            .get(header::CONTENT_ENCODING)
            .and_then(|v| v.to_str().ok()),
    );
    {
        let s = exchange.state();
        s.record.provider_request_id = ["x-request-id", "request-id"]
            .iter()
            .find_map(|h| rparts.headers.get(*h))
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        if let Some(fill) = s.stages.cache_fill.as_mut() {
            for h in [header::CONTENT_TYPE, header::CONTENT_ENCODING] {
                if let Some(v) = rparts.headers.get(&h) {
                    fill.headers.insert(h, v.clone());
                }
            }
            if injected {
                fill.headers.insert(
                    HeaderName::from_static(cache::INJECTED),
                    HeaderValue::from_static("1"),
                );
            }
        }
    }
    exchange.responded(rparts.status.as_u16(), is_sse, encoding);

    let tee = TeeBody::new(incoming, exchange, shared.settings.idle_timeout);
    let body = if injected && is_sse && encoding == Encoding::Identity {
        rparts.headers.remove(header::CONTENT_LENGTH);
        StripUsage::new(tee).boxed_unsync()
    } else {
        tee.boxed_unsync()
    };
    Response::from_parts(rparts, body)
}

/// What every attempt of a routed request sends.
struct Attempt<'a> {
    method: &'a http::Method,
    path: &'a str,
    query: Option<&'a str>,
    headers: &'a HeaderMap,
    body: &'a Bytes,
    can_inject: bool,
}

/// Sends a routed request: targets in the router's order, retries with backoff on one target,
/// then the next. Each attempt is judged on its response head alone, so once a response is
/// returned (and its first byte can reach the client) nothing is retried. Every failed attempt
/// leaves its own record, linked by `parent_request_id`.
async fn route(
    shared: &Arc<Shared>,
    client: &UpstreamClient,
    router: &Router,
    exchange: &mut Exchange,
    a: Attempt<'_>,
) -> Result<(Response<Incoming>, bool), SendFailure> {
    let order = router.order(now_ms());
    let mut attempts = 0u32;
    let mut last_failure = None;
    for (pos, &ti) in order.iter().enumerate() {
        let target = &router.targets[ti];
        let body = match &target.model {
            Some(m) => routing::with_model(a.body, m).unwrap_or_else(|| a.body.clone()),
            None => a.body.clone(),
        };
        let forwarded = if a.can_inject && wants_injection(&target.provider, a.path) {
            inject_include_usage(&body)
        } else {
            None
        };
        let injected = forwarded.is_some();
        let body = forwarded.unwrap_or(body);
        let more_targets = pos + 1 < order.len();
        let mut retry = 0u32;
        loop {
            attempts += 1;
            let attempt_ts = now_ms();
            let t0 = Instant::now();
            router.started(ti);
            let sent = send_upstream(
                shared,
                client,
                &target.provider,
                Outbound {
                    method: a.method,
                    path: a.path,
                    query: a.query,
                    headers: a.headers.clone(),
                    body: full(body.clone()),
                },
            )
            .await;
            let outcome = match &sent {
                Ok(r) => Outcome::Status(r.status().as_u16()),
                Err(_) => Outcome::NoResponse,
            };
            router.finished(ti, outcome, t0.elapsed(), now_ms());
            let next = router.next(
                outcome,
                sent.as_ref().ok().map(Response::headers),
                retry,
                more_targets,
            );
            let result = match next {
                Next::Deliver if Router::retryable(outcome) => "failed",
                Next::Deliver => "ok",
                Next::Retry(_) => "retry",
                Next::Fallback => "fallback",
            };
            shared
                .metrics
                .route_attempts
                .get_or_create(&AttemptLabels {
                    router: router.name.clone(),
                    target: target.provider.name.clone(),
                    result,
                })
                .inc();
            if next == Next::Deliver {
                let s = exchange.state();
                s.record.provider = target.provider.name.clone();
                s.record.attempts = attempts;
                if let Some(m) = &target.model {
                    s.record.model = Some(m.clone());
                }
                return match sent {
                    Ok(r) => Ok((r, injected)),
                    Err(f) => Err(f),
                };
            }
            let (status, why) = match &sent {
                Ok(r) => (
                    r.status().as_u16(),
                    format!("upstream answered HTTP {}", r.status().as_u16()),
                ),
                Err(f) => (0, f.message.clone()),
            };
            let then = match next {
                Next::Retry(d) => format!("retrying after {} ms", d.as_millis()),
                _ => "falling back to the next target".to_owned(),
            };
            let mut failed = exchange.state().record.clone();
            failed.parent_request_id = Some(failed.request_id);
            failed.request_id = Uuid::now_v7();
            failed.cache_status = CacheStatus::None;
            failed.ts = attempt_ts;
            failed.provider = target.provider.name.clone();
            if let Some(m) = &target.model {
                failed.model = Some(m.clone());
            }
            failed.status = status;
            failed.latency_ms = t0.elapsed().as_millis() as u64;
            failed.attempts = attempts;
            failed.error = Some(format!(
                "attempt {attempts} via {}: {why}; {then}",
                target.provider.name
            ));
            shared.sender.send(failed);
            // Drop the failed response (and its connection) before waiting.
            drop(sent);
            last_failure = Some(why);
            match next {
                Next::Retry(d) => {
                    tokio::time::sleep(d).await;
                    retry += 1;
                }
                _ => break,
            }
        }
    }
    // Unreachable in practice (the last target delivers), kept as an honest error.
    Err(SendFailure {
        status: StatusCode::BAD_GATEWAY,
        code: "tally_all_targets_failed",
        message: format!(
            "router {:?}: all {} attempts failed; last: {}",
            router.name,
            attempts,
            last_failure.unwrap_or_default()
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn injection_is_textual_and_minimal() {
        let b = inject_include_usage(b"{\"model\":\"m\",\"stream\":true}\n").expect("object");
        assert_eq!(
            &b[..],
            b"{\"model\":\"m\",\"stream\":true,\"stream_options\":{\"include_usage\":true}}\n"
        );
        let v: serde_json::Value = serde_json::from_slice(&b).expect("still JSON");
        assert_eq!(v["stream_options"]["include_usage"], true);
        assert_eq!(
            &inject_include_usage(b"{ }").expect("empty")[..],
            b"{ \"stream_options\":{\"include_usage\":true}}"
        );
        assert!(inject_include_usage(b"[1,2]").is_none());
        assert!(inject_include_usage(b"").is_none());
    }

    #[test]
    fn hop_by_hop_and_connection_named_headers_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(
            "connection",
            HeaderValue::from_static("close, x-secret-hop"),
        );
        h.insert("x-secret-hop", HeaderValue::from_static("1"));
        h.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        h.insert("authorization", HeaderValue::from_static("Bearer k"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("authorization"));
    }
}
