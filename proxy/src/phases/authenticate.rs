//! The authenticate phase: whether the caller may use Tally, and as which Tally key.
//!
//! A client presents its Tally key (`tly-…`) wherever its SDK sends a provider key
//! (`Authorization: Bearer`, `x-api-key`, `api-key`, `x-goog-api-key`). Tally checks it against
//! the keyring (by id, then a constant-time hash comparison), removes it from the request, and
//! the send phase puts the provider credential Tally holds in its place. The record carries
//! the key's id and name, never the key.
//!
//! A request with a provider key of its own passes as before, unless `[auth] require_key`.
//! Failed attempts are counted by reason and, past a limit per client address and minute,
//! refused before the keyring is consulted, so a key cannot be guessed at request rate.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use http::header::{HeaderValue, RETRY_AFTER};
use http::{HeaderMap, StatusCode};
use serde_json::json;
use tally_keys::{AuthError, Key, Keyring};

use super::route::Destination;
use super::{Ctx, Refusal};
use crate::formats::RequestFacts;
use crate::headers::{tally_key, SDK_KEY_HEADERS};
use crate::providers::Provider;

/// Failure windows remembered at most; past it, ended windows go first, then all (an
/// attacker spraying addresses can reset the counts, but not grow memory).
const MAX_TRACKED: usize = 10_000;
const WINDOW_MS: i64 = 60_000;

/// `[auth]`, built.
pub struct Auth {
    /// The keys.
    pub keyring: Arc<Keyring>,
    /// Refuse requests without a valid Tally key.
    pub require_key: bool,
    /// Failed authentications allowed per client address per minute.
    pub max_failures_per_minute: u32,
    failures: Mutex<HashMap<IpAddr, (i64, u32)>>,
}

impl Auth {
    /// Authentication against `keyring`.
    pub fn new(keyring: Arc<Keyring>, require_key: bool, max_failures_per_minute: u32) -> Self {
        Self {
            keyring,
            require_key,
            max_failures_per_minute,
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// ms until `peer` may try again, when it has failed too often this minute.
    fn blocked(&self, peer: IpAddr, now: i64) -> Option<i64> {
        let f = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let (start, n) = f.get(&peer)?;
        (now - start < WINDOW_MS && *n >= self.max_failures_per_minute)
            .then(|| start + WINDOW_MS - now)
    }

    fn failed(&self, peer: IpAddr, now: i64) {
        let mut f = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if f.len() >= MAX_TRACKED && !f.contains_key(&peer) {
            f.retain(|_, (start, _)| now - *start < WINDOW_MS);
            if f.len() >= MAX_TRACKED {
                f.clear();
            }
        }
        let e = f.entry(peer).or_insert((now, 0));
        if now - e.0 >= WINDOW_MS {
            *e = (now, 0);
        }
        e.1 = e.1.saturating_add(1);
    }
}

/// The Tally key a request presents: the header it came in and its text.
fn presented(headers: &HeaderMap) -> Option<(&'static str, String)> {
    SDK_KEY_HEADERS.iter().find_map(|h| {
        headers
            .get_all(*h)
            .iter()
            .find_map(|v| Some((*h, tally_key(v)?.to_owned())))
    })
}

pub(crate) fn authenticate(
    ctx: &mut Ctx,
    headers: &mut HeaderMap,
    destination: &Destination,
    facts: &RequestFacts,
) -> Result<(), Refusal> {
    let Some(auth) = ctx.shared.stages.auth.clone() else {
        return Ok(());
    };
    let now = super::now_ms();
    let Some((header, text)) = presented(headers) else {
        if auth.require_key {
            return Err(refuse(ctx, AuthError::Missing));
        }
        return Ok(());
    };
    if let Some(wait_ms) = auth.blocked(ctx.peer, now) {
        ctx.shared.metrics.auth_failure("rate_limited");
        let secs = wait_ms.max(1000) as u64 / 1000;
        return Err(Refusal::new(
            StatusCode::TOO_MANY_REQUESTS,
            "tally_auth_rate_limited",
            format!("too many failed Tally key attempts from this address; retry in {secs} s"),
        )
        .header(RETRY_AFTER, HeaderValue::from(secs.max(1))));
    }
    let key = match auth.keyring.authenticate(&text, now) {
        Ok(k) => k,
        Err(e) => {
            auth.failed(ctx.peer, now);
            return Err(refuse(ctx, e));
        }
    };
    // The key stops here: upstream gets the credential Tally holds instead.
    for h in SDK_KEY_HEADERS {
        if h == header || headers.get(h).and_then(tally_key).is_some() {
            headers.remove(h);
        }
    }
    {
        let s = ctx.exchange.state();
        s.presented.forget_tally_key(&text);
        s.record.key_id = Some(key.id.clone());
        s.record.key_name = Some(key.name.clone());
        s.record.api_key_hint = None;
    }
    allowed(ctx, &key, destination, facts)?;
    ctx.key = Some(key);
    Ok(())
}

fn refuse(ctx: &mut Ctx, e: AuthError) -> Refusal {
    ctx.shared.metrics.auth_failure(e.as_str());
    let code = match e {
        AuthError::Missing => "tally_missing_key",
        _ => "tally_invalid_key",
    };
    Refusal::new(StatusCode::UNAUTHORIZED, code, e.message())
        .details(json!({ "reason": e.as_str() }))
}

/// The key's allow-lists, and whether Tally holds a credential to put in the key's place.
fn allowed(
    ctx: &mut Ctx,
    key: &Key,
    destination: &Destination,
    facts: &RequestFacts,
) -> Result<(), Refusal> {
    let providers: Vec<&Arc<Provider>> = match destination {
        Destination::Provider(p) => vec![p],
        Destination::Router(r) => r.targets.iter().map(|t| &t.provider).collect(),
        // Resolved by the destination phase, which runs first.
        Destination::Unified => Vec::new(),
    };
    let forbidden = |message: String, details| {
        Refusal::new(StatusCode::FORBIDDEN, "tally_key_forbidden", message).details(details)
    };
    if !key.allows_provider(destination.name())
        && providers.iter().any(|p| !key.allows_provider(&p.name))
    {
        ctx.shared.metrics.auth_failure("provider");
        return Err(forbidden(
            format!(
                "key {:?} may not use {:?}; it may use: {}",
                key.name,
                destination.name(),
                key.policy.providers.join(", ")
            ),
            json!({ "key": key.name, "provider": destination.name() }),
        ));
    }
    if !key.allows_model(facts.model.as_deref()) {
        ctx.shared.metrics.auth_failure("model");
        let model = facts.model.as_deref().unwrap_or("(none)");
        return Err(forbidden(
            format!(
                "key {:?} may not use model {model:?}; it may use: {}",
                key.name,
                key.policy.models.join(", ")
            ),
            json!({ "key": key.name, "model": model }),
        ));
    }
    if let Some(p) = providers.iter().find(|p| !holds_credential(p)) {
        return Err(Refusal::new(
            StatusCode::UNAUTHORIZED,
            "tally_missing_credentials",
            format!(
                "provider {:?} has no credential configured in Tally, so a Tally key cannot \
                 be swapped for one; set [providers.{}] api_key",
                p.name, p.name
            ),
        )
        .details(json!({ "provider": p.name })));
    }
    Ok(())
}

fn holds_credential(p: &Provider) -> bool {
    p.held_key.is_some() || p.aws.is_some() || p.service_account.is_some()
}
