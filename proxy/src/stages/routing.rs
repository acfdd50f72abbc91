//! Routers: one client-facing name over several provider targets, with retries, fallbacks,
//! cool-downs and three ways to pick the first target.
//!
//! A router decides *which target next and when*; [`send`], the send phase of a routed
//! request, makes the attempts. The rule that matters most: an attempt is judged on its
//! response head, before any body byte is forwarded, so nothing is ever retried once the client
//! has seen a byte.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicI64, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::{HeaderMap, Response, StatusCode};
use hyper::body::Incoming;
use serde::Deserialize;
use tally_ingest::CacheStatus;
use uuid::Uuid;

use super::StageError;
use crate::formats::{json, WireFormat};
use crate::metrics::AttemptLabels;
use crate::phases::request_body::BodyHead;
use crate::phases::send::{full, send_upstream, wants_injection, Outbound};
use crate::phases::{now_ms, Ctx, Refusal};
use crate::providers::{Provider, Providers};

/// How a router picks the first target of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Strategy {
    /// In the order written; the next one only when one fails.
    #[default]
    Fallback,
    /// At random in proportion to `weight`; the others, in order, as fallbacks.
    Weighted,
    /// Power of two choices over a peak-EWMA of time to response head (times in-flight
    /// requests), so a slow or overloaded target gets less traffic within seconds.
    Latency,
}

/// One `[[routers.<name>.targets]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetConfig {
    /// A configured provider.
    pub provider: String,
    /// Replaces the request body's `model` when this target serves it.
    pub model: Option<String>,
    /// For `weighted`; 1 when unset.
    #[serde(default = "one")]
    pub weight: u32,
}

fn one() -> u32 {
    1
}

/// `[routers.<name>]` as written in the config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RouterConfig {
    /// `fallback` (default), `weighted` or `latency`.
    pub strategy: Strategy,
    /// The providers (and optional model overrides) it sends to.
    pub targets: Vec<TargetConfig>,
    /// Client-facing model names that select this router, e.g. `["fast"]`.
    pub aliases: Vec<String>,
    /// Extra attempts on the same target after a retryable failure (429, 5xx, timeout,
    /// connection error) before moving on; 2 when unset.
    pub retries: u32,
    /// First backoff, milliseconds; doubles per retry, with jitter. 200 when unset.
    pub backoff_ms: u64,
    /// Longest backoff, milliseconds. 5000 when unset.
    pub max_backoff_ms: u64,
    /// A `Retry-After` longer than this moves on to the next target instead of waiting;
    /// 30000 ms when unset.
    pub max_retry_after_ms: u64,
    /// Statuses that move on to the next target once retries are spent (connection errors and
    /// timeouts always do). `[429, 500, 502, 503, 504]` when unset.
    pub fallback_on: Vec<u16>,
    /// Consecutive failed attempts that cool a target down; 3 when unset.
    pub cooldown_after: u32,
    /// How long a cooled-down target is skipped (while another is healthy), seconds.
    pub cooldown_secs: u64,
}

impl Default for RouterConfig {
    fn default() -> Self {
        Self {
            strategy: Strategy::Fallback,
            targets: Vec::new(),
            aliases: Vec::new(),
            retries: 2,
            backoff_ms: 200,
            max_backoff_ms: 5_000,
            max_retry_after_ms: 30_000,
            fallback_on: vec![429, 500, 502, 503, 504],
            cooldown_after: 3,
            cooldown_secs: 30,
        }
    }
}

/// Decay time of the latency average: a target's past fades over about this long.
const EWMA_DECAY: Duration = Duration::from_secs(10);

/// A target's live state, shared by every request.
#[derive(Debug)]
struct Health {
    consecutive_failures: AtomicU32,
    /// Unix ms until which the target is skipped; 0 when healthy.
    cooled_until_ms: AtomicI64,
    in_flight: AtomicU32,
    /// (peak-EWMA of time to response head in ms, when it was last updated).
    latency: Mutex<(f64, Option<Instant>)>,
}

/// A target, resolved.
#[derive(Debug)]
pub(crate) struct Target {
    pub(crate) provider: Arc<Provider>,
    pub(crate) model: Option<String>,
    weight: u32,
    health: Health,
}

impl Target {
    fn cost(&self) -> f64 {
        let (ewma, _) = *self
            .health
            .latency
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        ewma * f64::from(self.health.in_flight.load(Ordering::Relaxed) + 1)
    }

    fn cooled(&self, now_ms: i64) -> bool {
        self.health.cooled_until_ms.load(Ordering::Relaxed) > now_ms
    }
}

/// A router, resolved against the providers.
#[derive(Debug)]
pub struct Router {
    pub(crate) name: String,
    strategy: Strategy,
    pub(crate) targets: Vec<Target>,
    pub(crate) retries: u32,
    backoff: Duration,
    max_backoff: Duration,
    max_retry_after: Duration,
    fallback_on: Vec<u16>,
    cooldown_after: u32,
    cooldown: Duration,
}

/// What happened to one attempt, as far as routing cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// A response head with this status.
    Status(u16),
    /// No response: connection refused or reset, TLS failure, or timeout.
    NoResponse,
}

/// What to do after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Next {
    /// Try the same target again after this long.
    Retry(Duration),
    /// Move on to the next target.
    Fallback,
    /// Give this response to the client.
    Deliver,
}

impl Router {
    /// The wire format of its first target: what a request on its route speaks, unless the
    /// route's chat path says otherwise.
    pub(crate) fn format(&self) -> WireFormat {
        self.targets[0].provider.format
    }

    /// Status codes that are worth another attempt.
    pub(crate) fn retryable(outcome: Outcome) -> bool {
        match outcome {
            Outcome::NoResponse => true,
            Outcome::Status(s) => s == 429 || (500..=599).contains(&s),
        }
    }

    /// The order in which this request tries the targets (indices into `targets`). Targets
    /// cooling down go last, so a request is never refused because everything looks unwell.
    pub(crate) fn order(&self, now_ms: i64) -> Vec<usize> {
        let n = self.targets.len();
        let (mut healthy, cooled): (Vec<usize>, Vec<usize>) =
            (0..n).partition(|&i| !self.targets[i].cooled(now_ms));
        let first = match self.strategy {
            Strategy::Fallback => None,
            Strategy::Weighted => {
                let total: u64 = healthy
                    .iter()
                    .map(|&i| u64::from(self.targets[i].weight))
                    .sum();
                if total == 0 {
                    None
                } else {
                    let mut pick = fastrand::u64(0..total);
                    healthy.iter().position(|&i| {
                        let w = u64::from(self.targets[i].weight);
                        if pick < w {
                            true
                        } else {
                            pick -= w;
                            false
                        }
                    })
                }
            }
            Strategy::Latency => match healthy.len() {
                0 | 1 => None,
                len => {
                    let a = fastrand::usize(0..len);
                    let mut b = fastrand::usize(0..len - 1);
                    if b >= a {
                        b += 1;
                    }
                    let (ca, cb) = (
                        self.targets[healthy[a]].cost(),
                        self.targets[healthy[b]].cost(),
                    );
                    Some(if cb < ca { b } else { a })
                }
            },
        };
        if let Some(f) = first {
            let chosen = healthy.remove(f);
            healthy.insert(0, chosen);
        }
        healthy.extend(cooled);
        healthy
    }

    /// Marks an attempt on `target` as started; pair with [`Router::finished`].
    pub(crate) fn started(&self, target: usize) {
        self.targets[target]
            .health
            .in_flight
            .fetch_add(1, Ordering::Relaxed);
    }

    /// Records an attempt's outcome: latency to the response head feeds the EWMA, failures
    /// count towards a cool-down, a success clears them.
    pub(crate) fn finished(&self, target: usize, outcome: Outcome, took: Duration, now_ms: i64) {
        let t = &self.targets[target];
        t.health.in_flight.fetch_sub(1, Ordering::Relaxed);
        let failed = Router::retryable(outcome);
        // A failure counts as slow, so the latency strategy also steers away from it.
        let sample = if failed {
            took.max(Duration::from_secs(1))
        } else {
            took
        };
        {
            let mut l = t
                .health
                .latency
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let ms = sample.as_secs_f64() * 1000.0;
            let now = Instant::now();
            l.0 = match l.1 {
                // Peak: a slower sample takes over at once; faster ones pull it down slowly.
                Some(_) if ms > l.0 => ms,
                Some(last) => {
                    let w =
                        (-now.duration_since(last).as_secs_f64() / EWMA_DECAY.as_secs_f64()).exp();
                    l.0 * w + ms * (1.0 - w)
                }
                None => ms,
            };
            l.1 = Some(now);
        }
        if failed {
            let n = t
                .health
                .consecutive_failures
                .fetch_add(1, Ordering::Relaxed)
                + 1;
            if n >= self.cooldown_after {
                let until = now_ms + self.cooldown.as_millis() as i64;
                t.health.cooled_until_ms.store(until, Ordering::Relaxed);
                t.health.consecutive_failures.store(0, Ordering::Relaxed);
                tracing::warn!(router = %self.name, target = %t.provider.name, cooldown_ms = self.cooldown.as_millis() as u64, "target cooled down after consecutive failures");
            }
        } else {
            t.health.consecutive_failures.store(0, Ordering::Relaxed);
            t.health.cooled_until_ms.store(0, Ordering::Relaxed);
        }
    }

    /// What follows attempt number `retry` (0 for the first) on one target that ended in
    /// `outcome`, whose response carried `headers` (for `Retry-After`).
    pub(crate) fn next(
        &self,
        outcome: Outcome,
        headers: Option<&HeaderMap>,
        retry: u32,
        more_targets: bool,
    ) -> Next {
        if !Router::retryable(outcome) {
            return Next::Deliver;
        }
        let falls = match outcome {
            Outcome::NoResponse => true,
            Outcome::Status(s) => self.fallback_on.contains(&s),
        };
        let fallback = if falls && more_targets {
            Next::Fallback
        } else {
            Next::Deliver
        };
        if retry >= self.retries {
            return fallback;
        }
        match headers.and_then(retry_after) {
            Some(wait) if wait > self.max_retry_after => fallback,
            Some(wait) => Next::Retry(wait),
            None => {
                let exp = self
                    .backoff
                    .saturating_mul(1u32.checked_shl(retry).unwrap_or(u32::MAX))
                    .min(self.max_backoff);
                // Equal jitter: at least half the backoff, so retries spread but still wait.
                let half = exp / 2;
                Next::Retry(half + half.mul_f64(fastrand::f64()))
            }
        }
    }
}

/// `retry-after-ms` (OpenAI) or `Retry-After` in seconds. An HTTP date is not honoured (the
/// providers send seconds); it falls back to the normal backoff.
pub(crate) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let num = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<f64>().ok())
            .filter(|v| v.is_finite() && *v >= 0.0)
    };
    num("retry-after-ms")
        .map(|ms| Duration::from_secs_f64(ms / 1000.0))
        .or_else(|| num("retry-after").map(|s| Duration::from_secs_f64(s.min(86_400.0))))
}

/// Every router, by name and by model alias.
#[derive(Debug, Default)]
pub struct Routers {
    by_name: HashMap<String, Arc<Router>>,
    by_alias: HashMap<String, Arc<Router>>,
}

impl Routers {
    /// Resolves the config against the providers. Every target must exist; targets may speak
    /// different formats (a chat request is translated for each that needs it).
    pub fn build(
        config: &BTreeMap<String, RouterConfig>,
        providers: &Providers,
    ) -> Result<Self, StageError> {
        let mut out = Routers::default();
        for (name, c) in config {
            let bad = |why: String| StageError::Invalid(format!("routers.{name}: {why}"));
            if providers.get(name).is_some() || name == "router" {
                return Err(bad("a router cannot share its name with a provider".into()));
            }
            if c.targets.is_empty() {
                return Err(bad("needs at least one target".into()));
            }
            let mut targets = Vec::with_capacity(c.targets.len());
            for t in &c.targets {
                let p = providers.get(&t.provider).ok_or_else(|| {
                    bad(format!(
                        "target provider {:?} is not configured (known: {})",
                        t.provider,
                        providers.names().join(", ")
                    ))
                })?;
                targets.push(Target {
                    provider: p.clone(),
                    model: t.model.clone(),
                    weight: t.weight,
                    health: Health {
                        consecutive_failures: AtomicU32::new(0),
                        cooled_until_ms: AtomicI64::new(0),
                        in_flight: AtomicU32::new(0),
                        latency: Mutex::new((0.0, None)),
                    },
                });
            }
            if c.strategy == Strategy::Weighted && targets.iter().all(|t| t.weight == 0) {
                return Err(bad(
                    "weighted strategy needs a target with weight > 0".into()
                ));
            }
            if c.cooldown_after == 0 {
                return Err(bad("cooldown_after must be at least 1".into()));
            }
            let router = Arc::new(Router {
                name: name.clone(),
                strategy: c.strategy,
                targets,
                retries: c.retries,
                backoff: Duration::from_millis(c.backoff_ms),
                max_backoff: Duration::from_millis(c.max_backoff_ms.max(c.backoff_ms)),
                max_retry_after: Duration::from_millis(c.max_retry_after_ms),
                fallback_on: c.fallback_on.clone(),
                cooldown_after: c.cooldown_after,
                cooldown: Duration::from_secs(c.cooldown_secs),
            });
            for a in &c.aliases {
                if let Some(other) = out.by_alias.insert(a.clone(), router.clone()) {
                    return Err(bad(format!(
                        "alias {a:?} is also used by router {:?}",
                        other.name
                    )));
                }
            }
            out.by_name.insert(name.clone(), router);
        }
        Ok(out)
    }

    /// True when no router is configured.
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// The router called `name`.
    pub(crate) fn get(&self, name: &str) -> Option<&Arc<Router>> {
        self.by_name.get(name)
    }

    /// The router a model alias selects.
    pub(crate) fn for_alias(&self, model: &str) -> Option<&Arc<Router>> {
        self.by_alias.get(model)
    }

    /// Model aliases, sorted, for error messages.
    pub(crate) fn aliases(&self) -> Vec<String> {
        let mut v: Vec<String> = self.by_alias.keys().cloned().collect();
        v.sort();
        v
    }

    /// Router names, sorted, for error messages.
    pub(crate) fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.by_name.keys().cloned().collect();
        v.sort();
        v
    }
}

/// The request body with its top-level `model` replaced (the last one, which is the one the
/// upstream reads), every other byte as it was; `None` when the body is not a JSON object.
pub(crate) fn with_model(body: &[u8], model: &str) -> Option<bytes::Bytes> {
    let members = json::members(body)?;
    let value = serde_json::to_vec(model).ok()?;
    let mut out = Vec::with_capacity(body.len() + value.len() + 10);
    match members.iter().rposition(|m| m.key == "model") {
        Some(i) => {
            let at = members[i].value.clone();
            out.extend_from_slice(&body[..at.start]);
            out.extend_from_slice(&value);
            out.extend_from_slice(&body[at.end..]);
        }
        None => {
            let open = body.iter().position(|b| *b == b'{')? + 1;
            out.extend_from_slice(&body[..open]);
            out.extend_from_slice(b"\"model\":");
            out.extend_from_slice(&value);
            if !members.is_empty() {
                out.push(b',');
            }
            out.extend_from_slice(&body[open..]);
        }
    }
    Some(out.into())
}

/// What every attempt of a routed request sends.
pub(crate) struct Attempt<'a> {
    pub(crate) method: &'a http::Method,
    pub(crate) path: &'a str,
    pub(crate) query: Option<&'a str>,
    pub(crate) headers: &'a HeaderMap,
    pub(crate) head: &'a BodyHead,
}

/// One target's request: the client's as is (its model replaced when the target names one,
/// and stream usage asked for), or translated for a target of another format.
struct Prepared {
    path: String,
    query: Option<String>,
    headers: HeaderMap,
    body: bytes::Bytes,
    injected: bool,
    plan: Option<crate::translation::ResponsePlan>,
}

fn prepare(ctx: &mut Ctx, target: &Target, a: &Attempt<'_>) -> Result<Prepared, Refusal> {
    let mut headers = a.headers.clone();
    if ctx.exchange.state().unified || target.provider.format != ctx.format() {
        let model = target
            .model
            .clone()
            .or_else(|| a.head.facts.model.clone())
            .unwrap_or_default();
        let t =
            crate::phases::send::translated(ctx, &target.provider, &model, a.head, &mut headers)?;
        return Ok(Prepared {
            path: t.path,
            query: t.query,
            headers,
            body: t.body,
            injected: false,
            plan: Some(t.plan),
        });
    }
    let body = match &target.model {
        Some(m) => with_model(&a.head.bytes, m).unwrap_or_else(|| a.head.bytes.clone()),
        None => a.head.bytes.clone(),
    };
    let injected = wants_injection(&target.provider, a.path, a.head)
        .then(|| target.provider.format.adapter().inject(&body))
        .flatten();
    Ok(Prepared {
        path: a.path.to_owned(),
        query: a.query.map(str::to_owned),
        headers,
        injected: injected.is_some(),
        body: injected.unwrap_or(body),
        plan: None,
    })
}

/// The send phase of a routed request: targets in the router's order, retries with backoff on
/// one target, then the next. Each attempt is judged on its response head alone, so once a
/// response is returned (and its first byte can reach the client) nothing is retried. Every
/// failed attempt leaves its own record, linked by `parent_request_id`.
pub(crate) async fn send(
    ctx: &mut Ctx,
    router: &Router,
    a: Attempt<'_>,
) -> Result<Response<Incoming>, Refusal> {
    let order = router.order(now_ms());
    let mut attempts = 0u32;
    let mut last_failure = None;
    for (pos, &ti) in order.iter().enumerate() {
        let target = &router.targets[ti];
        let Prepared {
            path,
            query,
            headers: target_headers,
            body,
            injected,
            plan,
        } = prepare(ctx, target, &a)?;
        let more_targets = pos + 1 < order.len();
        let mut retry = 0u32;
        loop {
            attempts += 1;
            let attempt_ts = now_ms();
            let t0 = Instant::now();
            router.started(ti);
            let mut headers = target_headers.clone();
            let leaving = crate::phases::send::Leaving {
                method: a.method,
                path: &path,
                query: query.as_deref(),
                body: Some(&body[..]),
            };
            crate::phases::send::credentials(ctx, &target.provider, &leaving, &mut headers).await?;
            let out = Outbound {
                method: a.method,
                path: &path,
                query: query.as_deref(),
                headers,
                body: full(body.clone()),
            };
            let sent = send_upstream(&ctx.shared, &ctx.client, &target.provider, out).await;
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
            ctx.shared
                .metrics
                .route_attempts
                .get_or_create(&AttemptLabels {
                    router: router.name.clone(),
                    target: target.provider.name.clone(),
                    result,
                })
                .inc();
            if next == Next::Deliver {
                let s = ctx.exchange.state();
                s.record.provider = target.provider.name.clone();
                s.record.attempts = attempts;
                s.injected = injected;
                if let Some(m) = &target.model {
                    s.record.model = Some(m.clone());
                }
                if let Some(plan) = plan {
                    crate::phases::send::delivered(ctx, plan, &body);
                }
                return sent;
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
            let mut failed = ctx.record().clone();
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
            failed.refusal = sent.as_ref().err().map(|f| f.code.to_owned());
            failed.error = Some(format!(
                "attempt {attempts} via {}: {why}; {then}",
                target.provider.name
            ));
            if let Some(t) = &mut ctx.exchange.state().trace {
                t.event(
                    match next {
                        Next::Retry(_) => "tally.retry",
                        _ => "tally.fallback",
                    },
                    vec![
                        tally_otel::KeyValue::new("tally.attempt", i64::from(attempts)),
                        tally_otel::KeyValue::new("tally.target", target.provider.name.clone()),
                        tally_otel::KeyValue::new(
                            "tally.attempt_request_id",
                            failed.request_id.to_string(),
                        ),
                        tally_otel::KeyValue::new(
                            "error.type",
                            failed.refusal.clone().unwrap_or_else(|| status.to_string()),
                        ),
                    ],
                );
            }
            ctx.shared.sender.send(failed);
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
    Err(Refusal::new(
        StatusCode::BAD_GATEWAY,
        "tally_all_targets_failed",
        format!(
            "router {:?}: all {} attempts failed; last: {}",
            router.name,
            attempts,
            last_failure.unwrap_or_default()
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routers(strategy: Strategy, targets: &[(&str, u32)]) -> Routers {
        let providers = Providers::new(&BTreeMap::new()).expect("built-ins");
        let mut c = BTreeMap::new();
        c.insert(
            "r".to_owned(),
            RouterConfig {
                strategy,
                targets: targets
                    .iter()
                    .map(|(p, w)| TargetConfig {
                        provider: (*p).to_owned(),
                        model: None,
                        weight: *w,
                    })
                    .collect(),
                aliases: vec!["fast".into()],
                cooldown_after: 2,
                ..RouterConfig::default()
            },
        );
        Routers::build(&c, &providers).expect("valid")
    }

    #[test]
    fn fallback_order_is_config_order_and_cooled_targets_go_last() {
        let rs = routers(Strategy::Fallback, &[("openai", 1), ("groq", 1)]);
        let r = rs.for_alias("fast").expect("alias");
        assert_eq!(r.order(0), vec![0, 1]);
        for _ in 0..2 {
            r.started(0);
            r.finished(0, Outcome::Status(503), Duration::from_millis(5), 1_000);
        }
        assert_eq!(r.order(1_000), vec![1, 0], "cooled for 30 s");
        assert_eq!(
            r.order(1_000 + 30_001),
            vec![0, 1],
            "back after the cool-down"
        );
        r.started(0);
        r.finished(0, Outcome::Status(200), Duration::from_millis(5), 2_000);
        assert_eq!(r.order(2_000), vec![0, 1]);
    }

    #[test]
    fn weighted_picks_in_proportion() {
        let rs = routers(Strategy::Weighted, &[("openai", 3), ("groq", 1)]);
        let r = rs.get("r").expect("router");
        let firsts = (0..4000).filter(|_| r.order(0)[0] == 0).count();
        assert!((2700..3300).contains(&firsts), "{firsts} of 4000");
    }

    #[test]
    fn the_latency_strategy_prefers_the_faster_target() {
        let rs = routers(Strategy::Latency, &[("openai", 1), ("groq", 1)]);
        let r = rs.get("r").expect("router");
        for _ in 0..5 {
            r.started(0);
            r.finished(0, Outcome::Status(200), Duration::from_millis(200), 0);
            r.started(1);
            r.finished(1, Outcome::Status(200), Duration::from_millis(20), 0);
        }
        let firsts = (0..1000).filter(|_| r.order(0)[0] == 1).count();
        assert_eq!(firsts, 1000, "with two targets both are always compared");
    }

    #[test]
    fn next_retries_then_falls_back_and_honours_retry_after() {
        let rs = routers(Strategy::Fallback, &[("openai", 1), ("groq", 1)]);
        let r = rs.get("r").expect("router");
        let none = HeaderMap::new();
        assert_eq!(r.next(Outcome::Status(400), None, 0, true), Next::Deliver);
        assert_eq!(r.next(Outcome::Status(200), None, 0, true), Next::Deliver);
        match r.next(Outcome::Status(500), Some(&none), 0, true) {
            Next::Retry(d) => {
                assert!(d >= Duration::from_millis(100) && d <= Duration::from_millis(200))
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(r.next(Outcome::Status(500), None, 2, true), Next::Fallback);
        assert_eq!(r.next(Outcome::Status(500), None, 2, false), Next::Deliver);
        assert_eq!(r.next(Outcome::NoResponse, None, 2, true), Next::Fallback);
        let mut h = HeaderMap::new();
        h.insert("retry-after", http::HeaderValue::from_static("1"));
        assert_eq!(
            r.next(Outcome::Status(429), Some(&h), 0, true),
            Next::Retry(Duration::from_secs(1))
        );
        h.insert("retry-after", http::HeaderValue::from_static("120"));
        assert_eq!(
            r.next(Outcome::Status(429), Some(&h), 0, true),
            Next::Fallback
        );
        h.insert("retry-after-ms", http::HeaderValue::from_static("250"));
        assert_eq!(
            r.next(Outcome::Status(429), Some(&h), 0, true),
            Next::Retry(Duration::from_millis(250))
        );
    }

    #[test]
    fn bad_routers_are_refused_with_the_reason() {
        let providers = Providers::new(&BTreeMap::new()).expect("built-ins");
        let one = |targets: Vec<TargetConfig>| {
            let mut c = BTreeMap::new();
            c.insert(
                "r".to_owned(),
                RouterConfig {
                    targets,
                    ..RouterConfig::default()
                },
            );
            Routers::build(&c, &providers)
                .map(|_| ())
                .expect_err("invalid")
                .to_string()
        };
        let t = |p: &str| TargetConfig {
            provider: p.into(),
            model: None,
            weight: 1,
        };
        assert!(one(vec![]).contains("at least one target"));
        assert!(one(vec![t("nope")]).contains("not configured"));
        let mut mixed = BTreeMap::new();
        mixed.insert(
            "r".to_owned(),
            RouterConfig {
                targets: vec![t("openai"), t("anthropic")],
                ..RouterConfig::default()
            },
        );
        assert!(
            Routers::build(&mixed, &providers).is_ok(),
            "targets of different formats are translated for"
        );
    }

    #[test]
    fn model_override_keeps_every_other_byte_of_each_field() {
        let b = with_model(
            br#"{"messages":[{"role":"user","content":"hi  there"}],"model":"fast","stream":true}"#,
            "gpt-4o-mini",
        )
        .expect("object");
        assert_eq!(
            &b[..],
            br#"{"messages":[{"role":"user","content":"hi  there"}],"model":"gpt-4o-mini","stream":true}"#
        );
        assert!(with_model(b"[1]", "m").is_none());
        assert_eq!(
            &with_model(br#"{"model":"a","x":1,"model":"fast"}"#, "m").expect("dup")[..],
            br#"{"model":"a","x":1,"model":"m"}"#,
            "the last duplicate is the one the upstream reads"
        );
        assert_eq!(
            &with_model(b"{ }", "m").expect("empty")[..],
            br#"{"model":"m" }"#
        );
        assert_eq!(
            &with_model(br#"{"x":1}"#, "m").expect("absent")[..],
            br#"{"model":"m","x":1}"#
        );
    }
}
