//! `tally reprice`: stored costs recomputed after a price fix, on either store.
//!
//! The records of a range are read in pages, priced again by the caller's function (the
//! proxy's pricing, so a reprice computes exactly what the request path would now), and only
//! those whose cost moved are written. A second run with the same prices finds nothing to
//! change, so a reprice can be repeated or resumed. Each run is logged in `reprices`, which
//! the dashboard reads to say which ranges were repriced and when.
//!
//! ClickHouse's hourly rollup is fed by a materialized view on insert, which an `UPDATE` of
//! `requests` does not trigger. Rebuilding the affected hours (delete, then insert them again
//! from `requests`) would race with records arriving meanwhile, counted twice. Instead each
//! (hour, provider, model) gets a correction row holding the change of its sums: the
//! rollup's columns are sums, so the correction is exact whatever arrives around it. The
//! correction rows are inserted before the mutation, with a deduplication token made of the
//! changes themselves: a run that dies between the two repeats the same corrections on its
//! retry, and the rollup drops them as the duplicate insert they are.

use std::collections::BTreeMap;

use uuid::Uuid;

use crate::record::{CacheStatus, Record, Tokens};

/// Which records to reprice.
#[derive(Debug, Clone, Default)]
pub struct Scope {
    /// Records that started at or after this (Unix ms).
    pub from_ms: i64,
    /// And before this.
    pub to_ms: i64,
    /// Only this model (requested or answered).
    pub model: Option<String>,
    /// Only this provider.
    pub provider: Option<String>,
}

/// What a reprice did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Outcome {
    /// Records with usage in the scope.
    pub examined: u64,
    /// Of those, the records whose cost changed.
    pub changed: u64,
    /// The sum of the changes, USD (new minus old; a cost that became unknown counts its old
    /// value as removed).
    pub delta_usd: f64,
    /// Records that had a cost and now have none (the model lost its price).
    pub now_unpriced: u64,
    /// Records that had none and now have one.
    pub now_priced: u64,
}

/// A reprice failed; what was written before the failure stays (and a rerun completes it).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RepriceError {
    /// SQLite said no.
    #[error(transparent)]
    Sqlite(#[from] crate::sqlite::SqliteError),
    /// ClickHouse said no.
    #[error(transparent)]
    ClickHouse(#[from] crate::clickhouse::ClickHouseError),
    /// Something this version cannot do.
    #[error("{0}")]
    Unsupported(String),
}

impl From<rusqlite::Error> for RepriceError {
    fn from(e: rusqlite::Error) -> Self {
        RepriceError::Sqlite(crate::sqlite::SqliteError::from(e))
    }
}

impl From<clickhouse::error::Error> for RepriceError {
    fn from(e: clickhouse::error::Error) -> Self {
        RepriceError::ClickHouse(e.into())
    }
}

/// Records read per page.
const PAGE: usize = 5_000;

/// One record's new cost, when it differs from the stored one.
#[derive(Debug, Clone, PartialEq)]
struct Change {
    request_id: Uuid,
    hour_ms: i64,
    provider: String,
    model: String,
    old: Option<f64>,
    cost_usd: Option<f64>,
    cost_saved_usd: Option<f64>,
}

/// The new `(cost_usd, cost_saved_usd)` of a stored record: a cache hit cost nothing and
/// saved its price; anything else cost its price.
fn repriced(r: &Record, price: Option<f64>) -> (Option<f64>, Option<f64>) {
    match r.cache_status {
        CacheStatus::Hit => (Some(0.0), price),
        _ => (price, r.cost_saved_usd),
    }
}

fn same(a: Option<f64>, b: Option<f64>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => (a - b).abs() <= 1e-12 * a.abs().max(1.0),
        (None, None) => true,
        _ => false,
    }
}

/// Prices a page; the changes, and the outcome's counts updated.
fn changes(
    page: &[Record],
    price: &dyn Fn(&Record) -> Option<f64>,
    out: &mut Outcome,
) -> Vec<Change> {
    let mut v = Vec::new();
    for r in page {
        out.examined += 1;
        let (cost, saved) = repriced(r, price(r));
        if same(cost, r.cost_usd) && same(saved, r.cost_saved_usd) {
            continue;
        }
        out.changed += 1;
        out.delta_usd += cost.unwrap_or(0.0) - r.cost_usd.unwrap_or(0.0);
        match (r.cost_usd, cost) {
            (Some(_), None) => out.now_unpriced += 1,
            (None, Some(_)) => out.now_priced += 1,
            _ => {}
        }
        v.push(Change {
            request_id: r.request_id,
            hour_ms: r.ts - r.ts.rem_euclid(3_600_000),
            provider: r.provider.clone(),
            model: r.model.clone().unwrap_or_default(),
            old: r.cost_usd,
            cost_usd: cost,
            cost_saved_usd: saved,
        });
    }
    v
}

/// The columns a reprice reads, in the order [`record_from`] takes them.
const COLUMNS: &str = "request_id, ts, provider, model, response_model, prompt_tokens, \
    completion_tokens, cache_read_tokens, cache_write_tokens, cache_write_1h_tokens, \
    reasoning_tokens, service_tier, web_search_calls, properties, cache_status, cost_usd, \
    cost_saved_usd";

/// Reprices the records of `scope` in the SQLite store at `path`, one transaction per page.
pub fn sqlite(
    path: &std::path::Path,
    scope: &Scope,
    catalog: Option<&str>,
    price: &dyn Fn(&Record) -> Option<f64>,
) -> Result<Outcome, RepriceError> {
    use rusqlite::params;
    let mut conn = crate::sqlite::open_rw(path)?;
    crate::sqlite::migrate(&mut conn)?;
    let mut out = Outcome::default();
    let mut after = String::new();
    // Usage or units: what has a price. Requests Tally answered itself have neither.
    let sql = format!(
        "SELECT {COLUMNS} FROM requests WHERE ts >= ?1 AND ts < ?2 AND request_id > ?3
           AND (prompt_tokens IS NOT NULL OR properties LIKE '%\"billed\\_%' ESCAPE '\\')
           AND (?4 IS NULL OR model = ?4 OR response_model = ?4)
           AND (?5 IS NULL OR provider = ?5)
         ORDER BY request_id LIMIT {PAGE}"
    );
    loop {
        let page: Vec<Record> = {
            let mut stmt = conn.prepare_cached(&sql)?;
            let rows = stmt.query_map(
                params![
                    scope.from_ms,
                    scope.to_ms,
                    after,
                    scope.model,
                    scope.provider
                ],
                |row| {
                    let tok = |i: usize| -> rusqlite::Result<Option<u64>> {
                        Ok(row.get::<_, Option<i64>>(i)?.map(|v| v.max(0) as u64))
                    };
                    let id: String = row.get(0)?;
                    let properties: String = row.get(13)?;
                    let cache: String = row.get(14)?;
                    Ok(record_from(
                        Uuid::parse_str(&id).unwrap_or_default(),
                        row.get(1)?,
                        row.get(2)?,
                        row.get(3)?,
                        row.get(4)?,
                        [tok(5)?, tok(6)?, tok(7)?, tok(8)?, tok(9)?, tok(10)?],
                        row.get(11)?,
                        row.get::<_, i64>(12)?.clamp(0, u32::MAX as i64) as u32,
                        serde_json::from_str(&properties).unwrap_or_default(),
                        &cache,
                        row.get(15)?,
                        row.get(16)?,
                    ))
                },
            )?;
            rows.collect::<Result<_, _>>()?
        };
        let Some(last) = page.last() else { break };
        after = last.request_id.to_string();
        let changed = changes(&page, price, &mut out);
        let tx = conn.transaction()?;
        {
            let mut stmt = tx.prepare_cached(
                "UPDATE requests SET cost_usd = ?2, cost_saved_usd = ?3 WHERE request_id = ?1",
            )?;
            for c in &changed {
                stmt.execute(params![
                    c.request_id.to_string(),
                    c.cost_usd,
                    c.cost_saved_usd
                ])?;
            }
        }
        tx.commit()?;
        if page.len() < PAGE {
            break;
        }
    }
    conn.execute(
        "INSERT INTO reprices (at_ms, from_ms, to_ms, model, provider, catalog, examined, changed, delta_usd)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        params![
            crate::now_ms(),
            scope.from_ms,
            scope.to_ms,
            scope.model,
            scope.provider,
            catalog,
            out.examined as i64,
            out.changed as i64,
            out.delta_usd
        ],
    )?;
    Ok(out)
}

#[allow(clippy::too_many_arguments)]
fn record_from(
    request_id: Uuid,
    ts: i64,
    provider: String,
    model: Option<String>,
    response_model: Option<String>,
    t: [Option<u64>; 6],
    service_tier: Option<String>,
    web_search_calls: u32,
    properties: BTreeMap<String, String>,
    cache_status: &str,
    cost_usd: Option<f64>,
    cost_saved_usd: Option<f64>,
) -> Record {
    let [prompt, completion, read, write, write_1h, reasoning] = t;
    Record {
        provider,
        model,
        response_model,
        tokens: Tokens::from_columns(prompt, completion, read, write, reasoning).map(|t| Tokens {
            cache_write_1h: write_1h.unwrap_or(0),
            ..t
        }),
        service_tier,
        web_search_calls,
        properties,
        cache_status: CacheStatus::parse(cache_status),
        cost_usd,
        cost_saved_usd,
        ..Record::new(request_id, ts)
    }
}

/// The row a ClickHouse reprice reads.
#[derive(Debug, serde::Deserialize, clickhouse::Row)]
struct PriceRow {
    #[serde(with = "clickhouse::serde::uuid")]
    request_id: Uuid,
    ts: i64,
    provider: String,
    model: Option<String>,
    response_model: Option<String>,
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
    cache_read_tokens: Option<u64>,
    cache_write_tokens: Option<u64>,
    cache_write_1h_tokens: Option<u64>,
    reasoning_tokens: Option<u64>,
    service_tier: Option<String>,
    web_search_calls: u32,
    properties: Vec<(String, String)>,
    cache_status: String,
    cost_usd: Option<f64>,
    cost_saved_usd: Option<f64>,
}

/// A correction of the hourly rollup: the change of one (hour, provider, model)'s sums.
#[derive(Debug, serde::Serialize, clickhouse::Row)]
struct RollupCorrection {
    hour: u32,
    provider: String,
    model: String,
    cost_usd: f64,
    /// The change of the unpriced count, modulo 2^64: the column is a `sum` of UInt64,
    /// which wraps, so adding 2^64 − 1 takes one away.
    unpriced: u64,
    /// Neutral for `min` and `max`: left to their defaults (the hour's bounds), these would
    /// move the hour's first and last times.
    first_ms: i64,
    last_ms: i64,
    last_end_ms: i64,
}

/// Reprices the records of `scope` in ClickHouse: corrections into the hourly rollup, then an
/// `ALTER TABLE … UPDATE` of the changed records, per page. A single server only: on a
/// cluster the mutation and the corrections would have to run per shard.
pub async fn clickhouse(
    settings: &crate::clickhouse::ClickHouseSettings,
    scope: &Scope,
    catalog: Option<&str>,
    price: &dyn Fn(&Record) -> Option<f64>,
) -> Result<Outcome, RepriceError> {
    if settings.cluster.is_some() {
        return Err(RepriceError::Unsupported(
            "tally reprice does not run on a ClickHouse cluster yet (store.cluster is set): the \
             mutation and the rollup corrections would have to run on every shard"
                .into(),
        ));
    }
    crate::clickhouse::migrate(settings).await?;
    let client = settings.client();
    let mut out = Outcome::default();
    let mut after = Uuid::nil();
    loop {
        let page: Vec<PriceRow> = client
            .query(&format!(
                "SELECT request_id, toUnixTimestamp64Milli(ts) AS ts, provider, model,
                        response_model, prompt_tokens, completion_tokens, cache_read_tokens,
                        cache_write_tokens, cache_write_1h_tokens, reasoning_tokens,
                        service_tier, web_search_calls, properties, cache_status, cost_usd,
                        cost_saved_usd
                 FROM requests
                 WHERE ts >= fromUnixTimestamp64Milli(?) AND ts < fromUnixTimestamp64Milli(?)
                   AND request_id > toUUID(?)
                   AND (prompt_tokens IS NOT NULL
                        OR arrayExists(k -> startsWith(k, 'billed_'), mapKeys(properties)))
                   AND (? = '' OR model = ? OR response_model = ?)
                   AND (? = '' OR provider = ?)
                 ORDER BY request_id LIMIT {PAGE}"
            ))
            .bind(scope.from_ms)
            .bind(scope.to_ms)
            .bind(after.to_string())
            .bind(scope.model.as_deref().unwrap_or(""))
            .bind(scope.model.as_deref().unwrap_or(""))
            .bind(scope.model.as_deref().unwrap_or(""))
            .bind(scope.provider.as_deref().unwrap_or(""))
            .bind(scope.provider.as_deref().unwrap_or(""))
            .fetch_all()
            .await?;
        let Some(last) = page.last() else { break };
        after = last.request_id;
        let full = page.len() == PAGE;
        let records: Vec<Record> = page
            .into_iter()
            .map(|r| {
                record_from(
                    r.request_id,
                    r.ts,
                    r.provider,
                    r.model,
                    r.response_model,
                    [
                        r.prompt_tokens,
                        r.completion_tokens,
                        r.cache_read_tokens,
                        r.cache_write_tokens,
                        r.cache_write_1h_tokens,
                        r.reasoning_tokens,
                    ],
                    r.service_tier,
                    r.web_search_calls,
                    r.properties.into_iter().collect(),
                    &r.cache_status,
                    r.cost_usd,
                    r.cost_saved_usd,
                )
            })
            .collect();
        let changed = changes(&records, price, &mut out);
        if !changed.is_empty() {
            correct_rollup(&client, &changed).await?;
            update_requests(&client, &changed).await?;
        }
        if !full {
            break;
        }
    }
    let mut insert = client.insert::<RepriceRow>("reprices").await?;
    insert
        .write(&RepriceRow {
            at: crate::now_ms(),
            from_ts: scope.from_ms,
            to_ts: scope.to_ms,
            model: scope.model.clone(),
            provider: scope.provider.clone(),
            catalog: catalog.map(str::to_owned),
            examined: out.examined,
            changed: out.changed,
            delta_usd: out.delta_usd,
        })
        .await?;
    insert.end().await?;
    Ok(out)
}

#[derive(Debug, serde::Serialize, clickhouse::Row)]
struct RepriceRow {
    at: i64,
    from_ts: i64,
    to_ts: i64,
    model: Option<String>,
    provider: Option<String>,
    catalog: Option<String>,
    examined: u64,
    changed: u64,
    delta_usd: f64,
}

async fn correct_rollup(
    client: &clickhouse::Client,
    changed: &[Change],
) -> Result<(), RepriceError> {
    let mut sums: BTreeMap<(i64, &str, &str), (f64, i64)> = BTreeMap::new();
    for c in changed {
        let e = sums.entry((c.hour_ms, &c.provider, &c.model)).or_default();
        e.0 += c.cost_usd.unwrap_or(0.0) - c.old.unwrap_or(0.0);
        // The rollup counts a record unpriced when it has tokens and no cost.
        e.1 += i64::from(c.cost_usd.is_none()) - i64::from(c.old.is_none());
    }
    // The same changes make the same token: a retried run's corrections are dropped as a
    // duplicate of the first's.
    let token = {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        for c in changed {
            c.request_id.hash(&mut h);
            c.cost_usd.map(f64::to_bits).hash(&mut h);
        }
        format!("reprice-{:016x}-{}", h.finish(), changed.len())
    };
    // Without schema validation: the crate cannot parse the rollup's AggregateFunction
    // columns, which this insert leaves to their defaults (empty states) anyway.
    let mut insert = client
        .clone()
        .with_validation(false)
        .with_setting("insert_deduplication_token", token)
        .insert::<RollupCorrection>("requests_hourly")
        .await?;
    for ((hour_ms, provider, model), (cost, unpriced)) in sums {
        insert
            .write(&RollupCorrection {
                hour: (hour_ms / 1000) as u32,
                provider: provider.to_owned(),
                model: model.to_owned(),
                cost_usd: cost,
                unpriced: unpriced as u64,
                first_ms: i64::MAX,
                last_ms: i64::MIN,
                last_end_ms: i64::MIN,
            })
            .await?;
    }
    insert.end().await?;
    Ok(())
}

async fn update_requests(
    client: &clickhouse::Client,
    changed: &[Change],
) -> Result<(), RepriceError> {
    let ids: Vec<String> = changed.iter().map(|c| c.request_id.to_string()).collect();
    let costs: Vec<Option<f64>> = changed.iter().map(|c| c.cost_usd).collect();
    let saved: Vec<Option<f64>> = changed.iter().map(|c| c.cost_saved_usd).collect();
    // One mutation per page, waited for, so the next page and a rerun see its result.
    client
        .query(
            "ALTER TABLE requests UPDATE
                 cost_usd = mapFromArrays(arrayMap(x -> toUUID(x), ?), CAST(?, 'Array(Nullable(Float64))'))[request_id],
                 cost_saved_usd = mapFromArrays(arrayMap(x -> toUUID(x), ?), CAST(?, 'Array(Nullable(Float64))'))[request_id]
             WHERE has(arrayMap(x -> toUUID(x), ?), request_id)
             SETTINGS mutations_sync = 2",
        )
        .bind(&ids)
        .bind(&costs)
        .bind(&ids)
        .bind(&saved)
        .bind(&ids)
        .execute()
        .await?;
    Ok(())
}
