//! Rate limits: requests, tokens or cost per window, keyed by user, API key, property, or
//! global; and each Tally key's own `rpm` and `tpm`.
//!
//! Tokens and cost are only known once a response ends, so those policies are checked before
//! a request (is the counter already over?) and charged after it. Requests in flight when a
//! counter fills are not stopped: a token limit can be overshot by the tokens of the requests
//! admitted before the first of them finished (README, "Rate limits").
//!
//! The algorithm is GCRA (the generic cell rate algorithm): one number per key, the
//! theoretical arrival time (TAT) of the next request. A policy of `q` per window `w` spaces
//! cells `w/q` apart and tolerates a burst of `q`. It is written here rather than taken from
//! `governor` for two reasons: cost limits are charged *after* the response (its cost is only
//! known then), which needs a "check without spending" and a "spend without checking" that
//! `governor` does not offer; and the Redis backend must run the same arithmetic in a Lua
//! script, so both backends share one `decide` and cannot drift apart.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::header::{HeaderMap, HeaderName, HeaderValue, RETRY_AFTER};
use http::StatusCode;
use prometheus_client::metrics::counter::Counter;
use serde::Deserialize;
use serde_json::json;
use tally_ingest::Record;

use super::redis::{Redis, RedisError};
use super::{Backend, StageError};
use crate::exchange::StageHook;
use crate::headers::Attribution;
use crate::metrics::PolicyLabels;
use crate::phases::{Ctx, Refusal};
use crate::ProxyMetrics;

/// `[rate_limits]` as written in the config file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitsConfig {
    /// `memory` (default, per replica) or `redis` (shared by every replica).
    pub backend: Backend,
    /// Redis backend: `redis://host:6379/0`.
    pub redis_url: Option<String>,
    /// Redis backend: deadline per check, milliseconds (250 when unset). A Redis that does not
    /// answer admits the request (fail open) and counts an error.
    pub redis_timeout_ms: Option<u64>,
    /// The policies every request is checked against.
    pub policies: Vec<PolicyConfig>,
    /// Honour a request's own `Tally-RateLimit-Policy` / `Helicone-RateLimit-Policy` header;
    /// true when unset (Helicone's behaviour). False ignores the header (it is still stripped).
    pub header_policies: Option<bool>,
    /// Memory backend: most counters kept ([`DEFAULT_MAX_KEYS`] when unset). Past it, expired
    /// counters go first, then a tenth of the rest, counted in
    /// `tally_rate_limit_evictions_total`: an evicted counter starts afresh.
    pub max_keys: Option<usize>,
}

/// Counters the memory backend keeps when `rate_limits.max_keys` is unset: about 15 MB.
pub const DEFAULT_MAX_KEYS: usize = 100_000;

/// One `[[rate_limits.policies]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// Shown in errors and headers.
    pub name: String,
    /// Requests, or US dollars, per window.
    pub limit: f64,
    /// Window length, seconds.
    pub window_secs: u64,
    /// `requests` (default) or `usd`.
    #[serde(default)]
    pub unit: Unit,
    /// `global` (default), `user`, `key` (the caller's API key) or `property:<name>`.
    #[serde(default = "global")]
    pub scope: String,
    /// Only requests to these providers or routers; every request when empty.
    #[serde(default)]
    pub providers: Vec<String>,
}

fn global() -> String {
    "global".into()
}

/// What a policy counts.
#[derive(Debug, Clone, Copy, PartialEq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Unit {
    /// Each request is one cell.
    #[default]
    Requests,
    /// Each US dollar of cost is one cell (charged when the response ends).
    Usd,
    /// Each US cent is one cell (Helicone's `u=cents`).
    Cents,
    /// Each token, input plus output, is one cell (charged when the response ends).
    Tokens,
}

/// Whose requests share a counter.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Scope {
    Global,
    User,
    Key,
    Property(String),
}

impl Scope {
    fn parse(s: &str) -> Result<Self, String> {
        match s {
            "global" => Ok(Scope::Global),
            "user" => Ok(Scope::User),
            "key" | "api_key" => Ok(Scope::Key),
            p => match p.strip_prefix("property:") {
                Some(name) if !name.is_empty() => Ok(Scope::Property(name.to_ascii_lowercase())),
                _ => Err(format!(
                    "scope {s:?} is not global, user, key or property:<name>"
                )),
            },
        }
    }
}

/// A validated policy.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub(crate) name: String,
    pub(crate) quota: f64,
    pub(crate) window_ms: f64,
    pub(crate) unit: Unit,
    pub(crate) scope: Scope,
    pub(crate) providers: Vec<String>,
}

impl Policy {
    fn from_config(c: &PolicyConfig) -> Result<Self, String> {
        if !(c.limit.is_finite() && c.limit > 0.0) {
            return Err(format!("policy {:?}: limit must be above zero", c.name));
        }
        if c.window_secs == 0 || c.window_secs > 366 * 24 * 3600 {
            return Err(format!(
                "policy {:?}: window_secs must be between 1 and 31622400",
                c.name
            ));
        }
        if c.unit == Unit::Requests && c.limit.fract() != 0.0 {
            return Err(format!(
                "policy {:?}: a request limit must be a whole number",
                c.name
            ));
        }
        Ok(Self {
            name: c.name.clone(),
            quota: c.limit,
            window_ms: c.window_secs as f64 * 1000.0,
            unit: c.unit,
            scope: Scope::parse(&c.scope).map_err(|e| format!("policy {:?}: {e}", c.name))?,
            providers: c.providers.clone(),
        })
    }

    /// Parses Helicone's header syntax: `100;w=60`, optionally `;u=request|cents` and
    /// `;s=user|<property>`.
    pub fn parse_header(value: &str) -> Result<Self, String> {
        let mut parts = value.split(';').map(str::trim);
        let quota: u64 = parts
            .next()
            .and_then(|q| q.parse().ok())
            .filter(|q| *q > 0)
            .ok_or_else(|| {
                format!("{value:?} does not start with a quota above zero, as in 100;w=60")
            })?;
        let (mut window, mut unit, mut scope) = (None, Unit::Requests, Scope::Global);
        for p in parts.filter(|p| !p.is_empty()) {
            let (k, v) = p
                .split_once('=')
                .ok_or_else(|| format!("{p:?} is not key=value"))?;
            match k.trim() {
                "w" => {
                    window = Some(
                        v.trim()
                            .parse::<u64>()
                            .ok()
                            .filter(|w| (1..=366 * 24 * 3600).contains(w))
                            .ok_or_else(|| format!("window {v:?} is not whole seconds"))?,
                    )
                }
                "u" => {
                    unit = match v.trim() {
                        "request" | "requests" => Unit::Requests,
                        "cents" => Unit::Cents,
                        other => return Err(format!("unit {other:?} is not request or cents")),
                    }
                }
                "s" => {
                    scope = match v.trim() {
                        "user" => Scope::User,
                        "key" => Scope::Key,
                        "global" => Scope::Global,
                        "" => return Err("segment is empty".into()),
                        prop => Scope::Property(prop.to_ascii_lowercase()),
                    }
                }
                other => return Err(format!("unknown parameter {other:?}")),
            }
        }
        let window = window.ok_or_else(|| format!("{value:?} has no window (w=<seconds>)"))?;
        Ok(Self {
            // One bucket per distinct header policy.
            name: format!("header:{quota};w={window};u={unit:?};s={scope:?}"),
            quota: quota as f64,
            window_ms: window as f64 * 1000.0,
            unit,
            scope,
            providers: Vec::new(),
        })
    }

    /// `RateLimit-Policy` form: `100;w=60`.
    pub(crate) fn describe(&self) -> String {
        format!("{};w={}", self.quota, self.window_ms / 1000.0)
    }

    pub(crate) fn is_cost(&self) -> bool {
        self.unit != Unit::Requests
    }

    /// Cells a finished request spends.
    pub(crate) fn cells_for(&self, record: &Record) -> f64 {
        let cost = record.cost_usd.unwrap_or(0.0);
        match self.unit {
            Unit::Requests => 1.0,
            Unit::Usd => cost,
            Unit::Cents => cost * 100.0,
            Unit::Tokens => record
                .tokens
                .map_or(0.0, |t| t.prompt.saturating_add(t.completion) as f64),
        }
    }

    /// A Tally key's own limit: `quota` requests or tokens per minute, counted per key.
    fn per_key(key: &tally_keys::Key, unit: Unit, quota: u64) -> Self {
        let what = if unit == Unit::Tokens { "tpm" } else { "rpm" };
        Self {
            name: format!("key:{}:{what}", key.name),
            quota: quota as f64,
            window_ms: 60_000.0,
            unit,
            scope: Scope::Key,
            providers: Vec::new(),
        }
    }

    pub(crate) fn applies_to(&self, scope_name: &str) -> bool {
        self.providers.is_empty() || self.providers.iter().any(|p| p == scope_name)
    }

    fn interval_ms(&self) -> f64 {
        self.window_ms / self.quota
    }
}

/// Who a request is, for picking its counter.
pub(crate) struct Subject<'a> {
    pub(crate) user_id: Option<&'a str>,
    pub(crate) key_id: Option<&'a str>,
    pub(crate) properties: &'a std::collections::BTreeMap<String, String>,
}

/// The counter key of `policy` for `subject`. A request without the scope's value (no user
/// id, say) shares the `-` counter with every other such request.
pub(crate) fn counter_key(policy: &Policy, subject: &Subject<'_>) -> String {
    let v = match &policy.scope {
        Scope::Global => Some("*"),
        Scope::User => subject.user_id,
        Scope::Key => subject.key_id,
        Scope::Property(p) => subject.properties.get(p).map(String::as_str),
    };
    format!("tally:rl:{}:{}", policy.name, v.unwrap_or("-"))
}

/// The outcome of a check, with what the `RateLimit-*` headers say.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Decision {
    pub(crate) allowed: bool,
    pub(crate) limit: f64,
    pub(crate) remaining: u64,
    /// Until the counter is back to full, ms.
    pub(crate) reset_ms: u64,
    /// Until a refused request would be admitted, ms (0 when allowed).
    pub(crate) retry_after_ms: u64,
}

/// GCRA: whether a request costing `cells` (0 for a cost policy's admission check) fits, and
/// the new TAT. `ahead` is how far the TAT is ahead of now, ms (never negative).
fn gcra(policy: &Policy, ahead: f64, cells: f64) -> (bool, f64) {
    let after = ahead + cells * policy.interval_ms();
    let fits = if cells > 0.0 {
        after <= policy.window_ms + 1e-6
    } else {
        ahead < policy.window_ms
    };
    (fits, after)
}

/// The headers' figures from the TAT's lead over now after the decision.
fn decide(policy: &Policy, allowed: bool, ahead_before: f64, ahead_after: f64) -> Decision {
    let t = policy.interval_ms();
    let ahead = if allowed { ahead_after } else { ahead_before };
    let room = (policy.window_ms - ahead).max(0.0);
    let retry_after_ms = if allowed {
        0
    } else if policy.is_cost() {
        (ahead_before - policy.window_ms).max(0.0) as u64 + 1
    } else {
        (ahead_before + t - policy.window_ms).max(0.0).ceil() as u64
    };
    Decision {
        allowed,
        limit: policy.quota,
        remaining: (room / t + 1e-9).floor() as u64,
        reset_ms: ahead.ceil() as u64,
        retry_after_ms,
    }
}

/// GCRA in Redis: the same arithmetic as [`gcra`], with Redis's clock so replicas agree.
/// Returns `{allowed, ahead_before, ahead_after}` as strings (Lua numbers would be truncated).
const SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local interval = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local cells = tonumber(ARGV[3])
local check = ARGV[4] == 'check'
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local before = tat - now
local after = before + cells * interval
local fits
if cells > 0 then fits = after <= window + 0.000001 else fits = before < window end
if check and not fits then
  return {0, tostring(before), tostring(before)}
end
if cells > 0 then
  redis.call('SET', KEYS[1], tostring(now + after), 'PX', math.ceil(after) + 1000)
end
return {1, tostring(before), tostring(after)}
";

enum Store {
    /// TAT per key, ms since an arbitrary epoch (tokio's clock, so tests can pause time).
    Memory(Mutex<MemoryCounters>),
    Redis(Redis, redis::Script),
}

struct MemoryCounters {
    tat: HashMap<String, f64>,
    since_sweep: usize,
    max_keys: usize,
    /// Counters evicted to stay within `max_keys`.
    evicted: Counter,
}

impl MemoryCounters {
    /// Makes room for one more counter: expired ones first (they are the same as absent), then,
    /// if a flood of new keys (a user id per request under a year-long header policy, say) still
    /// fills the map, an arbitrary tenth, so the cost stays amortised O(1) per request.
    fn make_room(&mut self, now: f64) {
        if self.tat.len() < self.max_keys {
            return;
        }
        self.tat.retain(|_, t| *t > now);
        self.since_sweep = 0;
        if self.tat.len() < self.max_keys {
            return;
        }
        let n = (self.max_keys / 10).max(1);
        let victims: Vec<String> = self.tat.keys().take(n).cloned().collect();
        for k in &victims {
            self.tat.remove(k);
        }
        self.evicted.inc_by(victims.len() as u64);
    }
}

/// The stage, built once from [`RateLimitsConfig`].
pub struct RateLimiter {
    policies: Vec<Arc<Policy>>,
    store: Store,
    epoch: tokio::time::Instant,
    header_policies: bool,
    /// Counters the memory backend evicted to stay within `max_keys`.
    pub(crate) evictions: Counter,
}

impl RateLimiter {
    /// Builds the stage; `None` when no policy is configured. The Redis backend connects
    /// lazily, so this must run inside Tokio.
    pub fn build(c: &RateLimitsConfig) -> Result<Self, StageError> {
        let policies = c
            .policies
            .iter()
            .map(|p| Policy::from_config(p).map(Arc::new))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| StageError::Invalid(format!("rate_limits.{e}")))?;
        let mut names = std::collections::HashSet::new();
        for p in &policies {
            if !names.insert(&p.name) {
                return Err(StageError::Invalid(format!(
                    "rate_limits: two policies are named {:?}",
                    p.name
                )));
            }
        }
        let evictions = Counter::default();
        let store = match c.backend {
            Backend::Memory => Store::Memory(Mutex::new(MemoryCounters {
                tat: HashMap::new(),
                since_sweep: 0,
                max_keys: c.max_keys.unwrap_or(DEFAULT_MAX_KEYS).max(1),
                evicted: evictions.clone(),
            })),
            Backend::Redis => {
                let url = c.redis_url.as_deref().ok_or_else(|| {
                    StageError::Invalid(
                        "rate_limits.backend = \"redis\" needs rate_limits.redis_url".into(),
                    )
                })?;
                Store::Redis(
                    Redis::connect(
                        url,
                        Duration::from_millis(c.redis_timeout_ms.unwrap_or(250).max(1)),
                        "rate limits",
                    )?,
                    redis::Script::new(SCRIPT),
                )
            }
        };
        Ok(Self {
            policies,
            store,
            epoch: tokio::time::Instant::now(),
            header_policies: c.header_policies.unwrap_or(true),
            evictions,
        })
    }

    /// The configured policies that apply to requests sent to `scope_name`.
    pub(crate) fn policies_for<'a>(
        &'a self,
        scope_name: &'a str,
    ) -> impl Iterator<Item = &'a Arc<Policy>> + 'a {
        self.policies
            .iter()
            .filter(move |p| p.applies_to(scope_name))
    }

    /// Whether any configured policy exists (header policies work regardless).
    pub(crate) fn has_policies(&self) -> bool {
        !self.policies.is_empty()
    }

    fn now_ms(&self) -> f64 {
        self.epoch.elapsed().as_secs_f64() * 1000.0
    }

    /// Checks (and, for request policies, spends one cell of) `policy` for `key`.
    pub(crate) async fn check(&self, policy: &Policy, key: &str) -> Result<Decision, RedisError> {
        let cells = if policy.is_cost() { 0.0 } else { 1.0 };
        let (allowed, before, after) = self.apply(policy, key, cells, true).await?;
        Ok(decide(policy, allowed, before, after))
    }

    /// Spends `cells` of a cost policy after the response, whether or not they fit: the
    /// request has already happened. Never waits: the Redis write runs in the background.
    pub(crate) fn charge(
        self: &Arc<Self>,
        policy: Arc<Policy>,
        key: String,
        cells: f64,
        on_error: impl FnOnce(RedisError) + Send + 'static,
    ) {
        if !(cells > 0.0 && cells.is_finite()) {
            return;
        }
        match &self.store {
            Store::Memory(m) => {
                self.apply_memory(m, &policy, &key, cells, false);
            }
            Store::Redis(..) => {
                let Ok(rt) = tokio::runtime::Handle::try_current() else {
                    return;
                };
                let this = self.clone();
                rt.spawn(async move {
                    if let Err(e) = this.apply(&policy, &key, cells, false).await {
                        on_error(e);
                    }
                });
            }
        }
    }

    fn apply_memory(
        &self,
        m: &Mutex<MemoryCounters>,
        policy: &Policy,
        key: &str,
        cells: f64,
        check: bool,
    ) -> (bool, f64, f64) {
        let now = self.now_ms();
        let mut m = m.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        m.since_sweep += 1;
        if m.since_sweep > 4096 {
            // Keys whose TAT is in the past are the same as absent keys.
            m.tat.retain(|_, t| *t > now);
            m.since_sweep = 0;
        }
        let before = m.tat.get(key).map_or(0.0, |t| (t - now).max(0.0));
        let (fits, after) = gcra(policy, before, cells);
        if check && !fits {
            return (false, before, before);
        }
        if cells > 0.0 {
            match m.tat.get_mut(key) {
                Some(t) => *t = now + after,
                None => {
                    m.make_room(now);
                    m.tat.insert(key.to_owned(), now + after);
                }
            }
        }
        (true, before, after)
    }

    async fn apply(
        &self,
        policy: &Policy,
        key: &str,
        cells: f64,
        check: bool,
    ) -> Result<(bool, f64, f64), RedisError> {
        match &self.store {
            Store::Memory(m) => Ok(self.apply_memory(m, policy, key, cells, check)),
            Store::Redis(r, script) => {
                let (interval, window) = (policy.interval_ms(), policy.window_ms);
                let mode = if check { "check" } else { "charge" };
                let (ok, before, after): (i64, String, String) = r
                    .run(|mut c| {
                        let mut inv = script.key(key);
                        inv.arg(interval).arg(window).arg(cells).arg(mode);
                        async move { inv.invoke_async(&mut c).await }
                    })
                    .await?;
                let num = |s: &str| s.parse::<f64>().unwrap_or(0.0);
                Ok((ok == 1, num(&before), num(&after)))
            }
        }
    }
}

/// The rate-limit phase: checks the configured policies for this destination and the request's
/// own (`Tally-RateLimit-Policy`); the first refusal is a 429 with `Retry-After`. The tightest
/// admitted policy's figures go into the `RateLimit-*` headers, and cost policies are charged
/// once the record is priced.
pub(crate) async fn admit(
    ctx: &mut Ctx,
    destination: &str,
    tags: &Attribution,
    headers: &HeaderMap,
) -> Result<(), Refusal> {
    let Some(limiter) = ctx.shared.stages.rate_limits.clone() else {
        return Ok(());
    };
    let header_policy = tags
        .rate_limit
        .clone()
        .filter(|_| limiter.header_policies)
        .map(Arc::new);
    let tally_key = ctx.key.clone();
    let key_limits = tally_key
        .as_ref()
        .is_some_and(|k| k.policy.rpm.is_some() || k.policy.tpm.is_some());
    if !limiter.has_policies() && header_policy.is_none() && !key_limits {
        return Ok(());
    }
    let own = tally_key.iter().flat_map(|k| {
        let rpm = k.policy.rpm.map(|q| Policy::per_key(k, Unit::Requests, q));
        let tpm = k.policy.tpm.map(|q| Policy::per_key(k, Unit::Tokens, q));
        rpm.into_iter().chain(tpm).map(Arc::new)
    });
    let policies: Vec<Arc<Policy>> = limiter
        .policies_for(destination)
        .cloned()
        .chain(header_policy)
        .chain(own)
        .collect();
    // A Tally key is the caller's identity; otherwise a digest of the provider key it sent.
    let key_id = match &tally_key {
        Some(k) => Some(format!("tly:{}", k.id)),
        None => policies
            .iter()
            .any(|p| matches!(p.scope, Scope::Key))
            .then(|| key_id(headers))
            .flatten(),
    };
    let mut tightest: Option<(Arc<Policy>, Decision)> = None;
    let mut charges = Vec::new();
    for policy in policies {
        let key = {
            let r = &ctx.exchange.state().record;
            counter_key(
                &policy,
                &Subject {
                    user_id: r.user_id.as_deref(),
                    key_id: key_id.as_deref(),
                    properties: &r.properties,
                },
            )
        };
        let decision = match limiter.check(&policy, &key).await {
            Ok(d) => d,
            Err(e) => {
                // Fail open: a Redis outage must not take the API down with it.
                ctx.shared.metrics.stage_error("rate_limit");
                tracing::warn!(policy = %policy.name, error = %e, "rate limit check failed; admitting the request");
                continue;
            }
        };
        if !decision.allowed {
            return Err(refuse(ctx, &policy, &decision));
        }
        if policy.is_cost() {
            charges.push((policy.clone(), key));
        }
        if tightest
            .as_ref()
            .is_none_or(|(_, d)| decision.remaining < d.remaining)
        {
            tightest = Some((policy, decision));
        }
    }
    if let Some((p, d)) = &tightest {
        rate_limit_headers(&mut ctx.response_headers, p, d);
    }
    if !charges.is_empty() {
        ctx.exchange.hook(Box::new(Charge { limiter, charges }));
    }
    Ok(())
}

fn refuse(ctx: &mut Ctx, policy: &Policy, decision: &Decision) -> Refusal {
    let label = if policy.name.starts_with("header:") {
        "header".to_owned()
    } else {
        policy.name.clone()
    };
    ctx.shared
        .metrics
        .rate_limited
        .get_or_create(&PolicyLabels { policy: label })
        .inc();
    let what = match policy.unit {
        Unit::Requests => "requests",
        Unit::Tokens => "tokens",
        Unit::Usd | Unit::Cents => "spend",
    };
    let retry_secs = decision.retry_after_ms.div_ceil(1000);
    let message = format!(
        "rate limit {:?} reached: {} {what} per {} s; retry in {retry_secs} s",
        policy.name,
        policy.quota,
        policy.window_ms / 1000.0,
    );
    rate_limit_headers(&mut ctx.response_headers, policy, decision);
    Refusal::new(StatusCode::TOO_MANY_REQUESTS, "tally_rate_limited", message)
        .details(json!({
            "policy": policy.name,
            "limit": policy.quota,
            "window_secs": policy.window_ms / 1000.0,
            "retry_after_ms": decision.retry_after_ms,
        }))
        .header(RETRY_AFTER, HeaderValue::from(retry_secs.max(1)))
}

/// `RateLimit-*` headers (IETF draft) for the tightest policy a request was checked against.
fn rate_limit_headers(headers: &mut HeaderMap, policy: &Policy, d: &Decision) {
    let secs = |ms: u64| HeaderValue::from(ms.div_ceil(1000));
    headers.insert(
        HeaderName::from_static("ratelimit-limit"),
        HeaderValue::from(d.limit.floor() as u64),
    );
    headers.insert(
        HeaderName::from_static("ratelimit-remaining"),
        HeaderValue::from(d.remaining),
    );
    headers.insert(HeaderName::from_static("ratelimit-reset"), secs(d.reset_ms));
    if let Ok(v) = HeaderValue::from_str(&policy.describe()) {
        headers.insert(HeaderName::from_static("ratelimit-policy"), v);
    }
}

/// A hex digest of the caller's key, so the `key` rate-limit scope can tell keys apart
/// without the key itself reaching memory dumps of the limiter or Redis.
fn key_id(headers: &HeaderMap) -> Option<String> {
    use sha2::{Digest, Sha256};
    let v = crate::headers::SDK_KEY_HEADERS
        .iter()
        .find_map(|h| headers.get(*h))?;
    let d = Sha256::digest(v.as_bytes());
    Some(d[..12].iter().map(|b| format!("{b:02x}")).collect())
}

/// Charges cost policies once the request's cost is known.
struct Charge {
    limiter: Arc<RateLimiter>,
    charges: Vec<(Arc<Policy>, String)>,
}

impl StageHook for Charge {
    fn on_finish(self: Box<Self>, record: &Record, _complete: bool, metrics: &ProxyMetrics) {
        for (policy, key) in self.charges {
            let cells = policy.cells_for(record);
            let metrics = metrics.clone();
            self.limiter.charge(policy, key, cells, move |e| {
                metrics.stage_error("rate_limit");
                tracing::warn!(error = %e, "could not charge a cost rate limit");
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(limit: f64, window_secs: u64, unit: Unit) -> Policy {
        Policy::from_config(&PolicyConfig {
            name: "p".into(),
            limit,
            window_secs,
            unit,
            scope: "user".into(),
            providers: vec![],
        })
        .expect("valid")
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_policy_admits_exactly_its_quota_then_refills_one_interval_at_a_time() {
        let rl = RateLimiter::build(&RateLimitsConfig::default()).expect("memory");
        let p = policy(5.0, 10, Unit::Requests);
        let mut admitted = 0;
        for _ in 0..8 {
            let d = rl.check(&p, "k").await.expect("memory");
            if d.allowed {
                admitted += 1;
            }
        }
        assert_eq!(admitted, 5);
        let refused = rl.check(&p, "k").await.expect("memory");
        assert!(!refused.allowed);
        assert_eq!(refused.remaining, 0);
        assert_eq!(refused.retry_after_ms, 2_000, "one cell every 10 s / 5");
        // Another key has its own counter.
        assert!(rl.check(&p, "other").await.expect("memory").allowed);
        tokio::time::advance(Duration::from_millis(2_000)).await;
        let d = rl.check(&p, "k").await.expect("memory");
        assert!(d.allowed);
        assert_eq!(d.remaining, 0);
        assert!(!rl.check(&p, "k").await.expect("memory").allowed);
    }

    #[tokio::test(start_paused = true)]
    async fn a_cost_policy_admits_until_spent_and_charges_after_the_fact() {
        let rl = Arc::new(RateLimiter::build(&RateLimitsConfig::default()).expect("memory"));
        let p = Arc::new(policy(1.0, 60, Unit::Usd));
        assert!(rl.check(&p, "k").await.expect("memory").allowed);
        rl.charge(p.clone(), "k".into(), 0.6, |_| {});
        let d = rl.check(&p, "k").await.expect("memory");
        assert!(d.allowed);
        assert_eq!(d.remaining, 0, "{d:?}"); // 0.4 USD of room: less than one whole cell
                                             // Overshoot is charged in full: the request already happened.
        rl.charge(p.clone(), "k".into(), 0.6, |_| {});
        let d = rl.check(&p, "k").await.expect("memory");
        assert!(!d.allowed);
        // 1.2 USD spent of 1 per 60 s: admitted again once 0.2 USD (12 s) has drained.
        assert!((12_000..=12_001).contains(&d.retry_after_ms), "{d:?}");
        tokio::time::advance(Duration::from_millis(12_001)).await;
        assert!(rl.check(&p, "k").await.expect("memory").allowed);
    }

    #[test]
    fn helicone_header_policies_parse_and_bad_ones_say_why() {
        let p = Policy::parse_header("100;w=60;u=cents;s=user").expect("valid");
        assert_eq!(
            (p.quota, p.window_ms, p.unit, p.scope.clone()),
            (100.0, 60_000.0, Unit::Cents, Scope::User)
        );
        let p = Policy::parse_header("10; w=3600; s=Org").expect("valid");
        assert_eq!(p.scope, Scope::Property("org".into()));
        assert_eq!(p.unit, Unit::Requests);
        for (bad, why) in [
            ("", "quota"),
            ("0;w=60", "quota"),
            ("10", "window"),
            ("10;w=0", "window"),
            ("10;w=60;u=tokens", "unit"),
            ("10;w=60;x=1", "unknown"),
            ("10;w", "key=value"),
        ] {
            let e = Policy::parse_header(bad).expect_err(bad);
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn config_policies_are_validated() {
        let mut c = PolicyConfig {
            name: "x".into(),
            limit: 1.5,
            window_secs: 60,
            unit: Unit::Requests,
            scope: "global".into(),
            providers: vec![],
        };
        assert!(Policy::from_config(&c).is_err(), "fractional requests");
        c.unit = Unit::Usd;
        assert!(Policy::from_config(&c).is_ok());
        c.scope = "team".into();
        assert!(Policy::from_config(&c)
            .expect_err("scope")
            .contains("property:<name>"));
    }

    #[tokio::test]
    async fn memory_is_bounded_whatever_the_keys() {
        let limiter = RateLimiter::build(&RateLimitsConfig {
            max_keys: Some(1000),
            ..Default::default()
        })
        .expect("limiter");
        // A year-long header policy and a new user per request: nothing ever expires.
        let p = Policy::parse_header("5;w=31536000;s=user").expect("policy");
        for i in 0..5000 {
            let d = limiter
                .check(&p, &format!("user-{i}"))
                .await
                .expect("check");
            assert!(d.allowed);
        }
        let Store::Memory(m) = &limiter.store else {
            unreachable!("memory backend")
        };
        let kept = m.lock().expect("lock").tat.len();
        assert!(kept <= 1000, "{kept} counters kept");
        assert!(
            limiter.evictions.get() >= 4000,
            "{}",
            limiter.evictions.get()
        );
        // A key still kept is still limited.
        let last = "user-4999";
        for _ in 0..4 {
            assert!(limiter.check(&p, last).await.expect("check").allowed);
        }
        assert!(!limiter.check(&p, last).await.expect("check").allowed);
    }

    #[test]
    fn counters_are_keyed_by_scope() {
        let mut props = std::collections::BTreeMap::new();
        props.insert("org".to_owned(), "acme".to_owned());
        let s = Subject {
            user_id: Some("alice"),
            key_id: None,
            properties: &props,
        };
        let mut p = policy(1.0, 1, Unit::Requests);
        assert_eq!(counter_key(&p, &s), "tally:rl:p:alice");
        p.scope = Scope::Key;
        assert_eq!(counter_key(&p, &s), "tally:rl:p:-");
        p.scope = Scope::Property("org".into());
        assert_eq!(counter_key(&p, &s), "tally:rl:p:acme");
    }
}
