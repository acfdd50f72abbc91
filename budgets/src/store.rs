//! What the engine reads from and writes to the store: the spend of current windows (to
//! rebuild counters at startup and reconcile replicas), fired events (the "already fired"
//! state and the history page), and delivery outcomes.
//!
//! Every value reaches SQL as a bound parameter; the only text spliced into a query is a fixed
//! column expression chosen by the scope's variant.

use std::path::PathBuf;

use serde::Deserialize;
use tally_ingest::clickhouse::ClickHouseSettings;
use uuid::Uuid;

use crate::config::Budget;
use crate::engine::FiredRow;
use crate::event::Event;
use crate::scope::{Scope, SINGLE_KEY};
use crate::webhook::Outcome;
use crate::window::{Bounds, Window};

/// A store operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// SQLite said no.
    #[error("SQLite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The SQLite file could not be opened.
    #[error(transparent)]
    Open(#[from] tally_ingest::sqlite::SqliteError),
    /// ClickHouse said no.
    #[error("ClickHouse: {0}")]
    ClickHouse(#[from] clickhouse::error::Error),
    /// A blocking task died.
    #[error("store task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

/// One fired event with its deliveries, newest first on the budgets page.
#[derive(Debug, Clone, serde::Serialize)]
pub struct HistoryEntry {
    /// The event id.
    pub event_id: String,
    /// When it fired, ms.
    pub fired_at: i64,
    /// The event kind.
    pub event: String,
    /// Budget or rule name.
    pub source: String,
    /// Scope key.
    pub scope_key: String,
    /// The documented payload, as sent.
    pub payload: serde_json::Value,
    /// Delivery outcomes recorded so far.
    pub deliveries: Vec<DeliveryEntry>,
}

/// One recorded delivery.
#[derive(Debug, Clone, serde::Serialize, Deserialize, clickhouse::Row)]
pub struct DeliveryEntry {
    /// Scheme, host and port of the webhook.
    pub webhook: String,
    /// Whether a 2xx came back.
    pub delivered: bool,
    /// Attempts made.
    pub attempts: u32,
    /// Last HTTP status.
    pub status: Option<u16>,
    /// Last error.
    pub error: Option<String>,
}

/// The store the alerts live in: the same one records go to.
#[derive(Clone)]
pub enum AlertStore {
    /// The SQLite file.
    Sqlite(PathBuf),
    /// A ClickHouse database.
    ClickHouse(Box<clickhouse::Client>),
}

impl AlertStore {
    /// A ClickHouse alert store for validated settings.
    pub fn clickhouse(s: &ClickHouseSettings) -> Self {
        AlertStore::ClickHouse(Box::new(s.client()))
    }

    /// Spend of `budget` within `bounds` as `(scope key, bucket start ms, usd)`; calendar
    /// windows give one bucket (the window start) per key.
    pub async fn spend(
        &self,
        budget: &Budget,
        bounds: Bounds,
    ) -> Result<Vec<(String, i64, f64)>, StoreError> {
        let bucket_ms = match budget.window {
            Window::Rolling(_) => budget.window.bucket_ms(),
            Window::Calendar(..) => 0,
        };
        match self {
            AlertStore::Sqlite(path) => {
                let scope = budget.scope.clone();
                on_sqlite(path, Access::Read, move |conn| {
                    sqlite_spend(conn, &scope, bounds, bucket_ms)
                })
                .await
            }
            AlertStore::ClickHouse(client) => {
                clickhouse_spend(client, &budget.scope, bounds, bucket_ms).await
            }
        }
    }

    /// Fired events whose episode has not ended at `now`.
    pub async fn fired(&self, now: i64) -> Result<Vec<FiredRow>, StoreError> {
        match self {
            AlertStore::Sqlite(path) => {
                on_sqlite(path, Access::Read, move |conn| {
                    let mut stmt = conn.prepare(
                        "SELECT source, scope_key, event, level, until_ms FROM alert_events \
                         WHERE until_ms > ?1",
                    )?;
                    let rows = stmt
                        .query_map([now], |r| {
                            Ok(FiredRow {
                                source: r.get(0)?,
                                scope_key: r.get(1)?,
                                event: r.get(2)?,
                                level: r.get(3)?,
                                until: r.get(4)?,
                            })
                        })?
                        .collect::<Result<Vec<_>, _>>()?;
                    Ok(rows)
                })
                .await
            }
            AlertStore::ClickHouse(client) => {
                #[derive(Deserialize, clickhouse::Row)]
                struct Row {
                    source: String,
                    scope_key: String,
                    event: String,
                    level: f64,
                    until_ms: i64,
                }
                let rows = client
                    .query(
                        "SELECT source, scope_key, event, level, until_ms FROM alert_events \
                         WHERE until_ms > ?",
                    )
                    .bind(now)
                    .fetch_all::<Row>()
                    .await?;
                Ok(rows
                    .into_iter()
                    .map(|r| FiredRow {
                        source: r.source,
                        scope_key: r.scope_key,
                        event: r.event,
                        level: r.level,
                        until: r.until_ms,
                    })
                    .collect())
            }
        }
    }

    /// Whether another replica already recorded this event (same source, key and kind, at
    /// this level or higher, in an episode still running when this one fired).
    pub async fn fired_elsewhere(&self, e: &Event, level: f64) -> Result<bool, StoreError> {
        let sql = "SELECT count() FROM alert_events WHERE source = ? AND scope_key = ? \
                   AND event = ? AND level >= ? AND until_ms > ? AND event_id != ?";
        let (source, key, kind) = (e.source().to_owned(), e.scope_key.clone(), e.event.as_str());
        let (at, id) = (e.fired_at_ms, e.id.to_string());
        match self {
            AlertStore::Sqlite(path) => {
                on_sqlite(path, Access::Read, move |conn| {
                    let n: i64 = conn.query_row(
                        &sql.replace("count()", "count(*)"),
                        rusqlite::params![source, key, kind, level, at, id],
                        |r| r.get(0),
                    )?;
                    Ok(n > 0)
                })
                .await
            }
            AlertStore::ClickHouse(client) => {
                let n: u64 = client
                    .query(&sql.replace("event_id != ?", "event_id != toUUID(?)"))
                    .bind(source)
                    .bind(key)
                    .bind(kind)
                    .bind(level)
                    .bind(at)
                    .bind(id)
                    .fetch_one()
                    .await?;
                Ok(n > 0)
            }
        }
    }

    /// Records a fired event (before any delivery, so a restart does not fire it again).
    pub async fn insert_event(&self, e: &Event, level: f64) -> Result<(), StoreError> {
        let payload = e.to_json();
        match self {
            AlertStore::Sqlite(path) => {
                let e = e.clone();
                on_sqlite(path, Access::Write, move |conn| {
                    conn.execute(
                        "INSERT OR IGNORE INTO alert_events (event_id, fired_at, event, source, \
                         scope_key, level, window_start, window_end, until_ms, payload) \
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                        rusqlite::params![
                            e.id.to_string(),
                            e.fired_at_ms,
                            e.event.as_str(),
                            e.source(),
                            e.scope_key,
                            level,
                            e.window_ms.0,
                            e.window_ms.1,
                            e.until_ms,
                            payload
                        ],
                    )?;
                    Ok(())
                })
                .await
            }
            AlertStore::ClickHouse(client) => {
                client
                    .query(
                        "INSERT INTO alert_events (event_id, fired_at, event, source, scope_key, \
                         level, window_start, window_end, until_ms, payload) VALUES (toUUID(?), \
                         fromUnixTimestamp64Milli(?), ?, ?, ?, ?, fromUnixTimestamp64Milli(?), \
                         fromUnixTimestamp64Milli(?), ?, ?)",
                    )
                    .bind(e.id.to_string())
                    .bind(e.fired_at_ms)
                    .bind(e.event.as_str())
                    .bind(e.source())
                    .bind(&e.scope_key)
                    .bind(level)
                    .bind(e.window_ms.0)
                    .bind(e.window_ms.1)
                    .bind(e.until_ms)
                    .bind(payload)
                    .execute()
                    .await?;
                Ok(())
            }
        }
    }

    /// Records how a delivery ended.
    pub async fn insert_delivery(
        &self,
        event_id: Uuid,
        at: i64,
        o: &Outcome,
    ) -> Result<(), StoreError> {
        match self {
            AlertStore::Sqlite(path) => {
                let o = o.clone();
                on_sqlite(path, Access::Write, move |conn| {
                    conn.execute(
                        "INSERT INTO alert_deliveries (event_id, webhook, at, delivered, \
                         attempts, status, error) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                        rusqlite::params![
                            event_id.to_string(),
                            o.webhook,
                            at,
                            o.delivered,
                            o.attempts,
                            o.status,
                            o.error
                        ],
                    )?;
                    Ok(())
                })
                .await
            }
            AlertStore::ClickHouse(client) => {
                client
                    .query(
                        "INSERT INTO alert_deliveries (event_id, webhook, at, delivered, \
                         attempts, status, error) VALUES (toUUID(?), ?, \
                         fromUnixTimestamp64Milli(?), ?, ?, ?, ?)",
                    )
                    .bind(event_id.to_string())
                    .bind(&o.webhook)
                    .bind(at)
                    .bind(o.delivered)
                    .bind(o.attempts)
                    .bind(o.status)
                    .bind(o.error.as_deref())
                    .execute()
                    .await?;
                Ok(())
            }
        }
    }

    /// The newest `limit` events with their deliveries.
    pub async fn history(&self, limit: usize) -> Result<Vec<HistoryEntry>, StoreError> {
        let limit = limit as i64;
        match self {
            AlertStore::Sqlite(path) => {
                on_sqlite(path, Access::Read, move |conn| {
                    let mut stmt = conn.prepare(
                        "SELECT event_id, fired_at, event, source, scope_key, payload \
                         FROM alert_events ORDER BY fired_at DESC, event_id DESC LIMIT ?1",
                    )?;
                    let mut out = stmt
                        .query_map([limit], |r| {
                            let payload: String = r.get(5)?;
                            Ok(HistoryEntry {
                                event_id: r.get(0)?,
                                fired_at: r.get(1)?,
                                event: r.get(2)?,
                                source: r.get(3)?,
                                scope_key: r.get(4)?,
                                payload: serde_json::from_str(&payload)
                                    .unwrap_or(serde_json::Value::Null),
                                deliveries: Vec::new(),
                            })
                        })?
                        .collect::<Result<Vec<_>, _>>()?;
                    let mut d = conn.prepare(
                        "SELECT webhook, delivered, attempts, status, error \
                         FROM alert_deliveries WHERE event_id = ?1 ORDER BY at",
                    )?;
                    for e in &mut out {
                        e.deliveries = d
                            .query_map([&e.event_id], |r| {
                                Ok(DeliveryEntry {
                                    webhook: r.get(0)?,
                                    delivered: r.get(1)?,
                                    attempts: r.get(2)?,
                                    status: r.get(3)?,
                                    error: r.get(4)?,
                                })
                            })?
                            .collect::<Result<Vec<_>, _>>()?;
                    }
                    Ok(out)
                })
                .await
            }
            AlertStore::ClickHouse(client) => {
                #[derive(Deserialize, clickhouse::Row)]
                struct Row {
                    event_id: String,
                    fired_at: i64,
                    event: String,
                    source: String,
                    scope_key: String,
                    payload: String,
                }
                let rows = client
                    .query(
                        "SELECT toString(event_id) AS event_id, \
                         toUnixTimestamp64Milli(fired_at) AS fired_at, event, source, \
                         scope_key, payload FROM alert_events \
                         ORDER BY alert_events.fired_at DESC, alert_events.event_id DESC LIMIT ?",
                    )
                    .bind(limit)
                    .fetch_all::<Row>()
                    .await?;
                let mut out = Vec::with_capacity(rows.len());
                for r in rows {
                    let deliveries = client
                        .query(
                            "SELECT webhook, delivered, attempts, status, error \
                             FROM alert_deliveries WHERE event_id = toUUID(?) ORDER BY at",
                        )
                        .bind(&r.event_id)
                        .fetch_all::<DeliveryEntry>()
                        .await?;
                    out.push(HistoryEntry {
                        payload: serde_json::from_str(&r.payload)
                            .unwrap_or(serde_json::Value::Null),
                        event_id: r.event_id,
                        fired_at: r.fired_at,
                        event: r.event,
                        source: r.source,
                        scope_key: r.scope_key,
                        deliveries,
                    });
                }
                Ok(out)
            }
        }
    }
}

/// How a blocking SQLite operation opens the file.
#[derive(Clone, Copy)]
enum Access {
    Read,
    Write,
}

/// Runs `f` on a connection to the store file, on a blocking thread: alert operations are rare,
/// so each opens its own short-lived connection (WAL lets it run beside the ingest writer).
async fn on_sqlite<T: Send + 'static>(
    path: &std::path::Path,
    access: Access,
    f: impl FnOnce(&rusqlite::Connection) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || {
        let conn = match access {
            Access::Read => tally_ingest::sqlite::open_ro(&path)?,
            Access::Write => tally_ingest::sqlite::open_rw(&path)?,
        };
        f(&conn)
    })
    .await?
}

/// SQLite's column expression for a scope's key, and the filter it needs. Property keys are
/// restricted to `[a-z0-9._-]` by [`Scope::parse`] but still travel as bound JSON paths.
fn sqlite_spend(
    conn: &rusqlite::Connection,
    scope: &Scope,
    bounds: Bounds,
    bucket_ms: i64,
) -> Result<Vec<(String, i64, f64)>, StoreError> {
    let (key, filter, a, b): (&str, &str, Option<String>, Option<String>) = match scope {
        Scope::All => ("'*'", "", None, None),
        Scope::User(u) => ("'*'", "AND user_id = ?4", Some(u.clone()), None),
        Scope::Model(m) => ("'*'", "AND model = ?4", Some(m.clone()), None),
        Scope::Provider(p) => ("'*'", "AND provider = ?4", Some(p.clone()), None),
        Scope::Property(k, v) => (
            "'*'",
            "AND json_extract(properties, ?4) = ?5",
            Some(json_path(k)),
            Some(v.clone()),
        ),
        Scope::Key(k) => ("'*'", "AND key_name = ?4", Some(k.clone()), None),
        Scope::PerKey => ("key_name", "AND key_name IS NOT NULL", None, None),
        Scope::PerUser => ("user_id", "AND user_id IS NOT NULL", None, None),
        Scope::PerModel => ("model", "AND model IS NOT NULL", None, None),
        Scope::PerProvider => ("provider", "", None, None),
        Scope::PerProperty(k) => (
            "json_extract(properties, ?4)",
            "AND json_extract(properties, ?4) IS NOT NULL",
            Some(json_path(k)),
            None,
        ),
    };
    let bucket = if bucket_ms > 0 {
        "ts - (ts % ?3)"
    } else {
        "?1 + 0 * ?3"
    };
    let sql = format!(
        "SELECT {key} AS k, {bucket} AS b, SUM(cost_usd) FROM requests \
         WHERE ts >= ?1 AND ts < ?2 AND cost_usd > 0 {filter} GROUP BY k, b"
    );
    let mut stmt = conn.prepare(&sql)?;
    let mut params: Vec<Box<dyn rusqlite::ToSql>> = vec![
        Box::new(bounds.start),
        Box::new(bounds.end),
        Box::new(bucket_ms.max(1)),
    ];
    params.extend(a.map(|v| Box::new(v) as Box<dyn rusqlite::ToSql>));
    params.extend(b.map(|v| Box::new(v) as Box<dyn rusqlite::ToSql>));
    let rows = stmt
        .query_map(rusqlite::params_from_iter(params.iter()), |r| {
            Ok((r.get::<_, String>(0)?, r.get(1)?, r.get(2)?))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

fn json_path(key: &str) -> String {
    format!("$.\"{}\"", key.replace('"', ""))
}

async fn clickhouse_spend(
    client: &clickhouse::Client,
    scope: &Scope,
    bounds: Bounds,
    bucket_ms: i64,
) -> Result<Vec<(String, i64, f64)>, StoreError> {
    #[derive(Deserialize, clickhouse::Row)]
    struct Row {
        k: String,
        b: i64,
        usd: f64,
    }
    let (key, filter, a, b): (&str, &str, Option<&str>, Option<&str>) = match scope {
        Scope::All => ("'*'", "", None, None),
        Scope::User(u) => ("'*'", "AND user_id = ?", Some(u), None),
        Scope::Model(m) => ("'*'", "AND model = ?", Some(m), None),
        Scope::Provider(p) => ("'*'", "AND provider = ?", Some(p), None),
        Scope::Property(k, v) => ("'*'", "AND properties[?] = ?", Some(k), Some(v)),
        Scope::Key(k) => ("'*'", "AND key_name = ?", Some(k), None),
        Scope::PerKey => (
            "toString(assumeNotNull(key_name))",
            "AND key_name IS NOT NULL",
            None,
            None,
        ),
        Scope::PerUser => (
            "assumeNotNull(user_id)",
            "AND user_id IS NOT NULL",
            None,
            None,
        ),
        Scope::PerModel => ("assumeNotNull(model)", "AND model IS NOT NULL", None, None),
        Scope::PerProvider => ("toString(provider)", "", None, None),
        Scope::PerProperty(_) => (
            "properties[{key:String}]",
            "AND mapContains(properties, {key:String})",
            None,
            None,
        ),
    };
    let bucket = if bucket_ms > 0 {
        "intDiv(toUnixTimestamp64Milli(ts), ?) * ?"
    } else {
        "toInt64(?) * 0 + ?"
    };
    let sql = format!(
        "SELECT {key} AS k, toInt64({bucket}) AS b, sum(assumeNotNull(cost_usd)) AS usd \
         FROM requests WHERE ts >= fromUnixTimestamp64Milli(?) \
         AND ts < fromUnixTimestamp64Milli(?) AND cost_usd > 0 {filter} GROUP BY k, b"
    );
    let mut q = client.query(&sql);
    q = if bucket_ms > 0 {
        q.bind(bucket_ms).bind(bucket_ms)
    } else {
        q.bind(0_i64).bind(bounds.start)
    };
    q = q.bind(bounds.start).bind(bounds.end);
    if let Some(a) = a {
        q = q.bind(a);
    }
    if let Some(b) = b {
        q = q.bind(b);
    }
    if let Scope::PerProperty(k) = scope {
        q = q.param("key", k.as_str());
    }
    let rows = q.fetch_all::<Row>().await?;
    Ok(rows
        .into_iter()
        .map(|r| {
            let k = if r.k.is_empty() && !scope.is_keyed() {
                SINGLE_KEY.to_owned()
            } else {
                r.k
            };
            (k, r.b, r.usd)
        })
        .collect())
}
