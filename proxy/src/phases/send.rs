//! The send phase: the upstream request, and its wait for a response head.
//!
//! Headers leave without the hop-by-hop ones and without Tally's own; the body is the head
//! already read, then the untouched rest. When the client's stream did not ask for usage and
//! the format can, the head is the one place Tally changes a request (it asks for usage, and
//! `StripUsage` hides the answer again). A request to a router goes through the routing stage,
//! which sends attempts through [`send_upstream`] too.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName};
use http::request::Parts;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;

use super::request_body::BodyHead;
use super::route::Destination;
use super::{Ctx, Refusal};
use crate::body::{PrefixedBody, ResponseBody};
use crate::client::UpstreamClient;
use crate::headers;
use crate::providers::{Provider, StreamUsage};
use crate::stages;
use crate::Shared;

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

/// Removes hop-by-hop headers, including any the `Connection` header names.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
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

/// What the client sent, ready to forward.
pub(crate) struct Forward {
    pub(crate) parts: Parts,
    /// The path to forward, the route's prefix removed.
    pub(crate) path: String,
    pub(crate) head: BodyHead,
}

/// A request as it leaves for a provider, before its URL is resolved against the provider's.
pub(crate) struct Outbound<'a> {
    pub(crate) method: &'a http::Method,
    pub(crate) path: &'a str,
    pub(crate) query: Option<&'a str>,
    pub(crate) headers: HeaderMap,
    pub(crate) body: ResponseBody,
}

pub(crate) fn full(bytes: Bytes) -> ResponseBody {
    Full::new(bytes)
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// Whether Tally asks `provider` for the stream usage this request did not ask for.
pub(crate) fn wants_injection(provider: &Provider, path: &str, head: &BodyHead) -> bool {
    head.complete()
        && head.facts.stream
        && !head.facts.stream_options
        && provider.stream_usage == StreamUsage::Inject
        && provider.format.adapter().can_inject(path)
}

/// The send phase: to the provider, or through the router's attempts.
pub(crate) async fn send(
    ctx: &mut Ctx,
    destination: Destination,
    forward: Forward,
) -> Result<Response<Incoming>, Refusal> {
    let Forward { parts, path, head } = forward;
    let Parts {
        method,
        uri,
        mut headers,
        ..
    } = parts;
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
    if let Some(t) = &ctx.exchange.state().trace {
        t.inject(&mut headers);
    }
    let original_length = headers.remove(header::CONTENT_LENGTH);
    let query = uri.query();
    match destination {
        Destination::Provider(provider) if ctx.exchange.state().unified => {
            whole(ctx, &head, "translated")?;
            let model = ctx.record().model.clone().unwrap_or_default();
            let mut headers = headers;
            let t = translated(ctx, &provider, &model, &head, &mut headers)?;
            let leaving = Leaving {
                method: &method,
                path: &t.path,
                query: t.query.as_deref(),
                body: Some(&t.body[..]),
            };
            credentials(ctx, &provider, &leaving, &mut headers).await?;
            let out = Outbound {
                method: &method,
                path: &t.path,
                query: t.query.as_deref(),
                headers,
                body: full(t.body.clone()),
            };
            let sent = send_upstream(&ctx.shared, &ctx.client, &provider, out).await;
            delivered(ctx, t.plan, &t.body);
            sent
        }
        Destination::Provider(provider) => {
            let mut headers = headers;
            let leaving = Leaving {
                method: &method,
                path: &path,
                query,
                body: head.complete().then_some(&head.bytes[..]),
            };
            credentials(ctx, &provider, &leaving, &mut headers).await?;
            let injected = wants_injection(&provider, &path, &head)
                .then(|| provider.format.adapter().inject(&head.bytes))
                .flatten();
            ctx.exchange.state().injected = injected.is_some();
            let body = match (injected, head.rest) {
                (Some(b), _) => full(b),
                (None, None) => full(head.bytes),
                (None, Some(rest)) => {
                    let counted = Arc::new(AtomicU64::new(0));
                    ctx.exchange.state().request_rest_bytes = Some(counted.clone());
                    if let Some(len) = original_length {
                        headers.insert(header::CONTENT_LENGTH, len);
                    }
                    PrefixedBody::new(head.bytes, rest, counted).boxed_unsync()
                }
            };
            let out = Outbound {
                method: &method,
                path: &path,
                query,
                headers,
                body,
            };
            send_upstream(&ctx.shared, &ctx.client, &provider, out).await
        }
        Destination::Unified => Err(Refusal::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "tally_internal",
            "a unified request reached the send phase without a provider",
        )),
        Destination::Router(router) => {
            whole(ctx, &head, "routed")?;
            let attempt = stages::routing::Attempt {
                method: &method,
                path: &path,
                query,
                headers: &headers,
                head: &head,
            };
            stages::routing::send(ctx, &router, attempt).await
        }
    }
}

/// A routed or translated request must be whole: it is kept to be sent again, or rewritten.
fn whole(ctx: &Ctx, head: &BodyHead, what: &str) -> Result<(), Refusal> {
    if head.complete() {
        return Ok(());
    }
    let limit = ctx.shared.settings.max_body_bytes;
    Err(Refusal::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "tally_request_body",
        format!(
            "a {what} request body must fit in proxy.max_body_bytes ({limit} bytes): Tally keeps it whole to send again or to rewrite"
        ),
    ))
}

/// The request for `provider` in its own dialect (see `translation.rs`). Across dialects the
/// client's keys were for another API and are dropped, so the credentials Tally holds for
/// `provider` sign it.
pub(crate) fn translated(
    ctx: &mut Ctx,
    provider: &Provider,
    model: &str,
    head: &BodyHead,
    headers: &mut HeaderMap,
) -> Result<crate::translation::Translated, Refusal> {
    let client = ctx.format();
    let t = crate::translation::outbound(client, provider, model, &head.bytes, headers)?;
    if t.plan.rewrites() {
        ctx.exchange.state().presented = Default::default();
    }
    Ok(t)
}

/// The attempt that answers was translated (`sent` is its body): the response side rewrites
/// it, and the record says so.
pub(crate) fn delivered(ctx: &mut Ctx, plan: crate::translation::ResponsePlan, sent: &Bytes) {
    let limit = ctx.shared.settings.max_body_bytes;
    let keep = ctx.shared.settings.keep_translated_bodies;
    let s = ctx.exchange.state();
    if plan.rewrites() {
        s.record
            .properties
            .insert("translated".to_owned(), plan.label());
        if keep {
            s.upstream_request = Some(sent.slice(..sent.len().min(limit)));
            s.upstream_capture = Some(crate::capture::Capture::new(limit));
        }
    }
    s.translation = Some(plan);
}

/// A request as it leaves, for the credentials that sign it.
pub(crate) struct Leaving<'a> {
    pub(crate) method: &'a http::Method,
    pub(crate) path: &'a str,
    pub(crate) query: Option<&'a str>,
    /// The whole body, when it is in hand (within `proxy.max_body_bytes`).
    pub(crate) body: Option<&'a [u8]>,
}

/// Puts the credentials Tally holds for `provider` on a request, where it needs them: a key
/// when the request carries none ([`held_key`]), or an AWS signature for the real host.
pub(crate) async fn credentials(
    ctx: &mut Ctx,
    provider: &Provider,
    leaving: &Leaving<'_>,
    headers: &mut HeaderMap,
) -> Result<(), Refusal> {
    if let Some(signer) = &provider.aws {
        return aws_sign(ctx, provider, signer, leaving, headers);
    }
    if let Some(account) = &provider.service_account {
        // Google's SDKs always send a bearer token; one that is not an OAuth access token
        // (`ya29.…`) is a placeholder, and Tally's replaces it.
        let own_token = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| headers::bare_key(v).starts_with("ya29."));
        if !own_token {
            return service_account_token(ctx, provider, account, headers).await;
        }
    }
    held_key(ctx, provider, headers)
}

/// The one refusal for credentials Tally should hold and cannot use: `why` names the
/// provider and the setting.
fn missing_credentials(provider: &Provider, why: String) -> Refusal {
    Refusal::new(StatusCode::UNAUTHORIZED, "tally_missing_credentials", why)
        .details(serde_json::json!({ "provider": provider.name }))
}

/// Vertex: a request without a token of its own gets one minted from the service account
/// Tally holds (cached; see `credentials::google`).
async fn service_account_token(
    ctx: &mut Ctx,
    provider: &Provider,
    account: &Result<Arc<crate::credentials::google::ServiceAccount>, String>,
    headers: &mut HeaderMap,
) -> Result<(), Refusal> {
    let refuse = |why: String| missing_credentials(provider, why);
    let account = account.as_ref().map_err(|e| refuse(e.clone()))?;
    let value = account.authorization(&ctx.client).await.map_err(|e| {
        ctx.shared.metrics.upstream_error(&provider.name, "token");
        tracing::warn!(provider = %provider.name, error = %e, "minting an access token failed");
        refuse(e)
    })?;
    headers.insert(header::AUTHORIZATION, value.clone());
    let s = ctx.exchange.state();
    s.record.api_key_hint = Some(account.email().to_owned());
    s.presented.hold(value);
    Ok(())
}

/// Bedrock: a Bedrock API key (`Authorization: Bearer`) passes through; anything else (a
/// signature made for Tally's host, or nothing) is replaced by Tally's own signature, or by
/// the API key Tally holds.
fn aws_sign(
    ctx: &mut Ctx,
    provider: &Provider,
    signer: &crate::credentials::aws::AwsSigner,
    leaving: &Leaving<'_>,
    headers: &mut HeaderMap,
) -> Result<(), Refusal> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.trim_start()
                .get(..7)
                .is_some_and(|s| s.eq_ignore_ascii_case("bearer "))
        });
    if bearer {
        return Ok(());
    }
    let Ok(uri) = provider.upstream_uri(leaving.path, leaving.query) else {
        // send_upstream refuses the same URL with its reason.
        return Ok(());
    };
    let Some(body) = leaving.body else {
        let limit = ctx.shared.settings.max_body_bytes;
        return Err(Refusal::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "tally_request_body",
            format!(
                "a request to {} must fit in proxy.max_body_bytes ({limit} bytes): Tally signs it for AWS, and the signature covers the whole body",
                provider.name
            ),
        ));
    };
    match signer.sign(leaving.method, &uri, headers, body) {
        Ok(()) => {
            ctx.exchange.state().record.api_key_hint = signer.hint();
            Ok(())
        }
        Err(why) if matches!(provider.held_key, Some(crate::providers::HeldKey::Ready(_))) => {
            tracing::debug!(provider = %provider.name, reason = %why, "no AWS credentials; sending the Bedrock API key Tally holds");
            headers.remove(header::AUTHORIZATION);
            ctx.exchange.state().presented = Default::default();
            held_key(ctx, provider, headers)
        }
        Err(why) => Err(missing_credentials(provider, why)),
    }
}

/// A request that carries no key gets the one Tally holds for `provider`, if any; when that
/// key is configured but unavailable, the request is refused naming the setting, rather than
/// sent to fail upstream with a less helpful 401.
fn held_key(ctx: &mut Ctx, provider: &Provider, headers: &mut HeaderMap) -> Result<(), Refusal> {
    let Some(held) = &provider.held_key else {
        return Ok(());
    };
    let s = ctx.exchange.state();
    if !s.presented.is_empty() {
        return Ok(());
    }
    match held {
        crate::providers::HeldKey::Ready(value) => {
            let (name, _) = provider.format.adapter().held_key_header();
            headers.insert(HeaderName::from_static(name), value.clone());
            s.record.api_key_hint = headers::key_hint(headers, &[name]);
            s.presented.hold(value.clone());
            Ok(())
        }
        crate::providers::HeldKey::Missing(why) => Err(missing_credentials(provider, why.clone())),
    }
}

/// Sends one request upstream and waits (bounded) for its response head.
pub(crate) async fn send_upstream(
    shared: &Shared,
    client: &UpstreamClient,
    provider: &Provider,
    out: Outbound<'_>,
) -> Result<Response<Incoming>, Refusal> {
    let uri = provider.upstream_uri(out.path, out.query).map_err(|e| {
        Refusal::new(
            StatusCode::BAD_REQUEST,
            "tally_bad_path",
            format!("invalid upstream URL: {e}"),
        )
    })?;
    let mut upstream_req = Request::new(out.body);
    *upstream_req.method_mut() = out.method.clone();
    *upstream_req.uri_mut() = uri;
    *upstream_req.headers_mut() = out.headers;
    let timeout = shared.settings.upstream_timeout;
    match tokio::time::timeout(timeout, client.request(upstream_req)).await {
        Ok(Ok(r)) => Ok(r),
        Ok(Err(e)) => {
            let detail = crate::body::error_chain(&e);
            shared.metrics.upstream_error(&provider.name, "connect");
            tracing::warn!(provider = %provider.name, error = %detail, "upstream request failed");
            Err(Refusal::new(
                StatusCode::BAD_GATEWAY,
                "tally_upstream_unreachable",
                format!("upstream {} unreachable: {detail}", provider.origin()),
            ))
        }
        Err(_) => {
            shared.metrics.upstream_error(&provider.name, "timeout");
            Err(Refusal::new(
                StatusCode::GATEWAY_TIMEOUT,
                "tally_upstream_timeout",
                format!(
                    "upstream {} did not answer within {} ms",
                    provider.origin(),
                    timeout.as_millis()
                ),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

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
