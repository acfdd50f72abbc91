//! Where a request goes, decided in two steps that each happen once.
//!
//! [`route`] reads the path: `/router/<name>/…` names a router, `/<provider>/…` (or `/v1/…`)
//! a provider. That fixes the API the client speaks (the wire format its errors are shaped in)
//! and the path to forward. [`destination`] then picks who serves it, once the tags and the body
//! are known: the path's provider, unless `Tally-Router` or a model alias sends it to a router.

use std::sync::Arc;

use http::request::Parts;
use http::StatusCode;
use serde_json::json;

use super::{Ctx, Refusal};
use crate::formats::{RequestFacts, WireFormat};
use crate::headers::{self, Attribution};
use crate::providers::{Provider, DEFAULT_PROVIDER};
use crate::stages::routing::Router;

/// Who serves a request: one provider, or a router over several.
pub(crate) enum Destination {
    Provider(Arc<Provider>),
    Router(Arc<Router>),
}

impl Destination {
    /// The name stages key their config on: the provider's or the router's.
    pub(crate) fn name(&self) -> &str {
        match self {
            Destination::Provider(p) => &p.name,
            Destination::Router(r) => &r.name,
        }
    }

    /// The wire format the upstream speaks.
    fn format(&self) -> WireFormat {
        match self {
            Destination::Provider(p) => p.format,
            Destination::Router(r) => r.format(),
        }
    }
}

/// What the path says.
pub(crate) struct Route {
    /// The provider or router the path names.
    pub(crate) destination: Destination,
    /// The path to forward, the route's prefix removed.
    pub(crate) forward_path: String,
}

/// The route phase: provider or router by path; sets the record's provider, endpoint and key
/// hint, and the format the client speaks.
pub(crate) fn route(ctx: &mut Ctx, parts: &Parts) -> Result<Route, Refusal> {
    let path = parts.uri.path();
    no_dot_segments(path)?;
    let (destination, forward_path) = match path.strip_prefix("/router/") {
        Some(rest) => {
            let (name, fwd) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
            let fwd = if fwd.is_empty() { "/" } else { fwd };
            ctx.record().provider = "router".to_owned();
            (Destination::Router(router(ctx, name)?), fwd)
        }
        None => match ctx.shared.providers.route(path) {
            Ok((p, fwd)) => (Destination::Provider(p.clone()), fwd),
            Err(e) => {
                let names = ctx.shared.providers.names();
                let message = format!(
                    "unknown provider {:?}; use /v1/... for {DEFAULT_PROVIDER} or one of: {}",
                    e.name,
                    names.join(", ")
                );
                ctx.record().provider = e.name;
                return Err(
                    Refusal::new(StatusCode::NOT_FOUND, "tally_unknown_provider", message)
                        .details(json!({ "providers": names })),
                );
            }
        },
    };
    let format = destination.format();
    let format = format.adapter().for_path(forward_path).unwrap_or(format);
    let s = ctx.exchange.state();
    s.format = Some(format);
    s.record.provider = match &destination {
        Destination::Provider(p) => p.name.clone(),
        Destination::Router(r) => r.targets[0].provider.name.clone(),
    };
    s.record.endpoint = forward_path.to_owned();
    let key_headers = format.adapter().key_headers();
    s.record.api_key_hint = headers::key_hint(&parts.headers, key_headers);
    s.presented =
        crate::secrets::Presented::from_request(&parts.headers, key_headers, parts.uri.query());
    if s.record.api_key_hint.is_none() {
        s.record.api_key_hint = s.presented.query_hint();
    }
    Ok(Route {
        destination,
        forward_path: forward_path.to_owned(),
    })
}

/// The destination phase: a request to a provider goes through a router instead when
/// `Tally-Router` names one or its model is a router's alias. A router must speak the route's
/// wire format, or the body would not fit.
pub(crate) fn destination(
    ctx: &mut Ctx,
    routed: Destination,
    tags: &Attribution,
    facts: &RequestFacts,
) -> Result<Destination, Refusal> {
    let Destination::Provider(_) = &routed else {
        return Ok(with_router_name(ctx, routed));
    };
    let by_header = match tags.router.as_deref() {
        Some(name) => Some(router(ctx, name)?),
        None => None,
    };
    let by_alias = || {
        let routers = ctx.shared.stages.routers.as_ref()?;
        routers.for_alias(facts.model.as_deref()?).cloned()
    };
    let Some(r) = by_header.or_else(by_alias) else {
        return Ok(routed);
    };
    let format = ctx.format();
    if r.format() != format {
        return Err(Refusal::new(
            StatusCode::BAD_REQUEST,
            "tally_router_format",
            format!(
                "router {:?} sends to {:?}-format providers; this route speaks {format:?}, so its body would not fit",
                r.name,
                r.format()
            ),
        ));
    }
    Ok(with_router_name(ctx, Destination::Router(r)))
}

fn with_router_name(ctx: &mut Ctx, d: Destination) -> Destination {
    if let Destination::Router(r) = &d {
        ctx.record().router = Some(r.name.clone());
    }
    d
}

/// Refuses a path with `.` or `..` segments, spelled out or percent-encoded (`%2e%2e`, and
/// `%2f` or a backslash as separators): an upstream that normalises them would resolve
/// `/tenant-a/../tenant-b` outside the provider's `base_url` prefix. No SDK sends such a path.
fn no_dot_segments(path: &str) -> Result<(), Refusal> {
    let decoded = percent_encoding::percent_decode_str(path).decode_utf8_lossy();
    let dotted = decoded
        .split(['/', '\\'])
        .any(|segment| segment == "." || segment == "..");
    if !dotted {
        return Ok(());
    }
    Err(Refusal::new(
        StatusCode::BAD_REQUEST,
        "tally_bad_path",
        format!("the path {path:?} has a '.' or '..' segment; send the path it stands for"),
    ))
}

/// The configured router `name`, or a 404 listing the configured ones.
fn router(ctx: &Ctx, name: &str) -> Result<Arc<Router>, Refusal> {
    let routers = ctx.shared.stages.routers.as_ref();
    if let Some(r) = routers.and_then(|r| r.get(name)) {
        return Ok(r.clone());
    }
    let names = routers.map(|r| r.names()).unwrap_or_default();
    let message = if names.is_empty() {
        format!("unknown router {name:?}; no routers are configured")
    } else {
        format!("unknown router {name:?}; configured: {}", names.join(", "))
    };
    Err(Refusal::new(
        StatusCode::NOT_FOUND,
        "tally_unknown_router",
        message,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_segments_are_refused_however_spelled() {
        for bad in [
            "/tenant-a/../tenant-b/v1/chat/completions",
            "/v1/./chat/completions",
            "/openai/%2e%2e/admin",
            "/openai/%2E%2e/admin",
            "/openai/x%2f..%2fadmin",
            "/openai/x\\..\\admin",
            "/..",
        ] {
            assert!(no_dot_segments(bad).is_err(), "{bad}");
        }
        for good in [
            "/v1/chat/completions",
            "/openai/v1/files/a..b",
            "/x/.well-known",
            "/",
        ] {
            assert!(no_dot_segments(good).is_ok(), "{good}");
        }
    }
}
