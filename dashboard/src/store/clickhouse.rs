//! Every read query against the ClickHouse store. Values are bound with the client's `?`
//! placeholders (escaped by the `clickhouse` crate), never formatted into the SQL.

use clickhouse::Client;
use tally_ingest::clickhouse::{ClickHouseSettings, RequestRow};
use tally_ingest::Record;

use super::stats::{
    order_and_limit, AggregateSpec, Group, GroupBy, Measure, Order, Quantiles, Stats,
    ROLLUP_MIN_SPAN_MS,
};
use super::{Page, RequestFilter, StoreError};

/// The columns of [`RequestRow`], with the bodies read or replaced by NULL.
fn columns(with_bodies: bool) -> String {
    let (bodies, upstream) = if with_bodies {
        (
            "request_body, response_body",
            "upstream_request_body, upstream_response_body",
        )
    } else {
        (
            "CAST(NULL, 'Nullable(String)') AS request_body, CAST(NULL, 'Nullable(String)') AS response_body",
            "CAST(NULL, 'Nullable(String)') AS upstream_request_body, CAST(NULL, 'Nullable(String)') AS upstream_response_body",
        )
    };
    format!(
        "request_id, ts, provider, endpoint, method, model, response_model, status, stream,
         latency_ms, ttft_ms, prompt_tokens, completion_tokens, cache_read_tokens,
         cache_write_tokens, reasoning_tokens, total_tokens, tokens_estimated, cost_usd, user_id,
         session_id, session_path, session_name, properties, cache_status, error, request_bytes,
         response_bytes, api_key_hint, provider_request_id, {bodies}, request_body_truncated,
         response_body_truncated, router, attempts, parent_request_id, cost_saved_usd, refusal,
         key_id, key_name, {upstream}, cache_write_1h_tokens, service_tier, web_search_calls"
    )
}

/// Reads the ClickHouse store.
#[derive(Clone)]
pub struct ClickHouseReader {
    client: Client,
    table: &'static str,
}

impl ClickHouseReader {
    /// A reader for validated settings.
    pub fn new(settings: &ClickHouseSettings) -> Self {
        Self {
            client: settings.client(),
            table: settings.requests_table(),
        }
    }

    /// Checks that the table can be read.
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.client
            .query(&format!("SELECT count() FROM {} LIMIT 1", self.table))
            .fetch_one::<u64>()
            .await?;
        Ok(())
    }

    /// See [`super::Reader::reconciliations`].
    pub async fn reconciliations(&self) -> Result<Vec<super::Reconciliation>, StoreError> {
        #[derive(serde::Deserialize, clickhouse::Row)]
        struct Row {
            at_ms: i64,
            provider: String,
            report: String,
        }
        let rows = self
            .client
            .query(
                "SELECT toUnixTimestamp64Milli(max(at)) AS at_ms, provider,
                        argMax(report, at) AS report
                 FROM reconciliations GROUP BY provider ORDER BY provider",
            )
            .fetch_all::<Row>()
            .await?;
        Ok(rows
            .into_iter()
            .map(|r| super::Reconciliation {
                at_ms: r.at_ms,
                provider: r.provider,
                report: r.report,
            })
            .collect())
    }

    /// See [`super::Reader::reprices`].
    pub async fn reprices(
        &self,
        from_ms: i64,
        to_ms: i64,
        limit: usize,
    ) -> Result<Vec<super::Reprice>, StoreError> {
        #[derive(serde::Deserialize, clickhouse::Row)]
        struct Row {
            at_ms: i64,
            from_ms: i64,
            to_ms: i64,
            model: Option<String>,
            provider: Option<String>,
            changed: u64,
            delta_usd: f64,
        }
        let rows = self
            .client
            .query(
                "SELECT toUnixTimestamp64Milli(at) AS at_ms, toUnixTimestamp64Milli(from_ts) AS from_ms,
                        toUnixTimestamp64Milli(to_ts) AS to_ms, model, provider, changed, delta_usd
                 FROM reprices
                 WHERE changed > 0 AND from_ts < fromUnixTimestamp64Milli(?)
                   AND to_ts > fromUnixTimestamp64Milli(?)
                 ORDER BY at DESC LIMIT ?",
            )
            .bind(to_ms)
            .bind(from_ms)
            .bind(limit as u64)
            .fetch_all::<Row>()
            .await?;
        Ok(rows
            .into_iter()
            .map(|r| super::Reprice {
                at_ms: r.at_ms,
                from_ms: r.from_ms,
                to_ms: r.to_ms,
                model: r.model,
                provider: r.provider,
                changed: r.changed,
                delta_usd: r.delta_usd,
            })
            .collect())
    }

    /// A page of records, newest first, without bodies.
    pub async fn list(&self, f: &RequestFilter) -> Result<Page, StoreError> {
        let mut binds = Vec::new();
        let mut sql = format!("SELECT {} FROM {} WHERE 1", columns(false), self.table);
        if let Some(c) = &f.cursor {
            sql.push_str(
                " AND (ts < fromUnixTimestamp64Milli(?) OR (ts = fromUnixTimestamp64Milli(?) AND toString(request_id) < ?))",
            );
            binds.extend([V::I(c.ts), V::I(c.ts), V::S(c.request_id.clone())]);
        }
        where_clause(f, &mut sql, &mut binds);
        let limit = f.limit.max(1);
        sql.push_str(" ORDER BY ts DESC, toString(request_id) DESC LIMIT ?");
        binds.push(V::I(limit as i64 + 1));
        let records: Vec<Record> = bound(self.client.query(&sql), binds)
            .fetch_all::<RequestRow>()
            .await?
            .into_iter()
            .map(Record::from)
            .collect();
        Ok(Page::from_overfetch(records, limit))
    }

    /// Aggregates the records matching `f` (its cursor and limit ignored) by `group`, with
    /// the definitions of [`super::stats`].
    pub async fn aggregate(
        &self,
        f: &RequestFilter,
        spec: &AggregateSpec,
    ) -> Result<Vec<Group>, StoreError> {
        let (group, order, limit) = (&spec.group, spec.order, spec.limit);
        let full = spec.measure == Measure::Full;
        if rollup_fits(f, group) {
            return self.aggregate_rollup(f, group, order, limit, full).await;
        }
        // Totals only: the quantiles and distinct users, the expensive part, are left out.
        let (lat, ttft, users) = if full {
            (
                "quantilesExact(0.5, 0.95, 0.99)(latency_ms)",
                "quantilesExactIf(0.5, 0.95, 0.99)(ifNull(ttft_ms, 0), ttft_ms IS NOT NULL)",
                "uniqExact(user_id)",
            )
        } else {
            (
                "CAST([], 'Array(UInt64)')",
                "CAST([], 'Array(UInt64)')",
                "toUInt64(0)",
            )
        };
        let mut binds = Vec::new();
        let (key, not_null) = match group {
            GroupBy::Nothing => ("''", ""),
            GroupBy::Bucket(ms) => {
                binds.extend([V::I(*ms), V::I(*ms)]);
                ("toString(intDiv(toUnixTimestamp64Milli(ts), ?) * ?)", "")
            }
            GroupBy::Model => ("toString(assumeNotNull(model))", " AND model IS NOT NULL"),
            GroupBy::Provider => ("toString(provider)", ""),
            GroupBy::User => ("assumeNotNull(user_id)", " AND user_id IS NOT NULL"),
            GroupBy::Session => ("assumeNotNull(session_id)", " AND session_id IS NOT NULL"),
            GroupBy::Key => (
                "toString(assumeNotNull(key_name))",
                " AND key_name IS NOT NULL",
            ),
            GroupBy::Property(k) => {
                binds.push(V::S(k.clone()));
                ("properties[?]", "")
            }
        };
        let mut sql = format!(
            "SELECT {key} AS k,
                    count() AS requests,
                    countIf({is_error}) AS errors,
                    sum(ifNull(cost_usd, 0)) AS cost,
                    sum(ifNull(prompt_tokens, 0)) AS prompt,
                    sum(ifNull(completion_tokens, 0)) AS completion,
                    countIf(cost_usd IS NULL AND prompt_tokens IS NOT NULL) AS unpriced_n,
                    countIf(tokens_estimated) AS estimated_n,
                    countIf(cache_status = 'hit') AS hits,
                    sum(latency_ms) AS latency_sum,
                    {lat} AS lat,
                    {ttft} AS ttft,
                    countIf(ttft_ms IS NOT NULL) AS ttft_n,
                    {users} AS users_n,
                    toUnixTimestamp64Milli(min(ts)) AS first,
                    toUnixTimestamp64Milli(max(ts)) AS last,
                    max(toUnixTimestamp64Milli(ts) + toInt64(latency_ms)) AS last_end
             FROM {} WHERE 1{not_null}",
            self.table,
            is_error = tally_ingest::IS_ERROR_SQL,
        );
        if let GroupBy::Property(k) = group {
            sql.push_str(" AND mapContains(properties, ?)");
            binds.push(V::S(k.clone()));
        }
        where_clause(f, &mut sql, &mut binds);
        group_order_limit(&mut sql, &mut binds, order, limit);
        let rows = bound(self.client.query(&sql), binds)
            .fetch_all::<AggRow>()
            .await?;
        let mut groups: Vec<Group> = rows.into_iter().map(AggRow::into_group).collect();
        order_and_limit(&mut groups, order, limit);
        Ok(groups)
    }

    /// [`Self::aggregate`] from the hourly rollup `requests_hourly`: whole hours, exact sums
    /// and counts, approximate quantiles (merged t-digests) and users (`uniq`).
    async fn aggregate_rollup(
        &self,
        f: &RequestFilter,
        group: &GroupBy,
        order: Order,
        limit: usize,
        full: bool,
    ) -> Result<Vec<Group>, StoreError> {
        let (lat, ttft, users) = if full {
            (
                "CAST(quantilesTDigestMerge(0.5, 0.95, 0.99)(lat_state), 'Array(Float64)')",
                "CAST(quantilesTDigestMerge(0.5, 0.95, 0.99)(ttft_state), 'Array(Float64)')",
                "uniqMerge(us)",
            )
        } else {
            (
                "CAST([], 'Array(Float64)')",
                "CAST([], 'Array(Float64)')",
                "toUInt64(0)",
            )
        };
        let mut binds = Vec::new();
        let (key, not_empty) = match group {
            GroupBy::Bucket(ms) => {
                binds.extend([V::I(*ms), V::I(*ms)]);
                (
                    "toString(intDiv(toInt64(toUnixTimestamp(hour)) * 1000, ?) * ?)",
                    "",
                )
            }
            GroupBy::Model => ("model", " AND model != ''"),
            GroupBy::Provider => ("toString(provider)", ""),
            _ => ("''", ""),
        };
        let mut sql = format!(
            "SELECT {key} AS k,
                    sum(n) AS requests, sum(e) AS errors, sum(c) AS cost, sum(p) AS prompt,
                    sum(o) AS completion, sum(u) AS unpriced_n, sum(est) AS estimated_n,
                    sum(h) AS hits, sum(ls) AS latency_sum,
                    {lat} AS lat, {ttft} AS ttft,
                    sum(tc) AS ttft_n, {users} AS users_n,
                    min(fm) AS first, max(lm) AS last, max(le) AS last_end
             FROM (
                SELECT hour, provider, model, requests AS n, errors AS e, cost_usd AS c,
                       prompt_tokens AS p, completion_tokens AS o, unpriced AS u,
                       estimated AS est, cache_hits AS h, latency_ms_sum AS ls,
                       latency_digest AS lat_state, ttft_digest AS ttft_state, ttft_count AS tc,
                       users AS us, first_ms AS fm, last_ms AS lm, last_end_ms AS le
                FROM {ROLLUP_TABLE}
                WHERE hour >= toStartOfHour(fromUnixTimestamp64Milli(?))
                  AND hour < fromUnixTimestamp64Milli(?){not_empty}"
        );
        binds.extend([V::I(f.from_ms.unwrap_or(0)), V::I(f.to_ms.unwrap_or(0))]);
        for (col, v) in [("model", &f.model), ("provider", &f.provider)] {
            if let Some(v) = v {
                sql.push_str(&format!(" AND {col} = ?"));
                binds.push(V::S(v.clone()));
            }
        }
        sql.push(')');
        group_order_limit(&mut sql, &mut binds, order, limit);
        let rows = bound(self.client.query(&sql), binds)
            .fetch_all::<RollupRow>()
            .await?;
        let mut groups: Vec<Group> = rows
            .into_iter()
            .filter(|r| r.requests > 0)
            .map(RollupRow::into_group)
            .collect();
        order_and_limit(&mut groups, order, limit);
        Ok(groups)
    }

    /// Property keys used by the records matching `f`, sorted, at most `limit`.
    pub async fn property_keys(
        &self,
        f: &RequestFilter,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        let mut binds = Vec::new();
        let mut sql = format!(
            "SELECT DISTINCT toString(arrayJoin(mapKeys(properties))) AS key FROM {} WHERE 1",
            self.table
        );
        where_clause(f, &mut sql, &mut binds);
        sql.push_str(" ORDER BY key LIMIT ?");
        binds.push(V::I(limit as i64));
        Ok(bound(self.client.query(&sql), binds)
            .fetch_all::<String>()
            .await?)
    }

    /// Cache hits matching `f` and what they saved: `(hits, USD)`.
    pub async fn cache_savings(&self, f: &RequestFilter) -> Result<(u64, f64), StoreError> {
        let mut binds = Vec::new();
        let mut sql = format!(
            "SELECT count(), sum(ifNull(cost_saved_usd, 0)) FROM {} WHERE cache_status = 'hit'",
            self.table
        );
        where_clause(f, &mut sql, &mut binds);
        Ok(bound(self.client.query(&sql), binds)
            .fetch_one::<(u64, f64)>()
            .await?)
    }

    /// One record with its bodies.
    pub async fn get(&self, request_id: &str) -> Result<Option<Record>, StoreError> {
        let sql = format!(
            "SELECT {} FROM {} WHERE request_id = toUUID(?) LIMIT 1",
            columns(true),
            self.table
        );
        Ok(self
            .client
            .query(&sql)
            .bind(request_id)
            .fetch_optional::<RequestRow>()
            .await?
            .map(Record::from))
    }

    /// Runs one SQL statement with `readonly = 1` (the server refuses writes) and returns the
    /// raw output in `format` (e.g. `TabSeparatedWithNames`, `JSONEachRow`).
    pub async fn query_raw(&self, sql: &str, format: &str) -> Result<Vec<u8>, StoreError> {
        let mut cursor = self
            .client
            .clone()
            .with_setting("readonly", "1")
            .query(sql)
            .fetch_bytes(format)?;
        Ok(cursor.collect().await?.to_vec())
    }
}

/// The hourly rollup (a Distributed table of that name in cluster mode).
const ROLLUP_TABLE: &str = "requests_hourly";

/// Whether `aggregate` may read the hourly rollup: a range of at least
/// [`ROLLUP_MIN_SPAN_MS`], filters on the rollup's dimensions only, and a grouping it has.
/// Shorter ranges read the records, with exact quantiles.
fn rollup_fits(f: &RequestFilter, group: &GroupBy) -> bool {
    let (Some(from), Some(to)) = (f.from_ms, f.to_ms) else {
        return false;
    };
    to - from >= ROLLUP_MIN_SPAN_MS
        && f.user_id.is_none()
        && f.session_id.is_none()
        && f.status.is_none()
        && f.properties.is_empty()
        && f.key_name.is_none()
        && match group {
            GroupBy::Nothing | GroupBy::Model | GroupBy::Provider => true,
            GroupBy::Bucket(ms) => ms % 3_600_000 == 0,
            GroupBy::User | GroupBy::Session | GroupBy::Key | GroupBy::Property(_) => false,
        }
}

/// One row of [`ClickHouseReader::aggregate_rollup`]: like [`AggRow`], with the merged
/// t-digest (so fractional) quantiles.
#[derive(clickhouse::Row, serde::Deserialize)]
struct RollupRow {
    k: String,
    requests: u64,
    errors: u64,
    cost: f64,
    prompt: u64,
    completion: u64,
    unpriced_n: u64,
    estimated_n: u64,
    hits: u64,
    latency_sum: u64,
    lat: Vec<f64>,
    ttft: Vec<f64>,
    ttft_n: u64,
    users_n: u64,
    first: i64,
    last: i64,
    last_end: i64,
}

impl RollupRow {
    fn into_group(self) -> Group {
        let round = |v: Vec<f64>| -> Vec<u64> {
            v.into_iter()
                .map(|x| {
                    if x.is_finite() {
                        x.round().max(0.0) as u64
                    } else {
                        0
                    }
                })
                .collect()
        };
        AggRow {
            k: self.k,
            requests: self.requests,
            errors: self.errors,
            cost: self.cost,
            prompt: self.prompt,
            completion: self.completion,
            unpriced_n: self.unpriced_n,
            estimated_n: self.estimated_n,
            hits: self.hits,
            latency_sum: self.latency_sum,
            lat: round(self.lat),
            ttft: round(self.ttft),
            ttft_n: self.ttft_n,
            users_n: self.users_n,
            first: self.first,
            last: self.last,
            last_end: self.last_end,
        }
        .into_group()
    }
}

/// A value for one `?` placeholder, in order.
enum V {
    I(i64),
    S(String),
    U(u16),
}

fn bound(mut q: clickhouse::query::Query, binds: Vec<V>) -> clickhouse::query::Query {
    for b in binds {
        q = match b {
            V::I(v) => q.bind(v),
            V::S(v) => q.bind(v),
            V::U(v) => q.bind(v),
        };
    }
    q
}

/// Ends an aggregate's SQL: grouped by its key `k`, ordered as [`order_and_limit`] orders
/// (which then settles ties the same way for both stores), at most `limit` groups.
fn group_order_limit(sql: &mut String, binds: &mut Vec<V>, order: Order, limit: usize) {
    sql.push_str(" GROUP BY k ORDER BY ");
    sql.push_str(match order {
        Order::Cost => "cost DESC, requests DESC, k",
        Order::Key => "k",
        Order::LastSeen => "last DESC, k",
    });
    sql.push_str(" LIMIT ?");
    binds.push(V::I(limit as i64));
}

/// Appends the conditions of `f` (without its cursor) to `sql`.
fn where_clause(f: &RequestFilter, sql: &mut String, binds: &mut Vec<V>) {
    if let Some(v) = f.from_ms {
        sql.push_str(" AND ts >= fromUnixTimestamp64Milli(?)");
        binds.push(V::I(v));
    }
    if let Some(v) = f.to_ms {
        sql.push_str(" AND ts < fromUnixTimestamp64Milli(?)");
        binds.push(V::I(v));
    }
    for (col, v) in f.equality_filters() {
        if let Some(v) = v {
            sql.push_str(&format!(" AND {col} = ?"));
            binds.push(V::S(v.clone()));
        }
    }
    if let Some(s) = f.status {
        let (lo, hi) = s.range();
        sql.push_str(" AND status BETWEEN ? AND ?");
        binds.extend([V::U(lo), V::U(hi)]);
    }
    for (k, v) in &f.properties {
        sql.push_str(" AND properties[?] = ?");
        binds.extend([V::S(k.clone()), V::S(v.clone())]);
    }
}

/// One row of [`ClickHouseReader::aggregate`].
#[derive(clickhouse::Row, serde::Deserialize)]
struct AggRow {
    k: String,
    requests: u64,
    errors: u64,
    cost: f64,
    prompt: u64,
    completion: u64,
    unpriced_n: u64,
    estimated_n: u64,
    hits: u64,
    latency_sum: u64,
    lat: Vec<u64>,
    ttft: Vec<u64>,
    ttft_n: u64,
    users_n: u64,
    first: i64,
    last: i64,
    last_end: i64,
}

impl AggRow {
    fn into_group(self) -> Group {
        Group {
            key: self.k,
            stats: Stats {
                requests: self.requests,
                errors: self.errors,
                cost_usd: self.cost,
                prompt_tokens: self.prompt,
                completion_tokens: self.completion,
                unpriced: self.unpriced_n,
                estimated: self.estimated_n,
                cache_hits: self.hits,
                latency_sum_ms: self.latency_sum,
                latency_ms: Quantiles::from_levels(&self.lat, self.requests),
                ttft_ms: Quantiles::from_levels(&self.ttft, self.ttft_n),
                users: self.users_n,
                first_ts: self.first,
                last_ts: self.last,
                last_end_ts: self.last_end,
            },
        }
    }
}
