//! Every read query against the SQLite store.

use rustc_hash::FxHashMap as HashMap;
use std::path::{Path, PathBuf};

use rusqlite::types::{Value, ValueRef};
use rusqlite::{params_from_iter, Connection, Row};
use tally_ingest::{CacheStatus, Record, Tokens};

use super::stats::{
    order_and_limit, user_key, Accumulator, AggregateSpec, Group, GroupBy, Measure, Sample,
};
use super::{Page, RequestFilter, StoreError};

const LIST_COLUMNS: &str = "request_id, ts, provider, endpoint, method, model, response_model,
    status, stream, latency_ms, ttft_ms, prompt_tokens, completion_tokens, cache_read_tokens,
    cache_write_tokens, reasoning_tokens, tokens_estimated, cost_usd, user_id, session_id,
    session_path, session_name, properties, cache_status, error, request_bytes, response_bytes,
    api_key_hint, provider_request_id, request_body_truncated, response_body_truncated, router,
    attempts, parent_request_id, cost_saved_usd, refusal, key_id, key_name, cache_write_1h_tokens,
    service_tier, web_search_calls";

/// Reads one SQLite store file. Each call opens a short-lived read-only connection, so readers
/// never hold the database between requests (and never block the writer in WAL mode).
#[derive(Debug, Clone)]
pub struct SqliteReader {
    path: PathBuf,
}

impl SqliteReader {
    /// A reader of the store at `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    /// The store file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn conn(&self) -> Result<Connection, StoreError> {
        Ok(tally_ingest::sqlite::open_ro(&self.path)?)
    }

    /// Checks that the store can be read.
    pub fn ping(&self) -> Result<(), StoreError> {
        self.conn()?
            .query_row("SELECT count(*) FROM requests LIMIT 1", [], |_| Ok(()))?;
        Ok(())
    }

    /// See [`super::Reader::reconciliations`].
    pub fn reconciliations(&self) -> Result<Vec<super::Reconciliation>, StoreError> {
        let conn = self.conn()?;
        let mut stmt = match conn.prepare(
            "SELECT r.at_ms, r.provider, r.report FROM reconciliations r
             WHERE r.at_ms = (SELECT max(at_ms) FROM reconciliations WHERE provider = r.provider)
             ORDER BY r.provider",
        ) {
            Ok(s) => s,
            Err(rusqlite::Error::SqliteFailure(_, Some(m))) if m.contains("no such table") => {
                return Ok(Vec::new())
            }
            Err(e) => return Err(e.into()),
        };
        let rows = stmt.query_map([], |r| {
            Ok(super::Reconciliation {
                at_ms: r.get(0)?,
                provider: r.get(1)?,
                report: r.get(2)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// See [`super::Reader::reprices`]. A store older than the `reprices` table has none.
    pub fn reprices(
        &self,
        from_ms: i64,
        to_ms: i64,
        limit: usize,
    ) -> Result<Vec<super::Reprice>, StoreError> {
        let conn = self.conn()?;
        let mut stmt = match conn.prepare(
            "SELECT at_ms, from_ms, to_ms, model, provider, changed, delta_usd FROM reprices
             WHERE changed > 0 AND from_ms < ?2 AND to_ms > ?1 ORDER BY at_ms DESC LIMIT ?3",
        ) {
            Ok(s) => s,
            Err(rusqlite::Error::SqliteFailure(_, Some(m))) if m.contains("no such table") => {
                return Ok(Vec::new())
            }
            Err(e) => return Err(e.into()),
        };
        let rows = stmt.query_map(rusqlite::params![from_ms, to_ms, limit as i64], |r| {
            Ok(super::Reprice {
                at_ms: r.get(0)?,
                from_ms: r.get(1)?,
                to_ms: r.get(2)?,
                model: r.get(3)?,
                provider: r.get(4)?,
                changed: r.get::<_, i64>(5)?.max(0) as u64,
                delta_usd: r.get(6)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// A page of records, newest first, without bodies.
    pub fn list(&self, f: &RequestFilter) -> Result<Page, StoreError> {
        let conn = self.conn()?;
        let mut w = Where::new(f);
        if let Some(c) = &f.cursor {
            w.bind(" AND (ts < ?", Value::Integer(c.ts));
            w.bind(" OR (ts = ?", Value::Integer(c.ts));
            w.bind(" AND request_id < ?))", Value::Text(c.request_id.clone()));
        }
        let limit = f.limit.max(1);
        w.bind(
            " ORDER BY ts DESC, request_id DESC LIMIT ?",
            Value::Integer(limit as i64 + 1),
        );
        let sql = format!(
            "SELECT {LIST_COLUMNS}, NULL, NULL, NULL, NULL FROM requests WHERE {}",
            w.sql
        );
        let params = w.params;
        let mut stmt = conn.prepare(&sql)?;
        let records = stmt
            .query_map(params_from_iter(params), row_to_record)?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Page::from_overfetch(records, limit))
    }

    /// Aggregates the records matching `f` (its cursor and limit ignored) once per spec
    /// `(group, order, limit)`, all in one scan. SQLite has no quantile function, so the scan
    /// feeds [`Accumulator`]s in Rust; one scan for a whole page (totals, series and every
    /// breakdown) matters because the scan is the cost.
    ///
    /// A long time range is split into one part per core, scanned in parallel on its own
    /// connection, and the parts' accumulators merged.
    pub fn aggregate_many(
        &self,
        f: &RequestFilter,
        specs: &[AggregateSpec],
    ) -> Result<Vec<Vec<Group>>, StoreError> {
        let parts = match (f.from_ms, f.to_ms) {
            (Some(from), Some(to)) if to - from >= SPLIT_MIN_SPAN_MS => {
                let n = std::thread::available_parallelism()
                    .map_or(1, |n| n.get())
                    .min(MAX_PARTS) as i64;
                (0..n)
                    .map(|i| RequestFilter {
                        from_ms: Some(from + (to - from) * i / n),
                        to_ms: Some(from + (to - from) * (i + 1) / n),
                        ..f.clone()
                    })
                    .collect()
            }
            _ => vec![f.clone()],
        };
        let mut scans = std::thread::scope(|s| {
            let handles: Vec<_> = parts
                .iter()
                .map(|part| s.spawn(move || self.scan(part, specs)))
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(StoreError::Task("scan panicked".into())))
                })
                .collect::<Result<Vec<_>, _>>()
        })?
        .into_iter();
        let mut merged = scans.next().unwrap_or_default();
        for scan in scans {
            for (into, from) in merged.iter_mut().zip(scan) {
                into.merge(from);
            }
        }
        Ok(merged
            .into_iter()
            .zip(specs)
            .map(|(g, spec)| {
                let mut out = g.finish();
                order_and_limit(&mut out, spec.order, spec.limit);
                out
            })
            .collect())
    }

    /// One scan of the records matching `f`, accumulated per spec.
    fn scan(
        &self,
        f: &RequestFilter,
        specs: &[AggregateSpec],
    ) -> Result<Vec<Grouping>, StoreError> {
        let conn = self.conn()?;
        let mut w = Where::new(f);
        // Fixed columns 0..=14, then one column per property grouping.
        let mut select = String::from(
            "ts, status, error IS NOT NULL, latency_ms, ttft_ms, cost_usd, prompt_tokens,
             completion_tokens, tokens_estimated, cache_status = 'hit', user_id, model,
             provider, session_id, key_name",
        );
        let mut groupings: Vec<Grouping> = Vec::with_capacity(specs.len());
        let mut next_column = 15;
        for spec in specs {
            let m = spec.measure;
            groupings.push(match &spec.group {
                GroupBy::Nothing => Grouping::One(Box::new(Accumulator::new(m))),
                GroupBy::Bucket(ms) => Grouping::Buckets(m, (*ms).max(1), HashMap::default()),
                GroupBy::User => Grouping::Keyed(m, 10, HashMap::default()),
                GroupBy::Model => Grouping::Keyed(m, 11, HashMap::default()),
                GroupBy::Provider => Grouping::Keyed(m, 12, HashMap::default()),
                GroupBy::Session => Grouping::Keyed(m, 13, HashMap::default()),
                GroupBy::Key => Grouping::Keyed(m, 14, HashMap::default()),
                GroupBy::Property(k) => {
                    // Bound once, referenced by number from the SELECT list.
                    w.params.push(Value::Text(json_path(k)));
                    select.push_str(&format!(", json_extract(properties, ?{})", w.params.len()));
                    next_column += 1;
                    Grouping::Keyed(m, next_column - 1, HashMap::default())
                }
            });
        }
        let sql = format!("SELECT {select} FROM requests WHERE {}", w.sql);
        let mut stmt = conn.prepare(&sql)?;
        let mut rows = stmt.query(params_from_iter(w.params))?;
        // Columns are read as `ValueRef`s: a million rows per page make the typed getters'
        // conversions and checks a measurable share of the scan.
        let int = |row: &Row<'_>, i: usize| -> rusqlite::Result<Option<i64>> {
            Ok(match row.get_ref(i)? {
                ValueRef::Integer(v) => Some(v),
                ValueRef::Real(v) => Some(v as i64),
                _ => None,
            })
        };
        let count = |v: Option<i64>| v.map(|v| v.max(0) as u64);
        while let Some(row) = rows.next()? {
            let ts = int(row, 0)?.unwrap_or(0);
            let user = match row.get_ref(10)? {
                ValueRef::Text(t) => Some(user_key(t)),
                _ => None,
            };
            let sample = Sample {
                ts,
                status: int(row, 1)?.unwrap_or(0).clamp(0, u16::MAX as i64) as u16,
                has_error: int(row, 2)? == Some(1),
                latency_ms: count(int(row, 3)?).unwrap_or(0),
                ttft_ms: count(int(row, 4)?),
                cost_usd: match row.get_ref(5)? {
                    ValueRef::Real(v) => Some(v),
                    ValueRef::Integer(v) => Some(v as f64),
                    _ => None,
                },
                prompt_tokens: count(int(row, 6)?),
                completion_tokens: count(int(row, 7)?),
                estimated: int(row, 8)?.is_some_and(|v| v != 0),
                cache_hit: int(row, 9)? == Some(1),
                user,
            };
            for g in groupings.iter_mut() {
                match g {
                    Grouping::One(acc) => acc.add(sample),
                    Grouping::Buckets(m, ms, map) => map
                        .entry(ts.div_euclid(*ms) * *ms)
                        .or_insert_with(|| Accumulator::new(*m))
                        .add(sample),
                    Grouping::Keyed(m, col, map) => {
                        let ValueRef::Text(k) = row.get_ref(*col)? else {
                            continue;
                        };
                        match map.get_mut(k) {
                            Some(acc) => acc.add(sample),
                            None => map
                                .entry(k.into())
                                .or_insert_with(|| Accumulator::new(*m))
                                .add(sample),
                        }
                    }
                }
            }
        }
        Ok(groupings)
    }

    /// Property keys used by the records matching `f`, sorted, at most `limit`.
    pub fn property_keys(
        &self,
        f: &RequestFilter,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        let conn = self.conn()?;
        let mut w = Where::new(f);
        w.bind(" ORDER BY 1 LIMIT ?", Value::Integer(limit as i64));
        let sql = format!(
            "SELECT DISTINCT j.key FROM requests, json_each(requests.properties) AS j WHERE {}",
            w.sql
        );
        let mut stmt = conn.prepare(&sql)?;
        let keys = stmt
            .query_map(params_from_iter(w.params), |r| r.get::<_, String>(0))?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(keys)
    }

    /// Cache hits matching `f` and what they saved: `(hits, USD)`.
    pub fn cache_savings(&self, f: &RequestFilter) -> Result<(u64, f64), StoreError> {
        let conn = self.conn()?;
        let w = Where::new(f);
        let sql = format!(
            "SELECT count(*), total(cost_saved_usd) FROM requests WHERE cache_status = 'hit' AND {}",
            w.sql
        );
        let (n, usd): (i64, f64) = conn.query_row(&sql, params_from_iter(w.params), |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?;
        Ok((n.max(0) as u64, usd))
    }

    /// One record with its bodies.
    pub fn get(&self, request_id: &str) -> Result<Option<Record>, StoreError> {
        let conn = self.conn()?;
        let sql = format!(
            "SELECT {LIST_COLUMNS}, request_body, response_body, upstream_request_body, upstream_response_body FROM requests WHERE request_id = ?1"
        );
        match conn.query_row(&sql, [request_id], row_to_record) {
            Ok(r) => Ok(Some(r)),
            Err(rusqlite::Error::QueryReturnedNoRows) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Runs one read-only SQL statement for `tally sql`: the connection is opened read-only and
    /// `query_only`, so SQLite itself refuses writes. Returns column names and rows as JSON.
    pub fn query(&self, sql: &str) -> Result<QueryResult, StoreError> {
        let conn = self.conn()?;
        if !tally_ingest::sqlite::reads_only(&conn, sql)? {
            return Err(StoreError::ReadOnly(
                "tally sql only reads, and this statement would write (VACUUM, INSERT, …)".into(),
            ));
        }
        let mut stmt = conn.prepare(sql)?;
        let columns: Vec<String> = stmt.column_names().map(str::to_owned).collect();
        let n = columns.len();
        let mut rows = Vec::new();
        let mut q = stmt.query([])?;
        while let Some(row) = q.next()? {
            let mut out = Vec::with_capacity(n);
            for i in 0..n {
                out.push(match row.get_ref(i)? {
                    ValueRef::Null => serde_json::Value::Null,
                    ValueRef::Integer(v) => v.into(),
                    ValueRef::Real(v) => v.into(),
                    ValueRef::Text(t) => String::from_utf8_lossy(t).into_owned().into(),
                    ValueRef::Blob(b) => format!("<{} bytes>", b.len()).into(),
                });
            }
            rows.push(out);
        }
        Ok(QueryResult { columns, rows })
    }
}

/// The WHERE clause of a [`RequestFilter`] (without its cursor), every value a numbered
/// parameter.
struct Where {
    sql: String,
    params: Vec<Value>,
}

impl Where {
    fn new(f: &RequestFilter) -> Self {
        let mut w = Self {
            sql: "1 = 1".to_owned(),
            params: Vec::new(),
        };
        if let Some(v) = f.from_ms {
            w.bind(" AND ts >= ?", Value::Integer(v));
        }
        if let Some(v) = f.to_ms {
            w.bind(" AND ts < ?", Value::Integer(v));
        }
        for (col, v) in f.equality_filters() {
            if let Some(v) = v {
                w.bind(&format!(" AND {col} = ?"), Value::Text(v.clone()));
            }
        }
        if let Some(s) = f.status {
            let (lo, hi) = s.range();
            w.bind(" AND status >= ?", Value::Integer(lo.into()));
            w.bind(" AND status <= ?", Value::Integer(hi.into()));
        }
        for (k, v) in &f.properties {
            w.bind(" AND json_extract(properties, ?", Value::Text(json_path(k)));
            w.bind(") = ?", Value::Text(v.clone()));
        }
        w
    }

    /// Appends `clause`, whose one `?` becomes the next numbered parameter.
    fn bind(&mut self, clause: &str, v: Value) {
        self.params.push(v);
        self.sql
            .push_str(&clause.replace('?', &format!("?{}", self.params.len())));
    }
}

/// The JSON path of a property key, bound as a parameter; the key is quoted inside it so any
/// name works.
fn json_path(key: &str) -> String {
    format!("$.\"{}\"", key.replace('\\', "\\\\").replace('"', "\\\""))
}

/// How one scan's rows are grouped: one accumulator, time buckets, or the text of a column.
enum Grouping {
    One(Box<Accumulator>),
    Buckets(Measure, i64, HashMap<i64, Accumulator>),
    /// Keyed by the column's bytes; made text (lossily, if ever not UTF-8) at the end.
    Keyed(Measure, usize, HashMap<Box<[u8]>, Accumulator>),
}

/// Scans shorter than this are not split: a thread per part costs more than it saves.
const SPLIT_MIN_SPAN_MS: i64 = 2 * 86_400_000;
/// At most this many parallel parts, whatever the core count.
const MAX_PARTS: usize = 4;

impl Grouping {
    fn merge(&mut self, other: Grouping) {
        fn merge_maps<K: std::hash::Hash + Eq>(
            into: &mut HashMap<K, Accumulator>,
            from: HashMap<K, Accumulator>,
        ) {
            for (k, acc) in from {
                into.entry(k).or_default().merge(acc);
            }
        }
        match (self, other) {
            (Grouping::One(a), Grouping::One(b)) => a.merge(*b),
            (Grouping::Buckets(_, _, a), Grouping::Buckets(_, _, b)) => merge_maps(a, b),
            (Grouping::Keyed(_, _, a), Grouping::Keyed(_, _, b)) => merge_maps(a, b),
            // Parts are built from the same specs, so their groupings line up.
            _ => {}
        }
    }

    fn finish(self) -> Vec<Group> {
        match self {
            Grouping::One(acc) if acc.is_empty() => Vec::new(),
            Grouping::One(acc) => vec![Group {
                key: String::new(),
                stats: (*acc).finish(),
            }],
            Grouping::Buckets(_, _, map) => map
                .into_iter()
                .map(|(t, acc)| Group {
                    key: t.to_string(),
                    stats: acc.finish(),
                })
                .collect(),
            Grouping::Keyed(_, _, map) => map
                .into_iter()
                .map(|(key, acc)| Group {
                    key: String::from_utf8_lossy(&key).into_owned(),
                    stats: acc.finish(),
                })
                .collect(),
        }
    }
}

/// The result of [`SqliteReader::query`].
#[derive(Debug, Clone, PartialEq)]
pub struct QueryResult {
    /// Column names in order.
    pub columns: Vec<String>,
    /// Rows, each value as JSON.
    pub rows: Vec<Vec<serde_json::Value>>,
}

fn row_to_record(row: &Row<'_>) -> rusqlite::Result<Record> {
    let id: String = row.get(0)?;
    let tok = |i: usize| -> rusqlite::Result<Option<u64>> {
        Ok(row.get::<_, Option<i64>>(i)?.map(|v| v.max(0) as u64))
    };
    let cache_write_1h = tok(38)?.unwrap_or(0);
    let tokens =
        Tokens::from_columns(tok(11)?, tok(12)?, tok(13)?, tok(14)?, tok(15)?).map(|t| Tokens {
            cache_write_1h,
            ..t
        });
    let properties: String = row.get(22)?;
    let cache_status: String = row.get(23)?;
    Ok(Record {
        request_id: uuid::Uuid::parse_str(&id).unwrap_or_default(),
        ts: row.get(1)?,
        provider: row.get(2)?,
        endpoint: row.get(3)?,
        method: row.get(4)?,
        model: row.get(5)?,
        response_model: row.get(6)?,
        status: row.get::<_, i64>(7)?.clamp(0, u16::MAX as i64) as u16,
        stream: row.get(8)?,
        latency_ms: row.get::<_, i64>(9)?.max(0) as u64,
        ttft_ms: row.get::<_, Option<i64>>(10)?.map(|v| v.max(0) as u64),
        tokens,
        tokens_estimated: row.get(16)?,
        cost_usd: row.get(17)?,
        user_id: row.get(18)?,
        session_id: row.get(19)?,
        session_path: row.get(20)?,
        session_name: row.get(21)?,
        properties: serde_json::from_str(&properties).unwrap_or_default(),
        cache_status: CacheStatus::parse(&cache_status),
        error: row.get(24)?,
        request_bytes: row.get::<_, i64>(25)?.max(0) as u64,
        response_bytes: row.get::<_, i64>(26)?.max(0) as u64,
        api_key_hint: row.get(27)?,
        provider_request_id: row.get(28)?,
        request_body_truncated: row.get(29)?,
        response_body_truncated: row.get(30)?,
        router: row.get(31)?,
        attempts: row.get::<_, i64>(32)?.clamp(0, u32::MAX as i64) as u32,
        parent_request_id: row
            .get::<_, Option<String>>(33)?
            .and_then(|s| uuid::Uuid::parse_str(&s).ok()),
        cost_saved_usd: row.get(34)?,
        refusal: row.get(35)?,
        key_id: row.get(36)?,
        key_name: row.get(37)?,
        service_tier: row.get(39)?,
        web_search_calls: row.get::<_, i64>(40)?.clamp(0, u32::MAX as i64) as u32,
        request_body: row.get(41)?,
        response_body: row.get(42)?,
        upstream_request_body: row.get(43)?,
        upstream_response_body: row.get(44)?,
    })
}
