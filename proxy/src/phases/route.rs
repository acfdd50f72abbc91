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
use crate::formats::RequestFacts;
use crate::headers::{self, Attribution};
use crate::providers::{Provider, DEFAULT_PROVIDER};
use crate::stages::routing::Router;
use crate::translation;

/// Who serves a request: one provider, or a router over several. A request on the unified
/// API is `Unified` until its body's model picks one of the other two.
pub(crate) enum Destination {
    Provider(Arc<Provider>),
    Router(Arc<Router>),
    Unified,
}

impl Destination {
    /// The name stages key their config on: the provider's or the router's.
    pub(crate) fn name(&self) -> &str {
        match self {
            Destination::Provider(p) => &p.name,
            Destination::Router(r) => &r.name,
            Destination::Unified => "unified",
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
    let (destination, forward_path, format) = if let Some(rest) = path.strip_prefix("/router/") {
        let (name, fwd) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let fwd = if fwd.is_empty() { "/" } else { fwd };
        ctx.record().provider = "router".to_owned();
        let r = router(ctx, name)?;
        // A router may mix formats: on a chat path the client speaks the dialect the path
        // says, which the first target's format decides only when it is the same dialect.
        let own = r.format().adapter().for_path(fwd).unwrap_or(r.format());
        let format = match translation::client_format(fwd) {
            Some(f) if translation::dialect(f) != translation::dialect(own) => f,
            _ => own,
        };
        (Destination::Router(r), fwd, format)
    } else if let Some(rest) = path.strip_prefix(translation::UNIFIED_PREFIX) {
        let fwd = &path[translation::UNIFIED_PREFIX.len() - 1..];
        let format = translation::ENDPOINTS
            .contains(&fwd)
            .then(|| translation::client_format(fwd))
            .flatten();
        let Some(format) = format else {
            ctx.record().provider = "unified".to_owned();
            return Err(Refusal::new(
                StatusCode::NOT_FOUND,
                "tally_unified_path",
                format!(
                    "the unified API has no endpoint /{rest}; it serves {}",
                    translation::ENDPOINTS.join(" and ")
                ),
            ));
        };
        ctx.exchange.state().unified = true;
        (Destination::Unified, fwd, format)
    } else {
        match ctx.shared.providers.route(path) {
            Ok((p, fwd)) => {
                let format = p.format.adapter().for_path(fwd).unwrap_or(p.format);
                (Destination::Provider(p.clone()), fwd, format)
            }
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
        }
    };
    let s = ctx.exchange.state();
    s.format = Some(format);
    s.record.provider = match &destination {
        Destination::Provider(p) => p.name.clone(),
        Destination::Router(r) => r.targets[0].provider.name.clone(),
        Destination::Unified => "unified".to_owned(),
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
/// `Tally-Router` names one or its model is a router's alias; a request on the unified API goes
/// where its model says (`provider/model`, or a router's alias). A router whose targets speak
/// another format than the route's translates for them (`translation.rs`).
pub(crate) fn destination(
    ctx: &mut Ctx,
    routed: Destination,
    tags: &Attribution,
    facts: &mut RequestFacts,
) -> Result<Destination, Refusal> {
    if let Destination::Router(_) = &routed {
        return Ok(with_router_name(ctx, routed));
    }
    let by_header = match tags.router.as_deref() {
        Some(name) => Some(router(ctx, name)?),
        None => None,
    };
    let by_alias = || {
        let routers = ctx.shared.stages.routers.as_ref()?;
        routers.for_alias(facts.model.as_deref()?).cloned()
    };
    if let Some(r) = by_header.or_else(by_alias) {
        if !matches!(routed, Destination::Unified) {
            translatable(ctx, &r)?;
        }
        return Ok(with_router_name(ctx, Destination::Router(r)));
    }
    match routed {
        Destination::Unified => unified(ctx, facts),
        other => Ok(other),
    }
}

/// A router whose targets speak another format than the route can only serve a chat path,
/// the one thing Tally translates.
fn translatable(ctx: &mut Ctx, r: &Router) -> Result<(), Refusal> {
    let format = ctx.format();
    let path = ctx.exchange.record_ref().endpoint.clone();
    let mixed = r.targets.iter().any(|t| t.provider.format != format);
    if !mixed || translation::client_format(&path).is_some() {
        return Ok(());
    }
    Err(Refusal::new(
        StatusCode::BAD_REQUEST,
        "tally_router_format",
        format!(
            "router {:?} has targets that speak another format than {format:?}; Tally translates {} only, not {path}",
            r.name,
            translation::ENDPOINTS.join(" and ")
        ),
    ))
}

/// A unified request's provider, from its model: `provider/model`. The record's model becomes
/// the one called. An unknown model is a 404 listing what is known.
fn unified(ctx: &mut Ctx, facts: &mut RequestFacts) -> Result<Destination, Refusal> {
    let model = facts.model.clone().unwrap_or_default();
    let found = model
        .split_once('/')
        .and_then(|(p, m)| Some((ctx.shared.providers.get(p)?.clone(), m)))
        .filter(|(_, m)| !m.is_empty());
    let Some((provider, called)) = found else {
        let mut known: Vec<String> = ctx
            .shared
            .stages
            .routers
            .as_ref()
            .map(|r| r.aliases())
            .unwrap_or_default();
        known.extend(
            ctx.shared
                .providers
                .names()
                .into_iter()
                .map(|p| format!("{p}/<model>")),
        );
        let message = if model.is_empty() {
            "the request names no model; the unified API routes by model".to_owned()
        } else {
            format!("unknown model {model:?}")
        };
        return Err(Refusal::new(
            StatusCode::NOT_FOUND,
            "tally_unknown_model",
            format!(
                "{message}: use provider/model or an alias; known: {}",
                known.join(", ")
            ),
        )
        .details(json!({ "models": known })));
    };
    let s = ctx.exchange.state();
    s.record.provider = provider.name.clone();
    s.record.model = Some(called.to_owned());
    facts.model = Some(called.to_owned());
    Ok(Destination::Provider(provider))
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
