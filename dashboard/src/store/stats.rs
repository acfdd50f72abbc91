//! The aggregate every dashboard number is made of, and its exact definitions.
//!
//! Both stores must return the same numbers for the same records, so the definitions live
//! here once and each store's query follows them:
//! - an **error** is [`tally_ingest::IS_ERROR_SQL`]: no upstream answer (status 0, which
//!   includes every request Tally refused), an HTTP error, or an error text. The rollup, the
//!   pages and the budgets' rules use the same definition;
//! - **unpriced** means tokens are known but `cost_usd` is NULL (an unknown model);
//! - a **quantile** at level `q` over `n` values is the value at 0-based index
//!   `floor(q * n)` of the sorted values (capped at `n - 1`), which is what ClickHouse's
//!   `quantilesExact` computes;
//! - **users** counts distinct non-NULL `user_id`s.
//!
//! One documented exception: ClickHouse serves ranges of at least [`ROLLUP_MIN_SPAN_MS`] from
//! its hourly rollup when the filters allow, where quantiles are merged t-digests
//! (approximate) and users a `uniq` estimate, and time is cut at whole hours.

use rustc_hash::FxHashSet;

use serde::Serialize;

/// Ranges at least this long may be served from pre-aggregated rows (ClickHouse's hourly
/// rollup): sums and counts stay exact, quantiles and distinct users become approximate.
pub const ROLLUP_MIN_SPAN_MS: i64 = 7 * 86_400_000;

/// The quantile levels shown everywhere.
pub const LEVELS: [f64; 3] = [0.5, 0.95, 0.99];

/// What to group an aggregate by. Groups with a NULL (or absent) key are left out, except
/// for [`GroupBy::Nothing`] and [`GroupBy::Bucket`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupBy {
    /// One group with everything.
    Nothing,
    /// Time buckets of this many milliseconds, aligned to the epoch.
    Bucket(i64),
    /// Requested model.
    Model,
    /// Provider name.
    Provider,
    /// `user_id`.
    User,
    /// `session_id`.
    Session,
    /// The Tally key's name.
    Key,
    /// The value of one property key (lower-case, as stored).
    Property(String),
}

/// How groups are ordered before the limit applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// Highest cost first, then most requests, then key.
    Cost,
    /// Oldest key first (time buckets).
    Key,
    /// Most recently seen first.
    LastSeen,
}

/// How much of [`Stats`] an aggregate computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Measure {
    /// Everything.
    Full,
    /// Counts, sums and times only: no quantiles (left `None`) and no distinct users (left 0).
    /// What a "top N by cost" list needs, at a fraction of the cost.
    Totals,
}

/// One aggregate of a page: how to group, how to order, how many groups to keep, and how
/// much to compute.
#[derive(Debug, Clone, PartialEq)]
pub struct AggregateSpec {
    /// Grouping.
    pub group: GroupBy,
    /// Order before the limit.
    pub order: Order,
    /// Groups kept.
    pub limit: usize,
    /// What to compute.
    pub measure: Measure,
}

impl AggregateSpec {
    /// A full aggregate.
    pub fn new(group: GroupBy, order: Order, limit: usize) -> Self {
        Self {
            group,
            order,
            limit,
            measure: Measure::Full,
        }
    }

    /// The same aggregate, counts and sums only.
    pub fn totals_only(mut self) -> Self {
        self.measure = Measure::Totals;
        self
    }
}

/// Latency quantiles in milliseconds; `None` when there were no values.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Quantiles {
    /// Median.
    pub p50: Option<u64>,
    /// 95th percentile.
    pub p95: Option<u64>,
    /// 99th percentile.
    pub p99: Option<u64>,
}

impl Quantiles {
    /// Quantiles of `values` by the rule in the module docs (reorders `values`).
    pub fn of(values: &mut [u64]) -> Self {
        let n = values.len();
        if n == 0 {
            return Self::default();
        }
        let mut at = |level: f64| {
            let i = ((level * n as f64) as usize).min(n - 1);
            *values.select_nth_unstable(i).1
        };
        Self {
            p50: Some(at(LEVELS[0])),
            p95: Some(at(LEVELS[1])),
            p99: Some(at(LEVELS[2])),
        }
    }

    /// From a store's array of the three levels, when there were values.
    pub fn from_levels(levels: &[u64], count: u64) -> Self {
        if count == 0 || levels.len() < 3 {
            return Self::default();
        }
        Self {
            p50: Some(levels[0]),
            p95: Some(levels[1]),
            p99: Some(levels[2]),
        }
    }
}

/// The aggregate of a set of records.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Stats {
    /// Records.
    pub requests: u64,
    /// Records that count as errors (see the module docs).
    pub errors: u64,
    /// Sum of `cost_usd`; NULL costs add nothing.
    pub cost_usd: f64,
    /// Sum of prompt tokens.
    pub prompt_tokens: u64,
    /// Sum of completion tokens.
    pub completion_tokens: u64,
    /// Records with tokens but no price.
    pub unpriced: u64,
    /// Records whose tokens were estimated.
    pub estimated: u64,
    /// Records answered from the response cache.
    pub cache_hits: u64,
    /// Total latency, for the average.
    pub latency_sum_ms: u64,
    /// Latency quantiles.
    pub latency_ms: Quantiles,
    /// Time-to-first-token quantiles over records that have one.
    pub ttft_ms: Quantiles,
    /// Distinct users.
    pub users: u64,
    /// Earliest request start, ms.
    pub first_ts: i64,
    /// Latest request start, ms.
    pub last_ts: i64,
    /// Latest request end (start plus latency), ms.
    pub last_end_ts: i64,
}

impl Stats {
    /// `errors / requests`, 0 when empty.
    pub fn error_rate(&self) -> f64 {
        ratio(self.errors, self.requests)
    }

    /// `cache_hits / requests`, 0 when empty.
    pub fn cache_hit_rate(&self) -> f64 {
        ratio(self.cache_hits, self.requests)
    }

    /// Mean latency, ms.
    pub fn avg_latency_ms(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.latency_sum_ms as f64 / self.requests as f64
        }
    }

    /// Prompt plus completion tokens.
    pub fn total_tokens(&self) -> u64 {
        self.prompt_tokens + self.completion_tokens
    }

    /// From the first request's start to the last request's end, ms.
    pub fn duration_ms(&self) -> i64 {
        (self.last_end_ts - self.first_ts).max(0)
    }
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 / b as f64
    }
}

/// One group of an aggregate.
#[derive(Debug, Clone, PartialEq)]
pub struct Group {
    /// The group's key: model name, user id, bucket start in ms as text, etc. Empty for
    /// [`GroupBy::Nothing`].
    pub key: String,
    /// Its numbers.
    pub stats: Stats,
}

/// The columns of one record that an aggregate reads.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// Start, ms.
    pub ts: i64,
    /// HTTP status (0 when none).
    pub status: u16,
    /// Whether `error` is set.
    pub has_error: bool,
    /// Latency, ms.
    pub latency_ms: u64,
    /// TTFT, ms.
    pub ttft_ms: Option<u64>,
    /// Cost.
    pub cost_usd: Option<f64>,
    /// Prompt tokens.
    pub prompt_tokens: Option<u64>,
    /// Completion tokens.
    pub completion_tokens: Option<u64>,
    /// Tokens estimated.
    pub estimated: bool,
    /// Served from cache.
    pub cache_hit: bool,
    /// `user_id`, as a 64-bit hash (see [`user_key`]).
    pub user: Option<u64>,
}

/// Accumulates samples into [`Stats`] for a store that cannot aggregate itself (SQLite has no
/// quantile function).
#[derive(Debug, Default)]
pub struct Accumulator {
    /// Counts and sums only ([`Measure::Totals`]).
    totals_only: bool,
    stats: Stats,
    latencies: Vec<u64>,
    ttfts: Vec<u64>,
    users: FxHashSet<u64>,
}

impl Accumulator {
    /// An accumulator computing `measure`.
    pub fn new(measure: Measure) -> Self {
        Self {
            totals_only: measure == Measure::Totals,
            ..Self::default()
        }
    }

    /// Adds one record.
    pub fn add(&mut self, s: Sample) {
        let st = &mut self.stats;
        if st.requests == 0 {
            st.first_ts = s.ts;
            st.last_ts = s.ts;
            st.last_end_ts = s.ts + s.latency_ms as i64;
        }
        st.requests += 1;
        st.errors += u64::from(tally_ingest::is_error(s.status, s.has_error));
        st.cost_usd += s.cost_usd.unwrap_or(0.0);
        st.prompt_tokens += s.prompt_tokens.unwrap_or(0);
        st.completion_tokens += s.completion_tokens.unwrap_or(0);
        st.unpriced += u64::from(s.cost_usd.is_none() && s.prompt_tokens.is_some());
        st.estimated += u64::from(s.estimated);
        st.cache_hits += u64::from(s.cache_hit);
        st.latency_sum_ms += s.latency_ms;
        st.first_ts = st.first_ts.min(s.ts);
        st.last_ts = st.last_ts.max(s.ts);
        st.last_end_ts = st.last_end_ts.max(s.ts + s.latency_ms as i64);
        if self.totals_only {
            return;
        }
        self.latencies.push(s.latency_ms);
        if let Some(t) = s.ttft_ms {
            self.ttfts.push(t);
        }
        if let Some(u) = s.user {
            self.users.insert(u);
        }
    }

    /// Adds everything `other` accumulated (a scan split into parts merges its parts).
    pub fn merge(&mut self, other: Accumulator) {
        if other.is_empty() {
            return;
        }
        if self.is_empty() {
            *self = other;
            return;
        }
        let (a, b) = (&mut self.stats, other.stats);
        a.requests += b.requests;
        a.errors += b.errors;
        a.cost_usd += b.cost_usd;
        a.prompt_tokens += b.prompt_tokens;
        a.completion_tokens += b.completion_tokens;
        a.unpriced += b.unpriced;
        a.estimated += b.estimated;
        a.cache_hits += b.cache_hits;
        a.latency_sum_ms += b.latency_sum_ms;
        a.first_ts = a.first_ts.min(b.first_ts);
        a.last_ts = a.last_ts.max(b.last_ts);
        a.last_end_ts = a.last_end_ts.max(b.last_end_ts);
        self.latencies.extend(other.latencies);
        self.ttfts.extend(other.ttfts);
        self.users.extend(other.users);
    }

    /// Whether no record was added.
    pub fn is_empty(&self) -> bool {
        self.stats.requests == 0
    }

    /// The finished numbers.
    pub fn finish(mut self) -> Stats {
        self.stats.latency_ms = Quantiles::of(&mut self.latencies);
        self.stats.ttft_ms = Quantiles::of(&mut self.ttfts);
        self.stats.users = self.users.len() as u64;
        self.stats
    }
}

/// The key a user id is counted under: a 64-bit SipHash with fixed keys, the same in every
/// thread of a split scan (so parts merge), and collision-free in practice (about 1 in 10^7
/// for a million distinct users).
pub fn user_key(user: &[u8]) -> u64 {
    use std::hash::{BuildHasher, BuildHasherDefault};
    BuildHasherDefault::<std::hash::DefaultHasher>::default().hash_one(user)
}

/// Orders `groups` and keeps the first `limit`.
pub fn order_and_limit(groups: &mut Vec<Group>, order: Order, limit: usize) {
    match order {
        Order::Cost => groups.sort_by(|a, b| {
            b.stats
                .cost_usd
                .total_cmp(&a.stats.cost_usd)
                .then(b.stats.requests.cmp(&a.stats.requests))
                .then_with(|| a.key.cmp(&b.key))
        }),
        Order::Key => groups.sort_by(|a, b| match (a.key.parse::<i64>(), b.key.parse::<i64>()) {
            (Ok(x), Ok(y)) => x.cmp(&y),
            _ => a.key.cmp(&b.key),
        }),
        Order::LastSeen => groups.sort_by(|a, b| {
            b.stats
                .last_ts
                .cmp(&a.stats.last_ts)
                .then_with(|| a.key.cmp(&b.key))
        }),
    }
    groups.truncate(limit);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantile_rule_matches_clickhouse_quantiles_exact() {
        // floor(q * n): for 1..=10, p50 is the 6th value and p95, p99 the 10th.
        let mut v: Vec<u64> = (1..=10).rev().collect();
        let q = Quantiles::of(&mut v);
        assert_eq!((q.p50, q.p95, q.p99), (Some(6), Some(10), Some(10)));
        let mut v: Vec<u64> = (1..=100).collect();
        let q = Quantiles::of(&mut v);
        assert_eq!((q.p50, q.p95, q.p99), (Some(51), Some(96), Some(100)));
        assert_eq!(Quantiles::of(&mut []), Quantiles::default());
    }

    #[test]
    fn accumulator_counts_by_the_documented_rules() {
        let base = Sample {
            ts: 1000,
            status: 200,
            has_error: false,
            latency_ms: 100,
            ttft_ms: None,
            cost_usd: Some(0.5),
            prompt_tokens: Some(10),
            completion_tokens: Some(5),
            estimated: false,
            cache_hit: false,
            user: Some(1),
        };
        let mut a = Accumulator::default();
        a.add(base);
        a.add(Sample {
            ts: 500,
            status: 0,
            cost_usd: None,
            user: Some(2),
            ttft_ms: Some(40),
            ..base
        });
        a.add(Sample {
            ts: 2000,
            status: 200,
            has_error: true,
            prompt_tokens: None,
            cost_usd: None,
            latency_ms: 50,
            user: Some(1),
            ..base
        });
        let mut totals = Accumulator::new(Measure::Totals);
        totals.add(base);
        let t = totals.finish();
        assert_eq!((t.requests, t.prompt_tokens, t.users), (1, 10, 0));
        assert_eq!(t.latency_ms, Quantiles::default(), "no quantiles computed");
        let s = a.finish();
        assert_eq!(s.requests, 3);
        assert_eq!(s.errors, 2);
        assert_eq!(s.unpriced, 1);
        assert_eq!(s.users, 2);
        assert_eq!(s.prompt_tokens, 20);
        assert_eq!((s.first_ts, s.last_ts, s.last_end_ts), (500, 2000, 2050));
        assert_eq!(s.ttft_ms.p50, Some(40));
        assert!((s.cost_usd - 0.5).abs() < 1e-12);
    }
}
