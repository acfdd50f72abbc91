//! Tally's ingest side: the [`Record`], the bounded channel the proxy drops records into, the
//! batching flush loop, and the store writers.
//!
//! The proxy never waits on this crate. It calls [`RecordSender::send`] (a `try_send` into a
//! bounded crossbeam channel) and moves on; an [`IngestWorker`] on its own thread collects records
//! into batches by rows, bytes and time and hands each batch to a [`BatchWriter`] (today
//! [`sqlite::SqliteWriter`]). Every record that does not make it is counted in
//! [`IngestMetrics::dropped`] with a reason.
//!
//! ```no_run
//! use tally_ingest::{channel, sqlite, BatchConfig, IngestMetrics, IngestWorker};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let metrics = IngestMetrics::default();
//! let (tx, rx) = channel(1024, metrics.clone());
//! let mut conn = sqlite::open_rw("tally.db".as_ref())?;
//! sqlite::migrate(&mut conn)?;
//! let worker = IngestWorker::spawn(rx, sqlite::SqliteWriter::new(conn), BatchConfig::default(), metrics)?;
//! // … the proxy calls tx.send(record) …
//! drop(tx);
//! worker.shutdown();
//! # Ok(()) }
//! ```
#![deny(missing_docs)]

mod batch;
mod channel;
pub mod clickhouse;
pub mod journal;
pub mod metrics;
pub mod purge;
mod record;
pub mod reprice;
pub mod retention;
pub mod spool;
pub mod sqlite;

pub use batch::{
    background_priority, BatchConfig, BatchWriter, Hooks, IngestWorker, RecordFilter,
    RecordObserver, DEFAULT_FLUSH_INTERVAL, DEFAULT_MAX_ATTEMPTS, DEFAULT_MAX_BYTES,
    DEFAULT_MAX_ROWS,
};
pub use channel::{
    channel, Queued, RecordReceiver, RecordSender, Reservation, DEFAULT_CHANNEL_CAPACITY,
};
pub use metrics::{DropLabels, IngestMetrics};
pub use record::{is_error, CacheStatus, Record, Tokens, IS_ERROR_SQL};

/// Now, in Unix milliseconds (the unit of `Record::ts`).
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

#[cfg(test)]
mod tests;
