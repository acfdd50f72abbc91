//! The body-head phase: read up to `max_body_bytes` of the request body before forwarding.
//!
//! LLM request bodies are small JSON documents the upstream cannot act on before it has them
//! whole, so reading them up to a bound costs no latency that matters and tells Tally the
//! model, the stream flag and the user (read by the format the way its upstream will). A
//! larger body streams on untouched after its head.

use bytes::Bytes;
use http::StatusCode;
use hyper::body::Incoming;

use super::{Ctx, Refusal};
use crate::body::read_head;
use crate::formats::RequestFacts;
use crate::headers::Attribution;

/// The start of the request body, and what it says.
pub(crate) struct BodyHead {
    /// Up to `max_body_bytes` (or the whole body).
    pub(crate) bytes: Bytes,
    /// The rest, when the body was larger; then `facts` are unknown.
    pub(crate) rest: Option<Incoming>,
    pub(crate) facts: RequestFacts,
}

impl BodyHead {
    /// The whole body is in `bytes`.
    pub(crate) fn complete(&self) -> bool {
        self.rest.is_none()
    }
}

/// Reads the head within `request_body_timeout_ms` and fills the record's model, stream flag,
/// user (the tag wins over the body's), size and logged body.
pub(crate) async fn read(
    ctx: &mut Ctx,
    body: Incoming,
    tags: &Attribution,
) -> Result<BodyHead, Refusal> {
    let settings = &ctx.shared.settings;
    let limit = settings.max_body_bytes;
    let head =
        match tokio::time::timeout(settings.request_body_timeout, read_head(body, limit)).await {
            Ok(Ok(h)) => h,
            Ok(Err(e)) => {
                return Err(Refusal::new(
                    StatusCode::BAD_REQUEST,
                    "tally_request_body",
                    format!("could not read the request body: {e}"),
                ))
            }
            Err(_) => {
                return Err(Refusal::new(
                    StatusCode::REQUEST_TIMEOUT,
                    "tally_request_body",
                    "the request body did not arrive in time",
                ))
            }
        };
    let complete = head.rest.is_none();
    let format = ctx.format();
    let s = ctx.exchange.state();
    let mut facts = if complete {
        format.adapter().request(&s.record.endpoint, &head.bytes)
    } else {
        format
            .adapter()
            .request_head(&s.record.endpoint, &head.bytes)
    };
    if let Some(d) = &facts.deployment {
        facts.model = ctx
            .shared
            .providers
            .get(&s.record.provider)
            .and_then(|p| p.deployments.get(d))
            .cloned();
    }
    let r = &mut s.record;
    for (name, value) in format.adapter().path_properties(&r.endpoint) {
        r.properties.entry(name.to_owned()).or_insert(value);
    }
    s.units = facts.units.clone();
    let r = &mut s.record;
    r.model = facts.model.clone();
    r.stream = facts.stream;
    r.user_id = tags.user_id.clone().or_else(|| facts.user.clone());
    r.request_bytes = head.bytes.len() as u64;
    s.request_truncated = !complete;
    s.request_head = if complete {
        head.bytes.clone()
    } else {
        head.bytes.slice(..limit.min(head.bytes.len()))
    };
    Ok(BodyHead {
        bytes: head.bytes,
        rest: head.rest,
        facts,
    })
}

/// A JSON body Tally cannot read is a request it cannot price: its model is unknown, so no
/// usage is asked for and no estimate made. Where an enforcing budget or a rate limit is in
/// force, such a body is refused rather than let through for free. (Bodies that are not JSON,
/// like audio uploads, and bodies too large to read whole are not judged here.)
pub(crate) fn readable_when_metered(
    ctx: &Ctx,
    head: &BodyHead,
    tags: &Attribution,
    headers: &http::HeaderMap,
) -> Result<(), Refusal> {
    let stages = &ctx.shared.stages;
    let metered = stages.budgets.as_ref().is_some_and(|b| b.enforcing())
        || stages
            .rate_limits
            .as_ref()
            .is_some_and(|l| l.has_policies() || tags.rate_limit.is_some());
    let claims_json = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.trim_start()
                .to_ascii_lowercase()
                .starts_with("application/json")
        });
    if !metered || !claims_json || !head.complete() || head.bytes.is_empty() || head.facts.json {
        return Ok(());
    }
    Err(Refusal::new(
        StatusCode::BAD_REQUEST,
        "tally_unreadable_body",
        "the request body is not a JSON object, so its cost cannot be known; budgets and rate limits apply here, so it is refused",
    ))
}
