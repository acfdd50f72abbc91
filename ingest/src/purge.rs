//! `tally purge`: a user's, a session's or a property value's records erased from the store,
//! from the spool, and from whatever reaches the store after the purge.
//!
//! A record can be on its way to the store when the purge runs: in a running Tally's channel
//! or batch, in the spool while the store was down, in the crash journal after a `kill -9`.
//! Deleting the rows once would let those arrive afterwards and undo the purge. So each purge
//! is also a row of `purges`, the audit table, and the store refuses, from then on, every
//! record of the purged scope that started before the purge (`ts < at`):
//!
//! - **SQLite**: a `BEFORE INSERT` trigger skips such rows, created by the first purge. The
//!   purge's row is committed before the first delete, so no insert after it escapes the
//!   trigger, and the deletes go in chunks a running Tally's writer can come between.
//! - **ClickHouse** has no triggers. Its writer reads `purges` at most once a
//!   [`ERASURES_REFRESH`] and leaves matching records out of each batch ([`Erasures`]). A
//!   purge writes its row, waits until every writer has read it (twice the refresh), and only
//!   then deletes, with `ALTER TABLE … DELETE` (the parts are rewritten without the rows, so
//!   the bodies are gone from disk, not only hidden). An insert already under way with an
//!   older list can still land after the delete, so the purge checks again and deletes what
//!   it finds, up to [`MAX_ROUNDS`] times.
//!
//! ClickHouse's hourly rollup is fed on insert, which a delete does not reverse. Its sums
//! (requests, errors, tokens, cost, unpriced, estimated, cache hits, latency sum, TTFT count)
//! are corrected exactly by a row holding their change, as `tally reprice` does, with a
//! deduplication token made of the deleted rows, so a purge retried after dying between the
//! correction and the delete corrects once. What a rollup row cannot give back: the distinct
//! users state (an erased user still counts in `uniq` for those hours), the latency and TTFT
//! quantile states and digests (they keep the erased requests' timings, which carry no
//! identity), and the hours' first and last times.

use std::path::Path;
use std::time::{Duration, Instant};

use uuid::Uuid;

use crate::record::Record;
use crate::spool::{Spool, SpoolError};

/// How often the ClickHouse writer rereads `purges`.
pub const ERASURES_REFRESH: Duration = Duration::from_secs(1);

/// The SQLite trigger that refuses purged records, created by the first purge (a store that
/// never had one does not pay its ~2 µs per insert). The property check walks the property
/// purges first (CROSS JOIN keeps that order), so a record's properties are parsed only when
/// there are some.
const ERASED_TRIGGER: &str = "
CREATE TRIGGER IF NOT EXISTS requests_erased BEFORE INSERT ON requests
WHEN EXISTS (SELECT 1 FROM purges WHERE kind = 'user' AND value = NEW.user_id AND NEW.ts < at_ms)
  OR EXISTS (SELECT 1 FROM purges WHERE kind = 'session' AND value = NEW.session_id AND NEW.ts < at_ms)
  OR EXISTS (SELECT 1 FROM purges AS p CROSS JOIN json_each(NEW.properties) AS j
             WHERE p.kind = 'property' AND NEW.ts < p.at_ms AND j.key = p.prop AND j.value = p.value)
BEGIN
    SELECT RAISE(IGNORE);
END;";

/// Rows a SQLite purge deletes per statement.
const CHUNK: usize = 5_000;

/// How many times a ClickHouse purge looks for rows that landed after its delete.
pub const MAX_ROUNDS: usize = 3;

/// What to erase.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Scope {
    /// Every record with this `user_id`.
    User(String),
    /// Every record with this `session_id`.
    Session(String),
    /// Every record whose property `.0` is `.1`.
    Property(String, String),
}

impl Scope {
    /// `user`, `session` or `property`, as `purges.kind` stores it.
    pub fn kind(&self) -> &'static str {
        match self {
            Scope::User(_) => "user",
            Scope::Session(_) => "session",
            Scope::Property(..) => "property",
        }
    }

    /// The property's name (empty for the other kinds) and the value, as `purges` stores them.
    fn columns(&self) -> (&str, &str) {
        match self {
            Scope::User(v) | Scope::Session(v) => ("", v),
            Scope::Property(k, v) => (k, v),
        }
    }

    /// Reads a `purges` row back.
    fn from_columns(kind: &str, prop: &str, value: String) -> Option<Scope> {
        match kind {
            "user" => Some(Scope::User(value)),
            "session" => Some(Scope::Session(value)),
            "property" => Some(Scope::Property(prop.to_owned(), value)),
            _ => None,
        }
    }

    /// Whether `record` is in the scope.
    pub fn matches(&self, record: &Record) -> bool {
        match self {
            Scope::User(v) => record.user_id.as_deref() == Some(v),
            Scope::Session(v) => record.session_id.as_deref() == Some(v),
            Scope::Property(k, v) => record.properties.get(k) == Some(v),
        }
    }
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Scope::User(v) => write!(f, "user {v:?}"),
            Scope::Session(v) => write!(f, "session {v:?}"),
            Scope::Property(k, v) => write!(f, "property {k}={v:?}"),
        }
    }
}

/// One purge as `purges` holds it: the scope and when it ran.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Erasure {
    /// What was erased.
    pub scope: Scope,
    /// When (Unix ms): records that started before are erased, later ones kept.
    pub at_ms: i64,
}

impl Erasure {
    /// Whether the store must refuse `record`.
    pub fn erases(&self, record: &Record) -> bool {
        record.ts < self.at_ms && self.scope.matches(record)
    }
}

/// What a purge did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    /// The purge's id in `purges`.
    pub purge_id: Uuid,
    /// Rows deleted from the store.
    pub records: u64,
    /// Records removed from the spool.
    pub spooled: u64,
    /// Whether the spool could be scrubbed: not while a running Tally holds it (its writer
    /// then drops the purged records when it replays them).
    pub spool_scrubbed: bool,
}

/// A purge failed. What it did before the failure stays done, and its row in `purges` keeps
/// refusing the scope's records; running it again completes it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PurgeError {
    /// SQLite said no.
    #[error(transparent)]
    Sqlite(#[from] crate::sqlite::SqliteError),
    /// ClickHouse said no.
    #[error(transparent)]
    ClickHouse(#[from] crate::clickhouse::ClickHouseError),
    /// The spool could not be scrubbed.
    #[error(transparent)]
    Spool(#[from] SpoolError),
    /// Something this version cannot do.
    #[error("{0}")]
    Unsupported(String),
    /// Rows kept landing after the delete.
    #[error("{0}")]
    Incomplete(String),
}

impl From<rusqlite::Error> for PurgeError {
    fn from(e: rusqlite::Error) -> Self {
        PurgeError::Sqlite(crate::sqlite::SqliteError::from(e))
    }
}

impl From<clickhouse::error::Error> for PurgeError {
    fn from(e: clickhouse::error::Error) -> Self {
        PurgeError::ClickHouse(e.into())
    }
}

/// Removes the erased records from the spool at `dir`, if no running Tally holds it. `None`
/// when one does.
fn scrub_spool(dir: &Path, max_bytes: u64, erasure: &Erasure) -> Result<Option<u64>, PurgeError> {
    // No spool yet: nothing to scrub, and a purge should not create one.
    if !dir.exists() {
        return Ok(Some(0));
    }
    match Spool::open(dir, max_bytes) {
        Ok(mut spool) => Ok(Some(spool.erase(|r| erasure.erases(r))?)),
        Err(SpoolError::Locked(_)) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Purges `scope` from the SQLite store at `path` and from the spool at `spool` (directory and
/// limit).
pub fn sqlite(path: &Path, scope: &Scope, spool: (&Path, u64)) -> Result<Outcome, PurgeError> {
    use rusqlite::params;
    let mut conn = crate::sqlite::open_rw(path)?;
    crate::sqlite::migrate(&mut conn)?;
    let erasure = Erasure {
        scope: scope.clone(),
        at_ms: crate::now_ms(),
    };
    let purge_id = Uuid::now_v7();
    let (prop, value) = scope.columns();
    let where_ = match scope {
        Scope::User(_) => "user_id = ?2",
        Scope::Session(_) => "session_id = ?2",
        Scope::Property(..) => {
            "EXISTS (SELECT 1 FROM json_each(requests.properties) WHERE key = ?3 AND value = ?2)"
        }
    };
    // The trigger and the row first, on their own: from their commit on, the store refuses
    // the scope's older records, so the deletes after it can go in chunks (a running Tally's
    // writer gets the lock between them, and re-prepares its insert for the new schema)
    // without any record slipping in behind them.
    let tx = conn.transaction()?;
    tx.execute_batch(ERASED_TRIGGER)?;
    tx.execute(
        "INSERT INTO purges (purge_id, at_ms, kind, prop, value) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![
            purge_id.to_string(),
            erasure.at_ms,
            scope.kind(),
            (!prop.is_empty()).then_some(prop),
            value
        ],
    )?;
    tx.commit()?;
    let delete = format!(
        "DELETE FROM requests WHERE rowid IN
           (SELECT rowid FROM requests WHERE ts < ?1 AND {where_} LIMIT {CHUNK})"
    );
    let mut records = 0;
    loop {
        let n = match scope {
            Scope::Property(..) => conn.execute(&delete, params![erasure.at_ms, value, prop])?,
            _ => conn.execute(&delete, params![erasure.at_ms, value])?,
        };
        records += n as u64;
        if n < CHUNK {
            break;
        }
    }
    let spooled = scrub_spool(spool.0, spool.1, &erasure)?;
    conn.execute(
        "UPDATE purges SET records = ?2, spooled = ?3 WHERE purge_id = ?1",
        params![
            purge_id.to_string(),
            records as i64,
            spooled.unwrap_or(0) as i64
        ],
    )?;
    Ok(Outcome {
        purge_id,
        records,
        spooled: spooled.unwrap_or(0),
        spool_scrubbed: spooled.is_some(),
    })
}

/// The purges a ClickHouse writer leaves out of its batches, reread at most once a
/// [`ERASURES_REFRESH`].
#[derive(Debug, Default)]
pub struct Erasures {
    list: Vec<Erasure>,
    read_at: Option<Instant>,
}

#[derive(Debug, serde::Deserialize, clickhouse::Row)]
struct ErasureRow {
    at: i64,
    kind: String,
    prop: String,
    value: String,
}

impl Erasures {
    /// Whether the list is due to be read again.
    pub fn stale(&self) -> bool {
        self.read_at.is_none_or(|t| t.elapsed() >= ERASURES_REFRESH)
    }

    /// Reads the list from `purges`.
    pub async fn refresh(
        &mut self,
        client: &clickhouse::Client,
    ) -> Result<(), clickhouse::error::Error> {
        let rows: Vec<ErasureRow> = client
            .query(
                "SELECT DISTINCT toUnixTimestamp64Milli(at) AS at, toString(kind) AS kind, prop, value
                 FROM purges",
            )
            .fetch_all()
            .await?;
        self.list = rows
            .into_iter()
            .filter_map(|r| {
                Some(Erasure {
                    scope: Scope::from_columns(&r.kind, &r.prop, r.value)?,
                    at_ms: r.at,
                })
            })
            .collect();
        self.read_at = Some(Instant::now());
        Ok(())
    }

    /// Whether any purge erases `record`.
    pub fn erases(&self, record: &Record) -> bool {
        self.list.iter().any(|e| e.erases(record))
    }

    /// Whether there are purges at all (the common case is none, and costs nothing).
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }
}

#[derive(Debug, serde::Serialize, clickhouse::Row)]
struct PurgeRow {
    #[serde(with = "clickhouse::serde::uuid")]
    purge_id: Uuid,
    at: i64,
    kind: String,
    prop: String,
    value: String,
    records: u64,
    spooled: u64,
}

/// The rollup's sums over the rows about to be deleted, per (hour, provider, model). Named
/// apart from the columns they sum, which an alias of the same name would shadow.
#[derive(Debug, serde::Deserialize, clickhouse::Row)]
struct Sums {
    d_hour: u32,
    d_provider: String,
    d_model: String,
    d_requests: u64,
    d_errors: u64,
    d_prompt: u64,
    d_completion: u64,
    d_cache_read: u64,
    d_cost: f64,
    d_unpriced: u64,
    d_estimated: u64,
    d_cache_hits: u64,
    d_latency: u64,
    d_ttft_count: u64,
}

/// A correction of the hourly rollup: each sum's change, modulo 2^64 for the counts (the
/// columns are `sum` of UInt64, which wraps, so adding 2^64 − n takes n away).
#[derive(Debug, serde::Serialize, clickhouse::Row)]
struct Correction {
    hour: u32,
    provider: String,
    model: String,
    requests: u64,
    errors: u64,
    prompt_tokens: u64,
    completion_tokens: u64,
    cache_read_tokens: u64,
    cost_usd: f64,
    unpriced: u64,
    estimated: u64,
    cache_hits: u64,
    latency_ms_sum: u64,
    ttft_count: u64,
    /// Neutral for `min` and `max` (their defaults are the hour's bounds).
    first_ms: i64,
    last_ms: i64,
    last_end_ms: i64,
}

/// The condition on `requests` for `scope` before `at` (Unix ms), with `?` placeholders bound
/// by [`bind_scope`].
fn scope_sql(scope: &Scope) -> &'static str {
    match scope {
        Scope::User(_) => "ts < fromUnixTimestamp64Milli(toInt64(?), 'UTC') AND user_id = ?",
        Scope::Session(_) => "ts < fromUnixTimestamp64Milli(toInt64(?), 'UTC') AND session_id = ?",
        Scope::Property(..) => {
            "ts < fromUnixTimestamp64Milli(toInt64(?), 'UTC') AND mapContains(properties, ?) \
             AND properties[?] = ?"
        }
    }
}

fn bind_scope(q: clickhouse::query::Query, scope: &Scope, at_ms: i64) -> clickhouse::query::Query {
    let q = q.bind(at_ms);
    match scope {
        Scope::User(v) | Scope::Session(v) => q.bind(v),
        Scope::Property(k, v) => q.bind(k).bind(k).bind(v),
    }
}

/// Purges `scope` from ClickHouse and from the spool at `spool` (directory and limit). A single
/// server only, like `tally reprice`.
pub async fn clickhouse(
    settings: &crate::clickhouse::ClickHouseSettings,
    scope: &Scope,
    spool: (&Path, u64),
) -> Result<Outcome, PurgeError> {
    if settings.cluster.is_some() {
        return Err(PurgeError::Unsupported(
            "tally purge does not run on a ClickHouse cluster yet (store.cluster is set): the \
             delete and the rollup corrections would have to run on every shard"
                .into(),
        ));
    }
    crate::clickhouse::migrate(settings).await?;
    let client = settings.client();
    let erasure = Erasure {
        scope: scope.clone(),
        at_ms: crate::now_ms(),
    };
    let purge_id = Uuid::now_v7();
    let (prop, value) = scope.columns();
    let row = |records, spooled| PurgeRow {
        purge_id,
        at: erasure.at_ms,
        kind: scope.kind().to_owned(),
        prop: prop.to_owned(),
        value: value.to_owned(),
        records,
        spooled,
    };
    let mut insert = client.insert::<PurgeRow>("purges").await?;
    insert.write(&row(0, 0)).await?;
    insert.end().await?;
    // Every running writer rereads `purges` before its next batch once its list is older than
    // the refresh: after two, none inserts this scope's old records any more.
    tokio::time::sleep(2 * ERASURES_REFRESH).await;
    let spooled = scrub_spool(spool.0, spool.1, &erasure)?;

    let mut records = 0;
    for _ in 0..MAX_ROUNDS {
        let deleted = delete_round(&client, &erasure).await?;
        if deleted == 0 {
            break;
        }
        records += deleted;
    }
    let left: u64 = bind_scope(
        client.query(&format!(
            "SELECT count() FROM requests WHERE {}",
            scope_sql(scope)
        )),
        scope,
        erasure.at_ms,
    )
    .fetch_one()
    .await?;
    if left > 0 {
        return Err(PurgeError::Incomplete(format!(
            "{left} records of {scope} were still arriving after {MAX_ROUNDS} deletes; run the purge again"
        )));
    }
    client
        .query(
            "ALTER TABLE purges UPDATE records = ?, spooled = ? WHERE purge_id = toUUID(?)
             SETTINGS mutations_sync = 2",
        )
        .bind(records)
        .bind(spooled.unwrap_or(0))
        .bind(purge_id.to_string())
        .execute()
        .await?;
    Ok(Outcome {
        purge_id,
        records,
        spooled: spooled.unwrap_or(0),
        spool_scrubbed: spooled.is_some(),
    })
}

/// Corrects the rollup for the rows of the scope in the table now, then deletes them.
/// Returns how many there were.
async fn delete_round(client: &clickhouse::Client, erasure: &Erasure) -> Result<u64, PurgeError> {
    let scope = &erasure.scope;
    let cond = scope_sql(scope);
    // The set of rows, as a token: the same rows give the same token, so a purge that died
    // after correcting and before deleting corrects nothing twice when it is run again.
    let (n, fingerprint): (u64, u64) = bind_scope(
        client.query(&format!(
            "SELECT count(), groupBitXor(cityHash64(request_id)) FROM requests WHERE {cond}"
        )),
        scope,
        erasure.at_ms,
    )
    .fetch_one()
    .await?;
    if n == 0 {
        return Ok(0);
    }
    let sums: Vec<Sums> = bind_scope(
        client.query(&format!(
            "SELECT toUInt32(toStartOfHour(ts)) AS d_hour, provider AS d_provider,
                    ifNull(model, '') AS d_model, count() AS d_requests,
                    countIf({err}) AS d_errors, sum(ifNull(prompt_tokens, 0)) AS d_prompt,
                    sum(ifNull(completion_tokens, 0)) AS d_completion,
                    sum(ifNull(cache_read_tokens, 0)) AS d_cache_read,
                    sum(ifNull(cost_usd, 0)) AS d_cost,
                    countIf(cost_usd IS NULL AND prompt_tokens IS NOT NULL) AS d_unpriced,
                    countIf(tokens_estimated) AS d_estimated,
                    countIf(cache_status = 'hit') AS d_cache_hits,
                    sum(latency_ms) AS d_latency, countIf(ttft_ms IS NOT NULL) AS d_ttft_count
             FROM requests WHERE {cond}
             GROUP BY d_hour, d_provider, d_model",
            err = crate::IS_ERROR_SQL
        )),
        scope,
        erasure.at_ms,
    )
    .fetch_all()
    .await?;
    let mut insert = client
        .clone()
        .with_validation(false)
        .with_setting(
            "insert_deduplication_token",
            format!("purge-{fingerprint:016x}-{n}"),
        )
        .insert::<Correction>("requests_hourly")
        .await?;
    for s in sums {
        insert
            .write(&Correction {
                hour: s.d_hour,
                provider: s.d_provider,
                model: s.d_model,
                requests: s.d_requests.wrapping_neg(),
                errors: s.d_errors.wrapping_neg(),
                prompt_tokens: s.d_prompt.wrapping_neg(),
                completion_tokens: s.d_completion.wrapping_neg(),
                cache_read_tokens: s.d_cache_read.wrapping_neg(),
                cost_usd: -s.d_cost,
                unpriced: s.d_unpriced.wrapping_neg(),
                estimated: s.d_estimated.wrapping_neg(),
                cache_hits: s.d_cache_hits.wrapping_neg(),
                latency_ms_sum: s.d_latency.wrapping_neg(),
                ttft_count: s.d_ttft_count.wrapping_neg(),
                first_ms: i64::MAX,
                last_ms: i64::MIN,
                last_end_ms: i64::MIN,
            })
            .await?;
    }
    insert.end().await?;
    bind_scope(
        client.query(&format!(
            "ALTER TABLE requests DELETE WHERE {cond} SETTINGS mutations_sync = 2"
        )),
        scope,
        erasure.at_ms,
    )
    .execute()
    .await?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::BatchWriter;
    use crate::sqlite::{open_rw, SqliteWriter};
    use crate::tests::record;

    fn tagged(n: i64, user: &str, session: &str, tenant: &str) -> Record {
        let mut r = record(n);
        r.user_id = Some(user.into());
        r.session_id = Some(session.into());
        r.properties.insert("tenant".into(), tenant.into());
        r
    }

    fn count(path: &Path, sql: &str) -> i64 {
        open_rw(path)
            .expect("open")
            .query_row(sql, [], |r| r.get(0))
            .expect(sql)
    }

    /// Each kind of purge deletes its records and nothing else, scrubs the spool, is kept in
    /// `purges` with its counts, and from then on the store refuses that scope's older
    /// records whichever path they take (here the writer, as a replay would), while newer
    /// ones are kept.
    #[test]
    fn sqlite_purges_delete_scrub_and_keep_refusing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = dir.path().join("t.db");
        let spool_dir = dir.path().join("spool");
        let mut conn = open_rw(&db).expect("open");
        crate::sqlite::migrate(&mut conn).expect("migrate");
        let mut w = SqliteWriter::new(conn);
        let rows = vec![
            tagged(1, "ann", "s1", "acme"),
            tagged(2, "ann", "s2", "globex"),
            tagged(3, "bob", "s3", "acme"),
            tagged(4, "bob", "s4", "initech"),
            tagged(5, "cy", "s5", "initech"),
        ];
        w.write_batch(&rows).expect("write");
        {
            let mut spool = Spool::open(&spool_dir, u64::MAX).expect("spool");
            spool
                .append(&[tagged(6, "ann", "s6", "x"), tagged(7, "cy", "s7", "x")])
                .expect("append");
        }
        let spool = (spool_dir.as_path(), u64::MAX);

        let out = sqlite(&db, &Scope::User("ann".into()), spool).expect("purge ann");
        assert_eq!((out.records, out.spooled, out.spool_scrubbed), (2, 1, true));
        let out = sqlite(&db, &Scope::Property("tenant".into(), "acme".into()), spool)
            .expect("purge acme");
        assert_eq!(out.records, 1, "bob's acme request; ann's went already");
        let out = sqlite(&db, &Scope::Session("s4".into()), spool).expect("purge s4");
        assert_eq!(out.records, 1);
        assert_eq!(
            count(&db, "SELECT count(*) FROM requests WHERE user_id = 'cy'"),
            1
        );
        assert_eq!(count(&db, "SELECT count(*) FROM requests"), 1);
        let audit: Vec<(String, Option<String>, String, i64, i64)> = open_rw(&db)
            .expect("open")
            .prepare("SELECT kind, prop, value, records, spooled FROM purges ORDER BY rowid")
            .expect("prepare")
            .query_map([], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })
            .expect("query")
            .collect::<Result<_, _>>()
            .expect("rows");
        assert_eq!(
            audit,
            vec![
                ("user".into(), None, "ann".into(), 2, 1),
                (
                    "property".into(),
                    Some("tenant".into()),
                    "acme".into(),
                    1,
                    0
                ),
                ("session".into(), None, "s4".into(), 1, 0),
            ]
        );

        // Late arrivals from before the purges, through the writer that was open before the
        // first purge created the trigger (a running Tally's): each refused by the store.
        let late = vec![
            tagged(8, "ann", "s8", "x"),
            tagged(9, "dee", "s9", "acme"),
            tagged(10, "dee", "s4", "x"),
            tagged(11, "dee", "s11", "x"),
        ];
        w.write_batch(&late).expect("write late");
        assert_eq!(
            count(&db, "SELECT count(*) FROM requests WHERE user_id = 'dee'"),
            1,
            "only the request outside every purged scope"
        );
        // Ann's traffic after the purge is new, and kept.
        let mut fresh = tagged(12, "ann", "s12", "acme");
        fresh.ts = crate::now_ms() + 1_000;
        w.write_batch(&[fresh]).expect("write fresh");
        assert_eq!(
            count(&db, "SELECT count(*) FROM requests WHERE user_id = 'ann'"),
            1
        );
    }

    #[test]
    fn a_running_tallys_spool_is_left_to_its_replay() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = dir.path().join("t.db");
        let spool_dir = dir.path().join("spool");
        let held = Spool::open(&spool_dir, u64::MAX).expect("held, as a running Tally does");
        let out = sqlite(
            &db,
            &Scope::User("ann".into()),
            (spool_dir.as_path(), u64::MAX),
        )
        .expect("purge");
        assert!(!out.spool_scrubbed);
        drop(held);
    }
}
