//! Retention on SQLite, which has no TTL: a sweep on its own thread and connection deletes
//! the records past their part's days and clears the bodies past theirs.
//!
//! SQLite has one writer at a time, and the ingest writer must not wait behind a sweep that
//! deletes a month at once: each statement takes at most [`CHUNK`] rows, in its own
//! transaction, so the ingest writer gets the lock between chunks (its busy timeout covers
//! the wait). Cleared bodies are not looked at again: each part remembers up to where its
//! bodies are cleared, so a sweep reads only the rows that aged since the last one. A record
//! that reaches the store later than that with an older time (a spool replay after a long
//! outage) has its bodies cleared at the next start, when the marks begin again.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use rusqlite::types::Value;
use rusqlite::Connection;

use super::SqliteError;
use crate::retention::{Part, Policy, DAY_MS};

/// Rows per statement.
pub const CHUNK: usize = 2_000;

/// Time between sweeps.
pub const INTERVAL: Duration = Duration::from_secs(600);

/// What one sweep did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Swept {
    /// Records deleted.
    pub records: u64,
    /// Records whose bodies were cleared.
    pub bodies: u64,
}

/// Counters an operator watches: `tally_retention_records_deleted_total` and
/// `tally_retention_bodies_cleared_total`.
#[derive(Debug, Clone, Default)]
pub struct RetentionMetrics {
    /// Records deleted.
    pub records: Counter,
    /// Records whose bodies were cleared.
    pub bodies: Counter,
}

/// The sweep over one store.
pub struct Sweeper {
    conn: Connection,
    policy: Policy,
    /// Per part, the time before which its bodies are cleared already.
    cleared_to: Vec<i64>,
}

impl Sweeper {
    /// A sweeper on `conn` (a migrated store).
    pub fn new(conn: Connection, policy: Policy) -> Self {
        let cleared_to = vec![i64::MIN; policy.parts().len()];
        Self {
            conn,
            policy,
            cleared_to,
        }
    }

    /// Applies the policy as of `now_ms`.
    pub fn sweep(&mut self, now_ms: i64) -> Result<Swept, SqliteError> {
        let mut out = Swept::default();
        for (i, (part, records_days, bodies_days)) in self.policy.parts().into_iter().enumerate() {
            let (cond, mut params) = condition(&self.policy, part);
            if records_days > 0 {
                let cut = now_ms - i64::from(records_days) * DAY_MS;
                let sql = format!(
                    "DELETE FROM requests WHERE rowid IN
                       (SELECT rowid FROM requests WHERE ts < ? AND {cond} LIMIT {CHUNK})"
                );
                let mut all = vec![Value::Integer(cut)];
                all.append(&mut params.clone());
                out.records += self.chunks(&sql, &all)?;
            }
            if bodies_days > 0 && (records_days == 0 || bodies_days < records_days) {
                let cut = now_ms - i64::from(bodies_days) * DAY_MS;
                let sql = format!(
                    "UPDATE requests SET request_body = NULL, response_body = NULL,
                            upstream_request_body = NULL, upstream_response_body = NULL
                     WHERE rowid IN (SELECT rowid FROM requests
                       WHERE ts >= ? AND ts < ?
                         AND (request_body IS NOT NULL OR response_body IS NOT NULL
                              OR upstream_request_body IS NOT NULL
                              OR upstream_response_body IS NOT NULL)
                         AND {cond} LIMIT {CHUNK})"
                );
                let mut all = vec![Value::Integer(self.cleared_to[i]), Value::Integer(cut)];
                all.append(&mut params);
                out.bodies += self.chunks(&sql, &all)?;
                self.cleared_to[i] = cut;
            }
        }
        Ok(out)
    }

    /// Runs `sql` until it changes fewer than a chunk of rows; the total changed.
    fn chunks(&mut self, sql: &str, params: &[Value]) -> Result<u64, SqliteError> {
        let mut total = 0;
        loop {
            let n = self
                .conn
                .prepare_cached(sql)?
                .execute(rusqlite::params_from_iter(params))?;
            total += n as u64;
            if n < CHUNK {
                return Ok(total);
            }
        }
    }
}

/// The SQL condition on a `requests` row for `part`, and its parameters (the property names
/// and values are bound, never spliced).
fn condition(policy: &Policy, part: Part) -> (String, Vec<Value>) {
    let matches =
        "EXISTS (SELECT 1 FROM json_each(requests.properties) WHERE key = ? AND value = ?)";
    let mut params = Vec::new();
    let push = |i: usize, params: &mut Vec<Value>| {
        let (k, v) = &policy.rules[i].property;
        params.push(Value::Text(k.clone()));
        params.push(Value::Text(v.clone()));
    };
    let earlier = match part {
        Part::Rule(i) => i,
        Part::Rest => policy.rules.len(),
    };
    let mut sql = String::from("1");
    if let Part::Rule(i) = part {
        sql = matches.to_owned();
        push(i, &mut params);
    }
    if earlier > 0 {
        let any: Vec<&str> = (0..earlier).map(|_| matches).collect();
        sql = format!("{sql} AND NOT ({})", any.join(" OR "));
        for j in 0..earlier {
            push(j, &mut params);
        }
    }
    (sql, params)
}

/// A sweeper running on its own thread; dropping or [`RetentionTask::stop`] ends it.
pub struct RetentionTask {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RetentionTask {
    /// Starts sweeping the store at `path` now and every `interval`, on its own connection.
    pub fn spawn(
        path: &Path,
        policy: Policy,
        interval: Duration,
        metrics: RetentionMetrics,
    ) -> Result<Self, SqliteError> {
        let conn = super::open_rw(path)?;
        let path: PathBuf = path.to_owned();
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("tally-retention".into())
            .spawn(move || {
                let mut sweeper = Sweeper::new(conn, policy);
                loop {
                    match sweeper.sweep(crate::now_ms()) {
                        Ok(s) => {
                            metrics.records.inc_by(s.records);
                            metrics.bodies.inc_by(s.bodies);
                            if s.records > 0 || s.bodies > 0 {
                                tracing::info!(
                                    records = s.records,
                                    bodies = s.bodies,
                                    "retention: deleted records and cleared bodies past their days"
                                );
                            }
                        }
                        // Retried at the next sweep; what was done stays done.
                        Err(e) => tracing::warn!(path = %path.display(), error = %e, "retention sweep failed"),
                    }
                    if !matches!(
                        stopped.recv_timeout(interval),
                        Err(mpsc::RecvTimeoutError::Timeout)
                    ) {
                        return;
                    }
                }
            })
            .map_err(|e| SqliteError::Open {
                path: PathBuf::from("tally-retention thread"),
                source: rusqlite::Error::ToSqlConversionFailure(Box::new(e)),
            })?;
        Ok(Self {
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Ends the sweeps, waiting for the chunk under way.
    pub fn stop(mut self) {
        self.end();
    }

    fn end(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for RetentionTask {
    fn drop(&mut self) {
        self.end();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::BatchWriter;
    use crate::retention::Rule;
    use crate::sqlite::{migrate, open_rw, SqliteWriter};
    use crate::tests::record;

    const NOW: i64 = 1_800_000_000_000;

    fn aged(n: i64, days: i64, tenant: Option<&str>) -> crate::Record {
        let mut r = record(n);
        r.ts = NOW - days * DAY_MS - n;
        r.properties.clear();
        if let Some(t) = tenant {
            r.properties.insert("tenant".into(), t.into());
        }
        r
    }

    /// `tenant=acme` keeps bodies 7 days and records 90; everything else keeps bodies 30 days
    /// and records 365. Each record ends as its own part says, a second sweep changes nothing,
    /// and a record the rule's property names with another value is not the rule's.
    #[test]
    fn each_part_keeps_its_own_days_and_a_second_sweep_changes_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = dir.path().join("t.db");
        let mut conn = open_rw(&db).expect("open");
        migrate(&mut conn).expect("migrate");
        let rows = vec![
            aged(1, 3, Some("acme")),    // kept whole
            aged(2, 10, Some("acme")),   // bodies cleared
            aged(3, 100, Some("acme")),  // deleted
            aged(4, 10, Some("globex")), // kept whole (rest: 30 days of bodies)
            aged(5, 40, None),           // bodies cleared
            aged(6, 400, None),          // deleted
        ];
        SqliteWriter::new(conn).write_batch(&rows).expect("write");
        let policy = Policy {
            records_days: 365,
            bodies_days: 30,
            rules: vec![Rule {
                property: ("tenant".into(), "acme".into()),
                records_days: 90,
                bodies_days: 7,
            }],
        };
        let mut sweeper = Sweeper::new(open_rw(&db).expect("open"), policy);
        assert_eq!(
            sweeper.sweep(NOW).expect("sweep"),
            Swept {
                records: 2,
                bodies: 2
            }
        );
        assert_eq!(sweeper.sweep(NOW).expect("again"), Swept::default());
        let conn = open_rw(&db).expect("open");
        let left: Vec<(String, bool)> = conn
            .prepare(
                "SELECT user_id, request_body IS NOT NULL AND response_body IS NOT NULL
                   AND upstream_request_body IS NOT NULL FROM requests ORDER BY ts DESC",
            )
            .expect("prepare")
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .expect("query")
            .collect::<Result<_, _>>()
            .expect("rows");
        assert_eq!(
            left,
            [
                ("user-1".to_owned(), true),
                ("user-2".to_owned(), false),
                ("user-4".to_owned(), true),
                ("user-5".to_owned(), false),
            ]
        );
        // A day later the marks carry on from where they were: only what aged since.
        let later = vec![aged(7, 6, Some("acme"))];
        let mut conn = open_rw(&db).expect("open");
        migrate(&mut conn).expect("migrate");
        SqliteWriter::new(conn).write_batch(&later).expect("write");
        assert_eq!(
            sweeper.sweep(NOW + DAY_MS + 1).expect("a day later"),
            Swept {
                records: 0,
                bodies: 1
            },
            "user-7 turned 7 days old; user-1 is 4 days old"
        );
    }

    #[test]
    fn the_task_sweeps_at_start_and_stops() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = dir.path().join("t.db");
        let mut conn = open_rw(&db).expect("open");
        migrate(&mut conn).expect("migrate");
        let mut old = record(1);
        old.ts = crate::now_ms() - 3 * DAY_MS;
        SqliteWriter::new(conn).write_batch(&[old]).expect("write");
        let metrics = RetentionMetrics::default();
        let task = RetentionTask::spawn(
            &db,
            Policy {
                records_days: 2,
                ..Policy::default()
            },
            Duration::from_secs(3600),
            metrics.clone(),
        )
        .expect("spawn");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while metrics.records.get() == 0 {
            assert!(std::time::Instant::now() < deadline, "no sweep at start");
            std::thread::sleep(Duration::from_millis(10));
        }
        task.stop();
        let n: i64 = open_rw(&db)
            .expect("open")
            .query_row("SELECT count(*) FROM requests", [], |r| r.get(0))
            .expect("count");
        assert_eq!(n, 0);
    }
}
