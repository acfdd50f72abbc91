//! The engine: counts records into the ledger, decides which events fire (once per budget,
//! scope key, window and threshold), keeps the set of exhausted scopes the proxy checks, and
//! reports status. It has no clock and no I/O: every call takes `now`, and events leave
//! through a channel that the dispatcher drains.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, RwLock};

use tally_ingest::Record;
use tokio::sync::mpsc::UnboundedSender;
use uuid::Uuid;

use crate::config::{Budget, Metric, Rule, Settings};
use crate::event::{rfc3339, Event, EventKind};
use crate::ledger::{Health, Spend};
use crate::scope::Subject;
use crate::window::{Bounds, Window};

/// What has fired for one (budget or rule, scope key) in its current episode: a calendar
/// window, or for rolling windows and rules one window length from the first event.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Fired {
    /// The episode ends here (ms); after it, everything may fire again.
    pub until: i64,
    /// The highest threshold fired (fraction of the limit; for rules 1.0 once fired).
    pub level: f64,
    /// Whether `projected_to_exceed` fired.
    pub projected: bool,
}

/// A fired event as persisted, for rebuilding [`Fired`] at startup.
#[derive(Debug, Clone)]
pub struct FiredRow {
    /// Budget or rule name.
    pub source: String,
    /// Scope key.
    pub scope_key: String,
    /// The event's kind name.
    pub event: String,
    /// Threshold fraction (budgets) or 1.0 (rules).
    pub level: f64,
    /// End of the episode, ms.
    pub until: i64,
}

/// Why a request is refused.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejection {
    /// The exhausted budget.
    pub budget: String,
    /// The scope, readable.
    pub scope: String,
    /// The scope key.
    pub scope_key: String,
    /// Spend in the window, USD.
    pub spend_usd: f64,
    /// The limit, USD.
    pub limit_usd: f64,
    /// When the scope has room again, ms since the epoch.
    pub resets_at: i64,
}

/// One scope key of a budget, for the dashboard and the API.
#[derive(Debug, Clone, serde::Serialize)]
pub struct KeyStatus {
    /// The scope key (`*` for un-keyed scopes).
    pub scope_key: String,
    /// Spend in the current window, USD.
    pub spend_usd: f64,
    /// `spend / limit`.
    pub used: f64,
    /// Spend at the window's end at the current pace (calendar windows only, once
    /// `project_after` of it has passed).
    pub projected_spend_usd: Option<f64>,
    /// Whether the limit is reached.
    pub exhausted: bool,
    /// When the current window (or, once exhausted, the exhaustion) ends, RFC 3339.
    pub resets_at: String,
}

/// A budget's state, for the dashboard and the API.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BudgetStatus {
    /// The budget's name.
    pub name: String,
    /// Its scope, readable.
    pub scope: String,
    /// Its window, readable.
    pub window: String,
    /// Current window start, RFC 3339.
    pub window_start: String,
    /// Current window end, RFC 3339.
    pub window_end: String,
    /// USD per window.
    pub limit_usd: f64,
    /// Whether requests are refused once exhausted.
    pub enforce: bool,
    /// Spend over all keys in the window.
    pub spend_usd: f64,
    /// Keys with spend in this window.
    pub keys: usize,
    /// Keys at or over the limit.
    pub exhausted_keys: usize,
    /// The keys with the most spend, highest first (at most 50).
    pub top: Vec<KeyStatus>,
}

/// Keys shown per budget on the dashboard.
const TOP_KEYS: usize = 50;

#[derive(Default)]
struct State {
    /// Per budget (config order): spend per scope key.
    spend: Vec<HashMap<String, Spend>>,
    /// Per rule: health per key.
    health: Vec<HashMap<String, Health>>,
    /// What fired, per budget (config order) then per rule, by scope key.
    fired: Vec<HashMap<String, Fired>>,
    /// Per budget: USD held by requests admitted and not yet counted, by scope key.
    reserved: Vec<HashMap<String, f64>>,
    /// The holds of each request in flight, released when its record is counted (or, should
    /// the record never come, when the hold expires).
    holds: HashMap<Uuid, Hold>,
}

/// What one admitted request holds until its record is counted.
struct Hold {
    expires: i64,
    parts: Vec<(usize, String, f64)>,
}

/// A hold no record released is dropped after this long: longer than any request runs.
const HOLD_TTL_MS: i64 = 15 * 60 * 1000;

/// The shared engine. Cheap to call from the ingest thread (`observe`), the proxy
/// (`check`, a read lock on a small map) and the dashboard (`status`).
pub struct Engine {
    settings: Settings,
    state: Mutex<State>,
    /// Exhausted scopes of enforcing budgets: per budget index, key → rejection. Written only
    /// when a scope becomes exhausted or free (and refreshed by the tick), so the proxy's read
    /// lock is almost never contended.
    exhausted: RwLock<Vec<HashMap<String, Rejection>>>,
    enforcing: bool,
    events: UnboundedSender<Event>,
}

impl Engine {
    /// An engine for `settings`; fired events are sent to `events`.
    pub fn new(settings: Settings, events: UnboundedSender<Event>) -> Self {
        let state = State {
            spend: vec![HashMap::new(); settings.budgets.len()],
            health: settings.rules.iter().map(|_| HashMap::new()).collect(),
            fired: vec![HashMap::new(); settings.budgets.len() + settings.rules.len()],
            reserved: vec![HashMap::new(); settings.budgets.len()],
            holds: HashMap::new(),
        };
        Self {
            enforcing: settings.budgets.iter().any(|b| b.enforce),
            exhausted: RwLock::new(vec![HashMap::new(); settings.budgets.len()]),
            settings,
            state: Mutex::new(state),
            events,
        }
    }

    /// The validated settings.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves counters that are still valid numbers.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Restores what fired before a restart (rows whose episode has not ended).
    pub fn restore_fired(&self, rows: Vec<FiredRow>) {
        let mut st = self.lock();
        let budgets = self.settings.budgets.iter().map(|b| &b.name);
        let names: Vec<&String> = budgets
            .chain(self.settings.rules.iter().map(|r| &r.name))
            .collect();
        for r in rows {
            // Budgets removed from config since leave rows that no longer matter.
            let Some(i) = names.iter().position(|n| **n == r.source) else {
                continue;
            };
            let f = st.fired[i].entry(r.scope_key).or_insert(Fired {
                until: r.until,
                level: 0.0,
                projected: false,
            });
            f.until = f.until.max(r.until);
            if r.event == EventKind::ProjectedToExceed.as_str() {
                f.projected = true;
            } else {
                f.level = f.level.max(r.level);
            }
        }
    }

    /// Counts a record (called by the ingest worker for every record it receives).
    pub fn observe(&self, record: &Record, now: i64) {
        let subject = Subject::from(record);
        let mut st = self.lock();
        // Its hold gives way to its cost in the same lock: spend is never counted twice or
        // not at all in between.
        if let Some(hold) = st.holds.remove(&record.request_id) {
            release(&mut st, hold);
        }
        if let Some(cost) = record.cost_usd.filter(|c| *c > 0.0) {
            for (i, b) in self.settings.budgets.iter().enumerate() {
                let Some(key) = b.scope.key_of(subject) else {
                    continue;
                };
                if b.key_limits.is_some() && b.limit_for(key).is_none() {
                    continue;
                }
                let spend = match st.spend[i].get_mut(key) {
                    Some(s) => s,
                    None => st.spend[i].entry(key.to_owned()).or_default(),
                };
                spend.add(&b.window, record.ts, cost);
                self.evaluate_budget(&mut st, i, key, now, false);
            }
        }
        let error = record.is_error();
        for (i, r) in self.settings.rules.iter().enumerate() {
            if let Some(key) = r.scope.key_of(subject) {
                let h = match st.health[i].get_mut(key) {
                    Some(h) => h,
                    None => st.health[i].entry(key.to_owned()).or_default(),
                };
                h.add(
                    r.window.as_millis() as i64,
                    record.ts,
                    error,
                    record.latency_ms,
                );
            }
        }
    }

    /// Merges spend read from the store for budget `index`: `(key, bucket start, usd)`.
    pub fn reconcile(&self, index: usize, rows: Vec<(String, i64, f64)>, now: i64) {
        let mut st = self.lock();
        let Some(budget) = self.settings.budgets.get(index) else {
            return;
        };
        let mut keys = Vec::new();
        for (key, bucket, usd) in rows {
            let bucket = crate::ledger::bucket_of(&budget.window, bucket);
            st.spend[index]
                .entry(key.clone())
                .or_default()
                .reconcile(bucket, usd);
            keys.push(key);
        }
        keys.sort_unstable();
        keys.dedup();
        for k in keys {
            self.evaluate_budget(&mut st, index, &k, now, true);
        }
    }

    /// Periodic work: window rollover, projections, rules, and refreshing exhaustion.
    pub fn tick(&self, now: i64) {
        let mut st = self.lock();
        for i in 0..self.settings.budgets.len() {
            let bounds = self.settings.budgets[i].window.bounds(now);
            st.spend[i].retain(|_, s| s.prune(bounds));
            let keys: Vec<String> = st.spend[i].keys().cloned().collect();
            for k in keys {
                self.evaluate_budget(&mut st, i, &k, now, true);
            }
        }
        for (i, rule) in self.settings.rules.iter().enumerate() {
            let window_ms = rule.window.as_millis() as i64;
            let mut fire = Vec::new();
            st.health[i].retain(|key, h| {
                let s = h.summary(window_ms, now);
                if s.requests >= rule.min_requests {
                    let value = match rule.metric {
                        Metric::ErrorRate => s.errors as f64 / s.requests as f64,
                        Metric::P95LatencyMs => s.p95_latency_ms as f64,
                    };
                    if value > rule.threshold {
                        fire.push((key.clone(), value, s.requests));
                    }
                }
                !h.is_empty()
            });
            for (key, value, requests) in fire {
                self.fire_rule(&mut st, i, rule, &key, value, requests, now);
            }
        }
        for m in &mut st.fired {
            m.retain(|_, f| f.until > now);
        }
        let stale: Vec<Uuid> = st
            .holds
            .iter()
            .filter(|(_, h)| h.expires <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in stale {
            if let Some(hold) = st.holds.remove(&id) {
                release(&mut st, hold);
            }
        }
        if self.enforcing {
            let mut ex = self.exhausted.write().unwrap_or_else(|p| p.into_inner());
            for m in ex.iter_mut() {
                m.retain(|_, r| r.resets_at > now);
            }
        }
    }

    /// Fires what `key`'s spend has newly reached and updates its exhaustion. `refresh`
    /// rewrites an existing exhaustion (tick, reconcile); otherwise only transitions take the
    /// write lock.
    fn evaluate_budget(&self, st: &mut State, index: usize, key: &str, now: i64, refresh: bool) {
        let b = &self.settings.budgets[index];
        let bounds = b.window.bounds(now);
        let Some(spend) = st.spend[index].get(key) else {
            return;
        };
        let Some(limit) = b.limit_for(key) else {
            // A key whose budget was removed (or changed window) is free again.
            if b.enforce {
                self.exhausted.write().unwrap_or_else(|p| p.into_inner())[index].remove(key);
            }
            return;
        };
        let total = spend.total(bounds);
        let used = total / limit;
        if b.enforce {
            let exhausted = total >= limit;
            let present =
                self.exhausted.read().unwrap_or_else(|p| p.into_inner())[index].contains_key(key);
            if exhausted && (refresh || !present) {
                let r = Rejection {
                    budget: b.name.clone(),
                    scope: b.scope.describe_key(key),
                    scope_key: key.to_owned(),
                    spend_usd: total,
                    limit_usd: limit,
                    resets_at: spend.below_limit_at(&b.window, bounds, limit),
                };
                self.exhausted.write().unwrap_or_else(|p| p.into_inner())[index]
                    .insert(key.to_owned(), r);
            } else if !exhausted && present {
                self.exhausted.write().unwrap_or_else(|p| p.into_inner())[index].remove(key);
            }
        }
        let projected = projection(b, bounds, total, now, self.settings.project_after);
        let episode_end = match b.window {
            Window::Calendar(..) => bounds.end,
            Window::Rolling(d) => now + d.as_millis() as i64,
        };
        let fired = match st.fired[index].get(key) {
            Some(f) if f.until > now => *f,
            _ => Fired {
                until: episode_end,
                level: 0.0,
                projected: false,
            },
        };
        // Only the highest threshold newly reached fires: a jump from 10 % to 120 % sends one
        // `budget_exceeded`, not three messages.
        let top = b.thresholds.iter().rev().find(|t| used >= **t).copied();
        let mut next = fired;
        if let Some(t) = top.filter(|t| *t > fired.level) {
            next.level = t;
            let kind = if t >= 1.0 {
                EventKind::BudgetExceeded
            } else {
                EventKind::ThresholdCrossed
            };
            self.emit(budget_event(
                &self.settings,
                b,
                kind,
                (key, limit),
                bounds,
                total,
                t,
                projected,
                now,
            ));
        }
        if let Some(p) = projected {
            if !fired.projected && p >= limit && total < limit {
                next.projected = true;
                self.emit(budget_event(
                    &self.settings,
                    b,
                    EventKind::ProjectedToExceed,
                    (key, limit),
                    bounds,
                    total,
                    1.0,
                    Some(p),
                    now,
                ));
            }
        }
        if next != fired {
            st.fired[index].insert(key.to_owned(), next);
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn fire_rule(
        &self,
        st: &mut State,
        index: usize,
        rule: &Rule,
        key: &str,
        value: f64,
        requests: u64,
        now: i64,
    ) {
        let slot = self.settings.budgets.len() + index;
        if st.fired[slot].get(key).is_some_and(|f| f.until > now) {
            return;
        }
        let len = rule.window.as_millis() as i64;
        st.fired[slot].insert(
            key.to_owned(),
            Fired {
                until: now + len,
                level: 1.0,
                projected: false,
            },
        );
        self.emit(Event {
            id: Uuid::now_v7(),
            event: match rule.metric {
                Metric::ErrorRate => EventKind::ErrorRateAbove,
                Metric::P95LatencyMs => EventKind::P95LatencyAbove,
            },
            budget: None,
            rule: Some(rule.name.clone()),
            scope: rule.scope.to_string(),
            scope_key: key.to_owned(),
            window_start: rfc3339(now - len),
            window_end: rfc3339(now),
            spend_usd: None,
            limit_usd: None,
            threshold: rule.threshold,
            projected_spend_usd: None,
            value: Some(value),
            requests: Some(requests),
            time: rfc3339(now),
            dashboard_url: format!("{}/models", self.settings.dashboard_url),
            fired_at_ms: now,
            window_ms: (now - len, now),
            until_ms: now + len,
        });
    }

    fn emit(&self, event: Event) {
        tracing::info!(
            event = event.event.as_str(),
            source = event.source(),
            scope_key = %event.scope_key,
            "alert fired"
        );
        if self.events.send(event).is_err() {
            tracing::warn!("alert dispatcher is gone; event not delivered");
        }
    }

    /// Whether any budget enforces; when none does, the proxy skips [`Engine::check`].
    pub fn enforcing(&self) -> bool {
        self.enforcing
    }

    /// The first exhausted, enforcing budget covering `subject`, if any.
    pub fn check(&self, subject: Subject<'_>, now: i64) -> Option<Rejection> {
        if !self.enforcing {
            return None;
        }
        let ex = self.exhausted.read().unwrap_or_else(|p| p.into_inner());
        for (b, exhausted) in self.settings.budgets.iter().zip(ex.iter()) {
            if !b.enforce || exhausted.is_empty() {
                continue;
            }
            let Some(key) = b.scope.key_of(subject) else {
                continue;
            };
            if let Some(r) = exhausted.get(key).filter(|r| r.resets_at > now) {
                return Some(r.clone());
            }
        }
        None
    }

    /// Admits a request against the enforcing budgets covering it, counting what requests in
    /// flight hold, and holds `estimate()` USD (its worst cost) for it until its record is
    /// counted. A scope is refused once its spend plus its holds reach the limit, so requests
    /// started together cannot all pass an almost spent budget: the overshoot is at most one
    /// request's estimate plus whatever requests cost beyond their estimates (GUARANTEES.md).
    /// `estimate` runs only when an enforcing budget covers the request.
    pub fn reserve(
        &self,
        subject: Subject<'_>,
        request_id: Uuid,
        estimate: impl FnOnce() -> f64,
        now: i64,
    ) -> Result<bool, Rejection> {
        if !self.enforcing {
            return Ok(false);
        }
        if let Some(r) = self.check(subject, now) {
            return Err(r);
        }
        let covering: Vec<(usize, &str, f64)> = self
            .settings
            .budgets
            .iter()
            .enumerate()
            .filter(|(_, b)| b.enforce)
            .filter_map(|(i, b)| {
                let key = b.scope.key_of(subject)?;
                Some((i, key, b.limit_for(key)?))
            })
            .collect();
        if covering.is_empty() {
            return Ok(false);
        }
        let usd = estimate();
        let usd = if usd.is_finite() { usd.max(0.0) } else { 0.0 };
        let mut st = self.lock();
        for &(i, key, limit) in &covering {
            let b = &self.settings.budgets[i];
            let bounds = b.window.bounds(now);
            let spent = st.spend[i].get(key).map_or(0.0, |s| s.total(bounds));
            let held = st.reserved[i].get(key).copied().unwrap_or(0.0);
            if spent + held >= limit {
                return Err(Rejection {
                    budget: b.name.clone(),
                    scope: b.scope.describe_key(key),
                    scope_key: key.to_owned(),
                    spend_usd: spent + held,
                    limit_usd: limit,
                    // Room may come back as soon as the requests in flight are counted.
                    resets_at: now + 1000,
                });
            }
        }
        if usd > 0.0 {
            let parts: Vec<(usize, String, f64)> = covering
                .iter()
                .map(|&(i, key, _)| (i, key.to_owned(), usd))
                .collect();
            for (i, key, usd) in &parts {
                *st.reserved[*i].entry(key.clone()).or_insert(0.0) += usd;
            }
            st.holds.insert(
                request_id,
                Hold {
                    expires: now + HOLD_TTL_MS,
                    parts,
                },
            );
            return Ok(true);
        }
        Ok(false)
    }

    /// The request's cost is known (its response ended): its hold becomes that cost until
    /// the record is counted, so the estimate stops blocking others and nothing goes uncounted
    /// in between. A hold already released (the record was counted first) stays released.
    pub fn settle(&self, request_id: Uuid, cost_usd: f64) {
        let cost = if cost_usd.is_finite() {
            cost_usd.max(0.0)
        } else {
            0.0
        };
        let mut st = self.lock();
        let State {
            holds, reserved, ..
        } = &mut *st;
        let Some(hold) = holds.get_mut(&request_id) else {
            return;
        };
        for (i, key, usd) in &mut hold.parts {
            let r = reserved[*i].entry(key.clone()).or_insert(0.0);
            *r = (*r - *usd + cost).max(0.0);
            *usd = cost;
        }
    }

    /// Every budget's current state.
    pub fn status(&self, now: i64) -> Vec<BudgetStatus> {
        let st = self.lock();
        self.settings
            .budgets
            .iter()
            .enumerate()
            .map(|(i, b)| {
                let bounds = b.window.bounds(now);
                let mut keys: Vec<KeyStatus> = st.spend[i]
                    .iter()
                    .filter_map(|(k, s)| Some((k, s, b.limit_for(k)?)))
                    .map(|(k, s, limit)| {
                        let total = s.total(bounds);
                        let exhausted = total >= limit;
                        KeyStatus {
                            scope_key: k.clone(),
                            spend_usd: total,
                            used: total / limit,
                            projected_spend_usd: projection(
                                b,
                                bounds,
                                total,
                                now,
                                self.settings.project_after,
                            ),
                            exhausted,
                            resets_at: rfc3339(if exhausted {
                                s.below_limit_at(&b.window, bounds, limit)
                            } else {
                                bounds.end
                            }),
                        }
                    })
                    .filter(|k| k.spend_usd > 0.0)
                    .collect();
                keys.sort_by(|a, b| b.spend_usd.total_cmp(&a.spend_usd));
                let spend_usd = keys.iter().map(|k| k.spend_usd).sum();
                let n = keys.len();
                let exhausted_keys = keys.iter().filter(|k| k.exhausted).count();
                keys.truncate(TOP_KEYS);
                if !b.scope.is_keyed() && keys.is_empty() {
                    keys.push(KeyStatus {
                        scope_key: crate::scope::SINGLE_KEY.to_owned(),
                        spend_usd: 0.0,
                        used: 0.0,
                        projected_spend_usd: projection(
                            b,
                            bounds,
                            0.0,
                            now,
                            self.settings.project_after,
                        ),
                        exhausted: false,
                        resets_at: rfc3339(bounds.end),
                    });
                }
                BudgetStatus {
                    name: b.name.clone(),
                    scope: b.scope.to_string(),
                    window: b.window.to_string(),
                    window_start: rfc3339(bounds.start),
                    window_end: rfc3339(bounds.end),
                    limit_usd: b.limit_usd,
                    enforce: b.enforce,
                    spend_usd,
                    keys: n,
                    exhausted_keys,
                    top: keys,
                }
            })
            .collect()
    }
}

fn release(st: &mut State, hold: Hold) {
    for (i, key, usd) in hold.parts {
        if let Some(r) = st.reserved[i].get_mut(&key) {
            *r -= usd;
            if *r <= 1e-12 {
                st.reserved[i].remove(&key);
            }
        }
    }
}

/// Linear projection of a calendar window's spend to its end, once enough of it has passed.
fn projection(b: &Budget, bounds: Bounds, spend: f64, now: i64, after: f64) -> Option<f64> {
    if !matches!(b.window, Window::Calendar(..)) || after >= 1.0 {
        return None;
    }
    let elapsed = bounds.elapsed(now);
    (elapsed >= after).then(|| spend / elapsed)
}

#[allow(clippy::too_many_arguments)]
fn budget_event(
    settings: &Settings,
    b: &Budget,
    kind: EventKind,
    (key, limit): (&str, f64),
    bounds: Bounds,
    spend: f64,
    threshold: f64,
    projected: Option<f64>,
    now: i64,
) -> Event {
    let (start, end) = match b.window {
        Window::Calendar(..) => (bounds.start, bounds.end),
        Window::Rolling(d) => (now - d.as_millis() as i64, now),
    };
    Event {
        id: Uuid::now_v7(),
        event: kind,
        budget: Some(b.name.clone()),
        rule: None,
        scope: b.scope.to_string(),
        scope_key: key.to_owned(),
        window_start: rfc3339(start),
        window_end: rfc3339(end),
        spend_usd: Some(spend),
        limit_usd: Some(limit),
        threshold,
        projected_spend_usd: projected,
        value: None,
        requests: None,
        time: rfc3339(now),
        dashboard_url: format!("{}/budgets", settings.dashboard_url),
        fired_at_ms: now,
        window_ms: (start, end),
        until_ms: match b.window {
            Window::Calendar(..) => bounds.end,
            Window::Rolling(d) => now + d.as_millis() as i64,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{validate, AlertsConfig, BudgetConfig};
    use std::collections::BTreeMap;
    use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

    const HOUR: i64 = 3_600_000;
    /// 2026-01-01T00:00:00Z, a Thursday.
    const T0: i64 = 1_767_225_600_000;

    fn engine(budgets: &str) -> (Engine, UnboundedReceiver<Event>) {
        let b: Vec<BudgetConfig> = serde_json::from_str(budgets).expect("test budgets");
        let s = validate(&b, &AlertsConfig::default(), "http://dash").expect("valid");
        let (tx, rx) = unbounded_channel();
        (Engine::new(s, tx), rx)
    }

    fn record(ts: i64, user: &str, cost: f64) -> Record {
        Record {
            provider: "openai".into(),
            endpoint: "/v1/chat/completions".into(),
            method: "POST".into(),
            model: Some("gpt-4o".into()),
            status: 200,
            latency_ms: 100,
            cost_usd: Some(cost),
            user_id: Some(user.into()),
            ..Record::new(Uuid::now_v7(), ts)
        }
    }

    fn drain(rx: &mut UnboundedReceiver<Event>) -> Vec<(EventKind, String, f64)> {
        let mut out = Vec::new();
        while let Ok(e) = rx.try_recv() {
            out.push((e.event, e.scope_key.clone(), e.threshold));
        }
        out
    }

    #[test]
    fn each_threshold_fires_once_per_window_and_rollover_starts_over() {
        let (e, mut rx) = engine(r#"[{"name":"b","limit_usd":10,"window":"day"}]"#);
        let t = T0 + HOUR;
        e.observe(&record(t, "a", 4.0), t);
        assert!(drain(&mut rx).is_empty());
        e.observe(&record(t, "a", 1.0), t); // 5.0 = 50 %
        assert_eq!(
            drain(&mut rx),
            vec![(EventKind::ThresholdCrossed, "*".into(), 0.5)]
        );
        e.observe(&record(t, "a", 0.5), t); // still 55 %
        e.tick(t + 1);
        assert!(drain(&mut rx).is_empty());
        e.observe(&record(t, "a", 3.0), t); // 85 %
        assert_eq!(
            drain(&mut rx),
            vec![(EventKind::ThresholdCrossed, "*".into(), 0.8)]
        );
        e.observe(&record(t, "a", 2.0), t); // 105 %
        assert_eq!(
            drain(&mut rx),
            vec![(EventKind::BudgetExceeded, "*".into(), 1.0)]
        );
        e.observe(&record(t, "a", 5.0), t);
        e.tick(t + 2);
        assert!(drain(&mut rx).is_empty());
        // Next day: a new window, the counter restarts and thresholds fire again.
        let next = T0 + 24 * HOUR + 5;
        e.tick(next);
        assert_eq!(e.status(next)[0].spend_usd, 0.0);
        e.observe(&record(next, "a", 6.0), next);
        assert_eq!(
            drain(&mut rx),
            vec![(EventKind::ThresholdCrossed, "*".into(), 0.5)]
        );
    }

    #[test]
    fn a_jump_fires_only_the_highest_threshold() {
        let (e, mut rx) = engine(r#"[{"name":"b","limit_usd":10,"window":"day"}]"#);
        e.observe(&record(T0, "a", 12.0), T0);
        assert_eq!(
            drain(&mut rx),
            vec![(EventKind::BudgetExceeded, "*".into(), 1.0)]
        );
    }

    #[test]
    fn restored_state_does_not_fire_again() {
        let (e, mut rx) = engine(r#"[{"name":"b","limit_usd":10,"window":"day"}]"#);
        e.restore_fired(vec![FiredRow {
            source: "b".into(),
            scope_key: "*".into(),
            event: "threshold_crossed".into(),
            level: 0.8,
            until: T0 + 24 * HOUR,
        }]);
        e.reconcile(0, vec![("*".into(), T0, 8.5)], T0 + HOUR);
        assert!(drain(&mut rx).is_empty(), "80 % fired before the restart");
        e.observe(&record(T0 + HOUR, "a", 2.0), T0 + HOUR);
        assert_eq!(
            drain(&mut rx),
            vec![(EventKind::BudgetExceeded, "*".into(), 1.0)]
        );
    }

    #[test]
    fn per_user_budgets_keep_users_apart_and_enforce_per_user() {
        let (e, mut rx) = engine(
            r#"[{"name":"u","limit_usd":1,"window":"hour","scope":"per_user","enforce":true,"thresholds":[100]}]"#,
        );
        let props = BTreeMap::new();
        let subject = |user| Subject {
            provider: "openai",
            model: Some("gpt-4o"),
            user_id: Some(user),
            properties: &props,
            key_name: None,
        };
        e.observe(&record(T0 + 10, "alice", 1.5), T0 + 10);
        e.observe(&record(T0 + 10, "bob", 0.5), T0 + 10);
        assert_eq!(
            drain(&mut rx),
            vec![(EventKind::BudgetExceeded, "alice".into(), 1.0)]
        );
        let r = e.check(subject("alice"), T0 + 20).expect("alice is out");
        assert_eq!(r.budget, "u");
        assert_eq!(r.scope_key, "alice");
        assert_eq!(r.resets_at, T0 + HOUR);
        assert!(e.check(subject("bob"), T0 + 20).is_none());
        // The hour ends: alice may spend again, even before a tick.
        assert!(e.check(subject("alice"), T0 + HOUR).is_none());
        let st = &e.status(T0 + 20)[0];
        assert_eq!((st.keys, st.exhausted_keys), (2, 1));
        assert_eq!(st.top[0].scope_key, "alice");
    }

    #[test]
    fn rolling_windows_release_as_spend_ages_out() {
        let (e, _rx) =
            engine(r#"[{"name":"r","limit_usd":1,"window":"rolling:1h","enforce":true}]"#);
        let props = BTreeMap::new();
        let s = Subject {
            provider: "openai",
            model: None,
            user_id: None,
            properties: &props,
            key_name: None,
        };
        e.observe(&record(T0, "a", 0.6), T0);
        e.observe(&record(T0 + 30 * 60_000, "a", 0.6), T0 + 30 * 60_000);
        let r = e.check(s, T0 + 30 * 60_000).expect("1.2 of 1");
        assert_eq!(
            r.resets_at,
            T0 + HOUR,
            "the first bucket leaves after an hour"
        );
        e.tick(T0 + HOUR);
        assert!(e.check(s, T0 + HOUR).is_none());
        assert!((e.status(T0 + HOUR)[0].spend_usd - 0.6).abs() < 1e-9);
    }

    #[test]
    fn projection_fires_once_after_enough_of_the_window() {
        let (e, mut rx) =
            engine(r#"[{"name":"p","limit_usd":10,"window":"day","thresholds":[90]}]"#);
        // 4 USD in the first 2 hours: on pace for 48, but only 1/12 of the day has passed.
        e.observe(&record(T0 + HOUR, "a", 4.0), T0 + 2 * HOUR);
        assert!(drain(&mut rx).is_empty());
        // At 6 h (25 %) the pace is 16 USD per day.
        e.tick(T0 + 6 * HOUR);
        let ev = drain(&mut rx);
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0].0, EventKind::ProjectedToExceed);
        e.tick(T0 + 7 * HOUR);
        assert!(drain(&mut rx).is_empty());
    }

    #[test]
    fn p95_latency_rule_fires_for_the_slow_provider_only() {
        let mut a = AlertsConfig::default();
        a.rules.push(crate::config::RuleConfig {
            name: "slow".into(),
            metric: Metric::P95LatencyMs,
            threshold: 1000.0,
            window: "1m".into(),
            scope: Some("per_provider".into()),
            min_requests: Some(20),
            webhooks: vec![],
        });
        let s = validate(&[], &a, "http://dash").expect("valid");
        let (tx, mut rx) = unbounded_channel();
        let e = Engine::new(s, tx);
        for i in 0..100 {
            let mut fast = record(T0 + i, "a", 0.0);
            fast.latency_ms = 200;
            e.observe(&fast, T0 + i);
            let mut slow = record(T0 + i, "a", 0.0);
            slow.provider = "anthropic".into();
            // 10 % of requests take 5 s: the p95 is 5 s.
            slow.latency_ms = if i % 10 == 0 { 5_000 } else { 300 };
            e.observe(&slow, T0 + i);
        }
        e.tick(T0 + 500);
        let ev = drain(&mut rx);
        assert_eq!(
            ev,
            vec![(EventKind::P95LatencyAbove, "anthropic".into(), 1000.0)]
        );
    }

    #[test]
    fn error_rate_rule_fires_once_per_window() {
        let b: Vec<BudgetConfig> = vec![];
        let mut a = AlertsConfig::default();
        a.rules.push(crate::config::RuleConfig {
            name: "errors".into(),
            metric: Metric::ErrorRate,
            threshold: 0.2,
            window: "1m".into(),
            scope: Some("per_model".into()),
            min_requests: Some(5),
            webhooks: vec![],
        });
        let s = validate(&b, &a, "http://dash").expect("valid");
        let (tx, mut rx) = unbounded_channel();
        let e = Engine::new(s, tx);
        for i in 0..10 {
            let mut r = record(T0 + i, "a", 0.0);
            if i < 3 {
                r.status = 500;
            }
            e.observe(&r, T0 + i);
        }
        e.tick(T0 + 100);
        let ev = drain(&mut rx);
        assert_eq!(ev, vec![(EventKind::ErrorRateAbove, "gpt-4o".into(), 0.2)]);
        e.tick(T0 + 200);
        assert!(drain(&mut rx).is_empty());
    }

    #[test]
    fn holds_stop_concurrent_requests_at_the_edge_and_give_way_to_the_real_cost() {
        let (e, _rx) = engine(
            r#"[{"name":"u","limit_usd":3,"window":"day","scope":"per_user","enforce":true}]"#,
        );
        let props = BTreeMap::new();
        let alice = Subject {
            provider: "openai",
            model: Some("gpt-4o"),
            user_id: Some("alice"),
            properties: &props,
            key_name: None,
        };
        let now = T0 + 10;
        // Three requests of at most $1 each fill the $3; the fourth is refused while they run.
        let ids: Vec<Uuid> = (0..3).map(|_| Uuid::now_v7()).collect();
        for id in &ids {
            assert_eq!(e.reserve(alice, *id, || 1.0, now), Ok(true));
        }
        let refused = e
            .reserve(alice, Uuid::now_v7(), || 1.0, now)
            .expect_err("full");
        assert_eq!(refused.spend_usd, 3.0);
        // Another user is not held back.
        let bob = Subject {
            user_id: Some("bob"),
            ..alice
        };
        assert_eq!(e.reserve(bob, Uuid::now_v7(), || 1.0, now), Ok(true));
        // The first cost only $0.25: settling frees the rest of its hold at once...
        e.settle(ids[0], 0.25);
        assert!(e.reserve(alice, Uuid::now_v7(), || 0.5, now).is_ok());
        // ...and counting its record replaces the hold: no double count.
        let mut r = record(now, "alice", 0.25);
        r.request_id = ids[0];
        e.observe(&r, now);
        let held: f64 = e.lock().reserved[0].get("alice").copied().unwrap_or(0.0);
        assert!(
            (held - 2.5).abs() < 1e-9,
            "two $1 holds and one $0.5: {held}"
        );
        // Holds whose record never comes expire.
        e.tick(now + HOLD_TTL_MS + 1);
        assert!(!e.lock().reserved[0].contains_key("alice"));
    }
}
