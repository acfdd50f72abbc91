//! Optional stages on the request path: the privacy guard, budget enforcement, rate limits,
//! guardrail hooks, the response cache and routers (retries, fallbacks, load balancing). Each
//! stage is one module holding both its engine and its request-path glue: the phase function
//! `phases::run` calls, and the `StageHook` through which it sees the response and the
//! finished record.
//! Budgets' engine is in `tally-budgets` and the guard's detectors in `tally-privacy`; only
//! their phases are here.
//!
//! Each stage is built from its config table once at start and kept in [`Stages`]. A stage a
//! request does not use costs it one branch: the cache is consulted only when the request or
//! the provider asks for it, rate limits only when a policy exists or the request names one,
//! the guard only when `[privacy.request]` names a detector, routers only for
//! `/router/<name>/…`, `Tally-Router` or an aliased model.

pub(crate) mod budget;
pub mod cache;
pub mod guard;
pub mod guardrail;
pub mod ratelimit;
mod redis;
pub mod routing;

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Deserialize;

pub use cache::{CacheConfig, ResponseCache};
pub use guardrail::{GuardrailConfig, Guardrails};
pub use ratelimit::{PolicyConfig, RateLimiter, RateLimitsConfig};
pub use routing::{RouterConfig, Routers, Strategy, TargetConfig};

use crate::providers::Providers;

/// Where a stage keeps its state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// In this process; each replica has its own.
    #[default]
    Memory,
    /// In Redis, shared by every replica pointed at it.
    Redis,
}

/// A stage's config that cannot work.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StageError {
    /// A value is out of range or inconsistent; the message names it.
    #[error("{0}")]
    Invalid(String),
    /// A Redis URL that cannot be used.
    #[error("{what}: redis URL {url} cannot be used: {reason}")]
    Redis {
        /// Which stage.
        what: &'static str,
        /// The URL, password removed.
        url: String,
        /// Why.
        reason: String,
    },
}

/// The stage tables of the config file: `[cache]`, `[rate_limits]` and `[routers.<name>]`.
#[derive(Debug, Clone, Default)]
pub struct StagesConfig {
    /// `[cache]`.
    pub cache: CacheConfig,
    /// `[rate_limits]`.
    pub rate_limits: RateLimitsConfig,
    /// `[routers.<name>]`.
    pub routers: BTreeMap<String, RouterConfig>,
    /// `[[guardrails]]`.
    pub guardrails: Vec<GuardrailConfig>,
}

impl StagesConfig {
    /// Whether `name` is something a request can be sent to: a provider or a router.
    pub fn is_destination(&self, name: &str, providers: &Providers) -> bool {
        providers.get(name).is_some() || self.routers.contains_key(name)
    }

    /// Checks everything but the Redis connections, without building anything that needs a
    /// runtime: routers against the providers, policies, and the provider lists of the cache
    /// and the policies (each name must be a provider or a router).
    pub fn validate(&self, providers: &Providers) -> Result<(), StageError> {
        Routers::build(&self.routers, providers)?;
        RateLimiter::build(&RateLimitsConfig {
            backend: Backend::Memory,
            ..self.rate_limits.clone()
        })?;
        let known = |name: &str| self.is_destination(name, providers);
        Guardrails::build(&self.guardrails, providers, &known)?;
        let lists = std::iter::once(("cache.providers".to_owned(), &self.cache.providers)).chain(
            self.rate_limits.policies.iter().map(|p| {
                (
                    format!("rate_limits.policies {:?}: providers", p.name),
                    &p.providers,
                )
            }),
        );
        for (what, names) in lists {
            if let Some(bad) = names.iter().find(|n| !known(n)) {
                return Err(StageError::Invalid(format!(
                    "{what}: {bad:?} is neither a provider nor a router"
                )));
            }
        }
        Ok(())
    }
}

/// Optional stages on the request path. Each one absent costs a branch per request.
#[derive(Clone, Default)]
pub struct Stages {
    /// Budget enforcement: requests in a scope an enforcing budget has exhausted get 429.
    pub budgets: Option<Arc<tally_budgets::Engine>>,
    /// The response cache.
    pub cache: Option<Arc<ResponseCache>>,
    /// Rate limits.
    pub rate_limits: Option<Arc<RateLimiter>>,
    /// Routers.
    pub routers: Option<Arc<Routers>>,
    /// Tally keys (the authenticate phase); none: every request passes with its own key.
    pub auth: Option<Arc<crate::phases::authenticate::Auth>>,
    /// The privacy guard (`[privacy.request]`): block or mask before forwarding.
    pub guard: Option<Arc<tally_privacy::RequestGuard>>,
    /// Guardrail hooks (`[[guardrails]]`).
    pub guardrails: Option<Arc<Guardrails>>,
    /// OpenTelemetry spans (`[otel]`). Not a phase: a span is begun with the request, named in
    /// the `traceparent` sent upstream, and ended with the record.
    pub tracing: Option<Arc<tally_otel::Tracer>>,
}

impl Stages {
    /// Builds the cache, rate limiter and routers (budgets are added by the caller). Redis
    /// backends connect lazily, so this must run inside Tokio.
    pub fn build(config: &StagesConfig, providers: &Providers) -> Result<Self, StageError> {
        let routers = Routers::build(&config.routers, providers)?;
        let known = |name: &str| config.is_destination(name, providers);
        let guardrails = Guardrails::build(&config.guardrails, providers, &known)?;
        Ok(Self {
            budgets: None,
            cache: Some(Arc::new(ResponseCache::build(&config.cache)?)),
            rate_limits: Some(Arc::new(RateLimiter::build(&config.rate_limits)?)),
            routers: (!routers.is_empty()).then(|| Arc::new(routers)),
            auth: None,
            guard: None,
            guardrails: guardrails.map(Arc::new),
            tracing: None,
        })
    }
}
