//! Live counters: spend per (budget, scope key) in time buckets, and request/error/latency
//! counts per (rule, key). Pure data, no clock and no I/O, so the engine can be tested with
//! any times.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;

use crate::window::{Bounds, Window};

/// Spend of one scope key, bucketed by start time. A calendar window is one bucket (its start),
/// a rolling window 60 of them; a late record lands in its own (old) bucket and is ignored by
/// the current window, exactly as a store query by `ts` would ignore it.
#[derive(Debug, Default, Clone)]
pub struct Spend {
    buckets: BTreeMap<i64, f64>,
}

impl Spend {
    /// Adds `usd` spent by a request that started at `ts`.
    pub fn add(&mut self, window: &Window, ts: i64, usd: f64) {
        *self.buckets.entry(bucket_of(window, ts)).or_default() += usd;
    }

    /// Takes the store's figure for a bucket when it is higher: the store holds other
    /// replicas' spend, the ledger holds records not written yet; neither is ever counted twice.
    pub fn reconcile(&mut self, bucket: i64, usd: f64) {
        let b = self.buckets.entry(bucket).or_default();
        if usd > *b {
            *b = usd;
        }
    }

    /// Spend within `bounds`.
    pub fn total(&self, bounds: Bounds) -> f64 {
        self.buckets
            .range(bounds.start..bounds.end)
            .map(|(_, v)| v)
            .sum()
    }

    /// Forgets buckets that ended before `bounds`. Returns whether anything is left.
    pub fn prune(&mut self, bounds: Bounds) -> bool {
        self.buckets = self.buckets.split_off(&bounds.start);
        !self.buckets.is_empty()
    }

    /// When the spend within the current window first drops below `limit` as old buckets leave
    /// it (rolling windows), or the window's end (calendar windows).
    pub fn below_limit_at(&self, window: &Window, bounds: Bounds, limit: f64) -> i64 {
        let Window::Rolling(len) = window else {
            return bounds.end;
        };
        let len = len.as_millis() as i64;
        let mut left = self.total(bounds);
        for (start, usd) in self.buckets.range(bounds.start..bounds.end) {
            left -= usd;
            if left < limit {
                return start + len;
            }
        }
        bounds.end
    }
}

/// The bucket a request starting at `ts` counts in.
pub fn bucket_of(window: &Window, ts: i64) -> i64 {
    match window {
        Window::Calendar(..) => window.bounds(ts).start,
        Window::Rolling(_) => ts - ts.rem_euclid(window.bucket_ms()),
    }
}

/// Buckets a rule's window is cut into.
const RULE_BUCKETS: i64 = 12;

/// Requests, errors and a latency histogram of one rule key, in buckets.
#[derive(Debug, Default)]
pub struct Health {
    buckets: BTreeMap<i64, HealthBucket>,
}

#[derive(Debug)]
struct HealthBucket {
    requests: u64,
    errors: u64,
    latency: Histogram<u32>,
}

/// A rule key's figures over its window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HealthSummary {
    /// Requests in the window.
    pub requests: u64,
    /// Errors among them.
    pub errors: u64,
    /// 95th percentile latency, ms (2 significant digits, HDR histogram).
    pub p95_latency_ms: u64,
}

/// Latencies above an hour are clamped: a rule on p95 only needs to know it is huge.
const MAX_LATENCY_MS: u64 = 3_600_000;

fn histogram() -> Histogram<u32> {
    // Two significant digits keep a bucket at a few KB; the bounds are constants, so this
    // cannot fail.
    Histogram::new_with_bounds(1, MAX_LATENCY_MS, 2).unwrap_or_else(|_| {
        Histogram::new(2).unwrap_or_else(|_| unreachable!("2 significant digits are valid"))
    })
}

impl Health {
    /// Counts one request.
    pub fn add(&mut self, window_ms: i64, ts: i64, error: bool, latency_ms: u64) {
        let b = (window_ms / RULE_BUCKETS).max(1000);
        let bucket = self
            .buckets
            .entry(ts - ts.rem_euclid(b))
            .or_insert_with(|| HealthBucket {
                requests: 0,
                errors: 0,
                latency: histogram(),
            });
        bucket.requests += 1;
        bucket.errors += u64::from(error);
        bucket
            .latency
            .saturating_record(latency_ms.clamp(1, MAX_LATENCY_MS));
    }

    /// Figures over `[now - window_ms, now]`, after dropping older buckets.
    pub fn summary(&mut self, window_ms: i64, now: i64) -> HealthSummary {
        let b = (window_ms / RULE_BUCKETS).max(1000);
        let first = now - now.rem_euclid(b) - (window_ms / b - 1) * b;
        self.buckets = self.buckets.split_off(&first);
        let mut requests = 0;
        let mut errors = 0;
        let mut all = histogram();
        for bucket in self.buckets.values() {
            requests += bucket.requests;
            errors += bucket.errors;
            let _ = all.add(&bucket.latency);
        }
        HealthSummary {
            requests,
            errors,
            p95_latency_ms: if requests == 0 {
                0
            } else {
                all.value_at_quantile(0.95)
            },
        }
    }

    /// Whether any bucket is left.
    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono_tz::Tz;
    use std::time::Duration;

    #[test]
    fn calendar_spend_resets_at_the_boundary() {
        let w = Window::parse("hour", Tz::UTC).expect("window");
        let mut s = Spend::default();
        s.add(&w, 3_600_000 + 10, 2.0);
        s.add(&w, 3_600_000 + 20, 3.0);
        assert_eq!(s.total(w.bounds(3_600_000 + 30)), 5.0);
        s.add(&w, 2 * 3_600_000 + 1, 1.0);
        assert_eq!(s.total(w.bounds(2 * 3_600_000 + 5)), 1.0);
        assert!(s.prune(w.bounds(2 * 3_600_000 + 5)));
        assert_eq!(s.buckets.len(), 1);
        // A late record of the previous hour does not count in this one.
        s.add(&w, 3_600_000 + 50, 9.0);
        assert_eq!(s.total(w.bounds(2 * 3_600_000 + 5)), 1.0);
    }

    #[test]
    fn rolling_spend_ages_out_and_says_when() {
        let w = Window::Rolling(Duration::from_secs(3600));
        let mut s = Spend::default();
        s.add(&w, 0, 4.0); // bucket [0, 60 s)
        s.add(&w, 600_000, 6.0); // bucket at 10 min
        assert_eq!(s.total(w.bounds(1_000_000)), 10.0);
        // Limit 8: the first bucket leaving (at 1 h) brings spend to 6 < 8.
        assert_eq!(s.below_limit_at(&w, w.bounds(1_000_000), 8.0), 3_600_000);
        // Limit 5: both must leave.
        assert_eq!(
            s.below_limit_at(&w, w.bounds(1_000_000), 5.0),
            600_000 + 3_600_000
        );
        assert_eq!(s.total(w.bounds(3_600_000)), 6.0);
        assert_eq!(s.total(w.bounds(4_200_000)), 0.0);
    }

    #[test]
    fn reconcile_takes_the_larger_figure() {
        let w = Window::parse("day", Tz::UTC).expect("window");
        let mut s = Spend::default();
        s.add(&w, 5, 2.0);
        s.reconcile(0, 1.5);
        assert_eq!(s.total(w.bounds(10)), 2.0);
        s.reconcile(0, 7.0);
        assert_eq!(s.total(w.bounds(10)), 7.0);
    }

    #[test]
    fn health_counts_errors_and_p95_in_the_window() {
        let mut h = Health::default();
        for i in 0..100u64 {
            h.add(60_000, 1_000 + i as i64, i % 10 == 0, i + 1);
        }
        let s = h.summary(60_000, 2_000);
        assert_eq!(s.requests, 100);
        assert_eq!(s.errors, 10);
        assert!(
            (94..=96).contains(&s.p95_latency_ms),
            "{}",
            s.p95_latency_ms
        );
        // A minute later the window holds none of them.
        assert_eq!(h.summary(60_000, 70_000).requests, 0);
        assert!(h.is_empty());
    }
}
