//! The read side of the store. Every query the dashboard and the JSON API run lives in one
//! module per store (`sqlite.rs`, `clickhouse.rs`), so a reviewer can check them all in one
//! place; [`stats`] defines the numbers both must agree on.

pub mod clickhouse;
pub mod sqlite;
pub mod stats;

pub use stats::{AggregateSpec, Group, GroupBy, Measure, Order, Quantiles, Stats};

use tally_ingest::Record;

/// The read side of whichever store is configured. An enum, not a trait object: there are two
/// stores and every query exists for both.
#[derive(Clone)]
pub enum Reader {
    /// The embedded SQLite file.
    Sqlite(sqlite::SqliteReader),
    /// A ClickHouse server (boxed: its client is much larger than a path).
    ClickHouse(Box<clickhouse::ClickHouseReader>),
}

fn joined<T>(r: Result<Result<T, StoreError>, tokio::task::JoinError>) -> Result<T, StoreError> {
    r.map_err(|e| StoreError::Task(e.to_string()))?
}

/// One run of `tally reprice` whose range overlaps what a page shows.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Reprice {
    /// When it ran, ms.
    pub at_ms: i64,
    /// The range it repriced, ms.
    pub from_ms: i64,
    /// Its end, ms (exclusive).
    pub to_ms: i64,
    /// Its model filter, if any.
    pub model: Option<String>,
    /// Its provider filter, if any.
    pub provider: Option<String>,
    /// Records whose cost it changed.
    pub changed: u64,
    /// The total change, USD.
    pub delta_usd: f64,
}

/// The newest `tally reconcile` report of a provider, as stored (JSON).
#[derive(Debug, Clone, PartialEq)]
pub struct Reconciliation {
    /// When it ran, ms.
    pub at_ms: i64,
    /// `openai` or `anthropic`.
    pub provider: String,
    /// The report.
    pub report: String,
}

/// Reprices shown at most.
const REPRICES: usize = 5;

impl Reader {
    /// The newest reprice runs that changed costs between `from_ms` and `to_ms`.
    pub async fn reprices(&self, from_ms: i64, to_ms: i64) -> Result<Vec<Reprice>, StoreError> {
        match self {
            Reader::Sqlite(r) => {
                let r = r.clone();
                joined(
                    tokio::task::spawn_blocking(move || r.reprices(from_ms, to_ms, REPRICES)).await,
                )
            }
            Reader::ClickHouse(r) => r.reprices(from_ms, to_ms, REPRICES).await,
        }
    }

    /// The newest reconcile report of each provider.
    pub async fn reconciliations(&self) -> Result<Vec<Reconciliation>, StoreError> {
        match self {
            Reader::Sqlite(r) => {
                let r = r.clone();
                joined(tokio::task::spawn_blocking(move || r.reconciliations()).await)
            }
            Reader::ClickHouse(r) => r.reconciliations().await,
        }
    }

    /// Checks that the store can be read.
    pub async fn ping(&self) -> Result<(), StoreError> {
        match self {
            Reader::Sqlite(r) => {
                let r = r.clone();
                joined(tokio::task::spawn_blocking(move || r.ping()).await)
            }
            Reader::ClickHouse(r) => r.ping().await,
        }
    }

    /// A page of records, newest first, without bodies.
    pub async fn list(&self, filter: RequestFilter) -> Result<Page, StoreError> {
        match self {
            Reader::Sqlite(r) => {
                let r = r.clone();
                joined(tokio::task::spawn_blocking(move || r.list(&filter)).await)
            }
            Reader::ClickHouse(r) => r.list(&filter).await,
        }
    }

    /// Aggregates the records matching `filter` (cursor and limit ignored) by `group`: at
    /// most `limit` groups in `order`.
    pub async fn aggregate(
        &self,
        filter: RequestFilter,
        group: GroupBy,
        order: Order,
        limit: usize,
    ) -> Result<Vec<Group>, StoreError> {
        let mut all = self
            .aggregate_many(filter, vec![AggregateSpec::new(group, order, limit)])
            .await?;
        Ok(all.pop().unwrap_or_default())
    }

    /// Several aggregates of the same records, one per spec, in order. SQLite computes them
    /// in one scan; ClickHouse runs one query each, concurrently.
    pub async fn aggregate_many(
        &self,
        filter: RequestFilter,
        specs: Vec<AggregateSpec>,
    ) -> Result<Vec<Vec<Group>>, StoreError> {
        match self {
            Reader::Sqlite(r) => {
                let r = r.clone();
                joined(tokio::task::spawn_blocking(move || r.aggregate_many(&filter, &specs)).await)
            }
            Reader::ClickHouse(r) => {
                futures_util::future::try_join_all(
                    specs.iter().map(|spec| r.aggregate(&filter, spec)),
                )
                .await
            }
        }
    }

    /// The aggregate of everything matching `filter` as one [`Stats`].
    pub async fn totals(&self, filter: RequestFilter) -> Result<Stats, StoreError> {
        let groups = self
            .aggregate(filter, GroupBy::Nothing, Order::Key, 1)
            .await?;
        Ok(groups
            .into_iter()
            .next()
            .map(|g| g.stats)
            .unwrap_or_default())
    }

    /// Property keys in use by the records matching `filter`, sorted.
    pub async fn property_keys(
        &self,
        filter: RequestFilter,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        match self {
            Reader::Sqlite(r) => {
                let r = r.clone();
                joined(tokio::task::spawn_blocking(move || r.property_keys(&filter, limit)).await)
            }
            Reader::ClickHouse(r) => r.property_keys(&filter, limit).await,
        }
    }

    /// Cache hits matching `filter` and the USD they saved.
    pub async fn cache_savings(&self, filter: RequestFilter) -> Result<(u64, f64), StoreError> {
        match self {
            Reader::Sqlite(r) => {
                let r = r.clone();
                joined(tokio::task::spawn_blocking(move || r.cache_savings(&filter)).await)
            }
            Reader::ClickHouse(r) => r.cache_savings(&filter).await,
        }
    }

    /// One record with its bodies.
    pub async fn get(&self, request_id: String) -> Result<Option<Record>, StoreError> {
        match self {
            Reader::Sqlite(r) => {
                let r = r.clone();
                joined(tokio::task::spawn_blocking(move || r.get(&request_id)).await)
            }
            Reader::ClickHouse(r) => r.get(&request_id).await,
        }
    }
}

/// Narrowing of `GET /api/requests`. Every value reaches the store as a bound parameter.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RequestFilter {
    /// Page size.
    pub limit: usize,
    /// Continue after this position (exclusive), newest first.
    pub cursor: Option<Cursor>,
    /// Only requests that started at or after this time (ms since epoch).
    pub from_ms: Option<i64>,
    /// Only requests that started before this time (ms since epoch).
    pub to_ms: Option<i64>,
    /// Exact user id.
    pub user_id: Option<String>,
    /// Exact session id.
    pub session_id: Option<String>,
    /// Requested model, exact.
    pub model: Option<String>,
    /// Provider name, exact.
    pub provider: Option<String>,
    /// Tally key name, exact.
    pub key_name: Option<String>,
    /// Status code or class.
    pub status: Option<StatusFilter>,
    /// `property.<name>=<value>` pairs, all of which must match.
    pub properties: Vec<(String, String)>,
}

impl RequestFilter {
    /// The filters that compare a column for equality, as (column, value). The column names
    /// are fixed here, never taken from the request.
    pub fn equality_filters(&self) -> [(&'static str, &Option<String>); 5] {
        [
            ("user_id", &self.user_id),
            ("session_id", &self.session_id),
            ("model", &self.model),
            ("provider", &self.provider),
            ("key_name", &self.key_name),
        ]
    }
}

/// A status filter: one code (`429`) or a class (`5xx`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusFilter {
    /// Exactly this status.
    Code(u16),
    /// `N00..=N99`.
    Class(u16),
}

impl StatusFilter {
    /// Parses `200`, `0` or `4xx`.
    pub fn parse(s: &str) -> Option<Self> {
        let s = s.trim().to_ascii_lowercase();
        if let Some(d) = s.strip_suffix("xx") {
            let d: u16 = d.parse().ok()?;
            return (1..=5).contains(&d).then_some(StatusFilter::Class(d));
        }
        s.parse().ok().filter(|c| *c < 1000).map(StatusFilter::Code)
    }

    /// Inclusive status range.
    pub fn range(self) -> (u16, u16) {
        match self {
            StatusFilter::Code(c) => (c, c),
            StatusFilter::Class(d) => (d * 100, d * 100 + 99),
        }
    }
}

/// A position in the newest-first order: `(ts, request_id)` of the last row of a page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    /// Request start, ms.
    pub ts: i64,
    /// Request id (UUIDv7 text).
    pub request_id: String,
}

impl Cursor {
    /// Opaque text form handed to clients.
    pub fn encode(&self) -> String {
        format!("{}_{}", self.ts, self.request_id)
    }

    /// Parses [`Cursor::encode`]'s output.
    pub fn decode(s: &str) -> Option<Self> {
        let (ts, id) = s.split_once('_')?;
        let id = uuid::Uuid::parse_str(id).ok()?;
        Some(Self {
            ts: ts.parse().ok()?,
            request_id: id.to_string(),
        })
    }
}

/// One page of records.
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    /// Newest first.
    pub records: Vec<Record>,
    /// Where the next page starts, when there may be one.
    pub next_cursor: Option<Cursor>,
}

impl Page {
    /// A page from a query that asked for `limit + 1` rows: the extra row only tells that
    /// there is a next page, which starts after the last row kept.
    pub fn from_overfetch(mut records: Vec<Record>, limit: usize) -> Self {
        let next_cursor = if records.len() > limit {
            records.truncate(limit);
            records.last().map(|r| Cursor {
                ts: r.ts,
                request_id: r.request_id.to_string(),
            })
        } else {
            None
        };
        Self {
            records,
            next_cursor,
        }
    }
}

/// Reading the store failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The SQLite store could not be opened.
    #[error(transparent)]
    Open(#[from] tally_ingest::sqlite::SqliteError),
    /// A SQLite query failed.
    #[error("query failed: {0}")]
    Query(#[from] rusqlite::Error),
    /// A ClickHouse query failed.
    #[error("ClickHouse query failed: {0}")]
    ClickHouse(#[from] ::clickhouse::error::Error),
    /// The blocking task running the query was lost.
    #[error("query task failed: {0}")]
    Task(String),
    /// A statement that would write, given to a read-only entry point.
    #[error("{0}")]
    ReadOnly(String),
}
