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
use crate::error_response::error_response;
use crate::exchange::{Encoding, Exchange};
use crate::headers;
use crate::providers::StreamUsage;
use crate::usage::WireFormat;
use crate::Shared;

/// Response header carrying the record's id.
pub const REQUEST_ID_HEADER: &str = "tally-request-id";

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

fn skeleton(method: &str, path: &str) -> Record {
    Record {
        request_id: Uuid::now_v7(),
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
    }
}

fn with_request_id(mut resp: Response<ResponseBody>, id: Uuid) -> Response<ResponseBody> {
    if let Ok(v) = HeaderValue::from_str(&id.to_string()) {
        resp.headers_mut().insert(REQUEST_ID_HEADER, v);
    }
    resp
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
/// record.
pub(crate) async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Response<ResponseBody> {
    let started = Instant::now();
    let (parts, body) = req.into_parts();
    let record = skeleton(parts.method.as_str(), parts.uri.path());
    let id = record.request_id;
    let mut exchange = Exchange::new(shared.clone(), record, started);

    // hyper decodes `chunked` only. Any other transfer coding (`gzip, chunked`) would reach the
    // upstream as coded bytes without the header that says so; RFC 9112 §6.1 says 501.
    if let Some(te) = unsupported_transfer_coding(&parts.headers) {
        let msg = format!("Transfer-Encoding {te:?} is not supported; only chunked is");
        exchange.fail(msg.clone());
        let resp = error_response(
            None,
            StatusCode::NOT_IMPLEMENTED,
            "tally_transfer_encoding",
            &msg,
            None,
        );
        return with_request_id(resp, id);
    }

    // Route.
    let (provider, forward_path) = match shared.providers.route(parts.uri.path()) {
        Ok((p, path)) => (p.clone(), path.to_owned()),
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
            let resp = error_response(
                None,
                StatusCode::NOT_FOUND,
                "tally_unknown_provider",
                &msg,
                Some(json!({ "providers": names })),
            );
            return with_request_id(resp, id);
        }
    };
    {
        let s = exchange.state();
        s.record.provider = provider.name.clone();
        s.record.endpoint = forward_path.clone();
        s.format = Some(provider.format);
        s.record.api_key_hint = headers::key_hint(&parts.headers);
    }

    // Tags.
    let tags = match headers::parse(&parts.headers) {
        Ok(t) => t,
        Err(e) => {
            let msg = e.to_string();
            exchange.fail(msg.clone());
            let resp = error_response(
                Some(provider.format),
                StatusCode::BAD_REQUEST,
                "tally_invalid_header",
                &msg,
                Some(json!({ "header": e.header })),
            );
            return with_request_id(resp, id);
        }
    };

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
                let resp = error_response(
                    Some(provider.format),
                    StatusCode::BAD_REQUEST,
                    "tally_request_body",
                    &msg,
                    None,
                );
                return with_request_id(resp, id);
            }
            Err(_) => {
                let msg = "the request body did not arrive in time".to_owned();
                exchange.fail(msg.clone());
                let resp = error_response(
                    Some(provider.format),
                    StatusCode::REQUEST_TIMEOUT,
                    "tally_request_body",
                    &msg,
                    None,
                );
                return with_request_id(resp, id);
            }
        };
    let complete_body = head.rest.is_none();
    let peek: Peek = if complete_body {
        serde_json::from_slice(&head.bytes).unwrap_or_default()
    } else {
        Peek::default()
    };
    let wants_stream = peek.stream == Some(true);
    let inject = complete_body
        && wants_stream
        && peek.stream_options.is_none()
        && provider.format == WireFormat::OpenAi
        && provider.stream_usage == StreamUsage::Inject
        && (forward_path.ends_with("/chat/completions") || forward_path.ends_with("/completions"));
    let forwarded_body = if inject {
        inject_include_usage(&head.bytes)
    } else {
        None
    };
    let injected = forwarded_body.is_some();

    {
        let s = exchange.state();
        let r = &mut s.record;
        r.model = peek.model;
        r.user_id = tags
            .user_id
            .or(peek.user)
            .or(peek.metadata.and_then(|m| m.user_id));
        r.session_id = tags.session_id;
        r.session_path = tags.session_path;
        r.session_name = tags.session_name;
        r.properties = tags.properties;
        r.request_bytes = head.bytes.len() as u64;
        r.stream = wants_stream;
        s.omit_request_body = tags.omit_request_body;
        s.omit_response_body = tags.omit_response_body;
        s.request_truncated = !complete_body;
        s.request_head = if complete_body {
            head.bytes.clone()
        } else {
            head.bytes.slice(..limit.min(head.bytes.len()))
        };
    }

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
            let resp = budget_rejection(provider.format, &rejection, &msg, now);
            exchange.reject(429, msg);
            return with_request_id(resp, id);
        }
    }

    // Upstream request.
    let uri = match provider.upstream_uri(&forward_path, parts.uri.query()) {
        Ok(u) => u,
        Err(e) => {
            let msg = format!("invalid upstream URL: {e}");
            exchange.fail(msg.clone());
            let resp = error_response(
                Some(provider.format),
                StatusCode::BAD_REQUEST,
                "tally_bad_path",
                &msg,
                None,
            );
            return with_request_id(resp, id);
        }
    };
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
    let mut upstream_req = Request::new(upstream_body);
    *upstream_req.method_mut() = parts.method;
    *upstream_req.uri_mut() = uri;
    *upstream_req.headers_mut() = headers;

    let sent = tokio::time::timeout(
        shared.settings.upstream_timeout,
        shared.client.request(upstream_req),
    )
    .await;
    let resp = match sent {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            let detail = crate::body::error_chain(&e);
            shared.metrics.upstream_error(&provider.name, "connect");
            let msg = format!("upstream {} unreachable: {detail}", provider.origin());
            tracing::warn!(provider = %provider.name, error = %detail, "upstream request failed");
            exchange.fail(msg.clone());
            let resp = error_response(
                Some(provider.format),
                StatusCode::BAD_GATEWAY,
                "tally_upstream_unreachable",
                &msg,
                None,
            );
            return with_request_id(resp, id);
        }
        Err(_) => {
            shared.metrics.upstream_error(&provider.name, "timeout");
            let msg = format!(
                "upstream {} did not answer within {} ms",
                provider.origin(),
                shared.settings.upstream_timeout.as_millis()
            );
            exchange.fail(msg.clone());
            let resp = error_response(
                Some(provider.format),
                StatusCode::GATEWAY_TIMEOUT,
                "tally_upstream_timeout",
                &msg,
                None,
            );
            return with_request_id(resp, id);
        }
    };

    // Response.
    let (mut rparts, incoming) = resp.into_parts();
    strip_hop_by_hop(&mut rparts.headers);
    let is_sse = rparts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().starts_with("text/event-stream"));
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
    }
    exchange.responded(rparts.status.as_u16(), is_sse, encoding);

    let tee = TeeBody::new(incoming, exchange, shared.settings.idle_timeout);
    let body = if injected && is_sse && encoding == Encoding::Identity {
        rparts.headers.remove(header::CONTENT_LENGTH);
        StripUsage::new(tee).boxed_unsync()
    } else {
        tee.boxed_unsync()
    };
    with_request_id(Response::from_parts(rparts, body), id)
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
