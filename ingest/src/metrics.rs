//! What an operator watches on the ingest side, exposed on `/metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Why a record did not reach the store.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DropLabels {
    /// `channel_full`, `channel_closed` or `store_error`.
    pub reason: &'static str,
}

/// Ingest counters; cheap to clone (each metric is an `Arc` inside).
#[derive(Clone)]
pub struct IngestMetrics {
    /// Records accepted into the channel.
    pub enqueued: Counter,
    /// Records that will never be stored, by reason.
    pub dropped: Family<DropLabels, Counter>,
    /// Records committed to the store.
    pub written: Counter,
    /// Records waiting in the channel, sampled on send and on drain.
    pub channel_depth: Gauge,
    /// Batches whose write failed (each may be retried).
    pub write_errors: Counter,
    /// Time to write one batch, seconds.
    pub batch_write_seconds: Histogram,
    /// Records written to the disk spool because the store was unavailable.
    pub spooled: Counter,
    /// Spooled records later written to the store.
    pub replayed: Counter,
    /// Bytes in the spool.
    pub spool_bytes: Gauge,
    /// Segments (batches) in the spool.
    pub spool_segments: Gauge,
    /// Corrupt spool segments moved aside.
    pub spool_quarantined: Counter,
    /// Segments waiting in `quarantine/` right now (`tally spool requeue` puts them back).
    pub spool_quarantined_segments: Gauge,
    /// Spool segments that disappeared from disk before they were replayed.
    pub spool_segments_lost: Counter,
    /// Times the store's file was found deleted or replaced and opened again.
    pub store_reopened: Counter,
    /// Records not written to the journal, by reason (`full`, `io`, `encode`): they went to
    /// the channel unprotected against a crash.
    pub journal_refused: Family<DropLabels, Counter>,
    /// Bytes in the journal's live segments.
    pub journal_bytes: Gauge,
    /// Live journal segments.
    pub journal_segments: Gauge,
    /// Records read back from the journal at start and written to the store.
    pub journal_recovered: Counter,
    /// Journal segments that ended in a torn or corrupt frame.
    pub journal_corrupt: Counter,
    /// Records whose filter (redaction) panicked; stored without the texts it reads.
    pub filter_panics: Counter,
}

/// Every reason a record is not journaled.
pub const JOURNAL_REFUSALS: [&str; 3] = ["full", "io", "encode"];

/// Every drop reason, so each series exists (at 0) before the first drop and alerts can
/// watch it.
pub const DROP_REASONS: [&str; 6] = [
    "channel_full",
    "channel_closed",
    "store_error",
    "spool_full",
    "spool_error",
    "spool_lost",
];

impl Default for IngestMetrics {
    fn default() -> Self {
        let dropped = Family::<DropLabels, Counter>::default();
        for reason in DROP_REASONS {
            let _ = dropped.get_or_create(&DropLabels { reason });
        }
        let journal_refused = Family::<DropLabels, Counter>::default();
        for reason in JOURNAL_REFUSALS {
            let _ = journal_refused.get_or_create(&DropLabels { reason });
        }
        Self {
            enqueued: Counter::default(),
            dropped,
            written: Counter::default(),
            channel_depth: Gauge::default(),
            write_errors: Counter::default(),
            batch_write_seconds: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            spooled: Counter::default(),
            replayed: Counter::default(),
            spool_bytes: Gauge::default(),
            spool_segments: Gauge::default(),
            spool_quarantined: Counter::default(),
            spool_quarantined_segments: Gauge::default(),
            spool_segments_lost: Counter::default(),
            store_reopened: Counter::default(),
            journal_refused,
            journal_bytes: Gauge::default(),
            journal_segments: Gauge::default(),
            journal_recovered: Counter::default(),
            journal_corrupt: Counter::default(),
            filter_panics: Counter::default(),
        }
    }
}

impl IngestMetrics {
    /// Adds every metric to `registry` under the `tally_` prefix the registry carries.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "records_enqueued",
            "Records accepted into the ingest channel",
            self.enqueued.clone(),
        );
        registry.register(
            "records_dropped",
            "Records that will never be stored, by reason",
            self.dropped.clone(),
        );
        registry.register(
            "records_written",
            "Records committed to the store",
            self.written.clone(),
        );
        registry.register(
            "ingest_channel_depth",
            "Records waiting in the ingest channel",
            self.channel_depth.clone(),
        );
        registry.register(
            "store_write_errors",
            "Batch writes that failed (and may be retried)",
            self.write_errors.clone(),
        );
        registry.register(
            "records_spooled",
            "Records written to the disk spool while the store was unavailable",
            self.spooled.clone(),
        );
        registry.register(
            "records_replayed",
            "Spooled records later written to the store",
            self.replayed.clone(),
        );
        registry.register(
            "spool_bytes",
            "Bytes in the disk spool",
            self.spool_bytes.clone(),
        );
        registry.register(
            "spool_segments",
            "Batches waiting in the disk spool",
            self.spool_segments.clone(),
        );
        registry.register(
            "spool_quarantined",
            "Spool segments moved to quarantine (corrupt, or refused while later batches were accepted)",
            self.spool_quarantined.clone(),
        );
        registry.register(
            "spool_quarantined_segments",
            "Spool segments waiting in quarantine/; `tally spool requeue` replays them",
            self.spool_quarantined_segments.clone(),
        );
        registry.register(
            "spool_segments_lost",
            "Spool segments that disappeared from disk before replay (their records count as dropped, spool_lost)",
            self.spool_segments_lost.clone(),
        );
        registry.register(
            "store_reopened",
            "Times the SQLite file was found deleted or replaced and opened afresh",
            self.store_reopened.clone(),
        );
        registry.register(
            "journal_refused",
            "Records not written to the crash journal (full, io, encode); they were still sent to the store",
            self.journal_refused.clone(),
        );
        registry.register(
            "journal_bytes",
            "Bytes in the crash journal's live segments",
            self.journal_bytes.clone(),
        );
        registry.register(
            "journal_segments",
            "Live crash-journal segments",
            self.journal_segments.clone(),
        );
        registry.register(
            "journal_recovered",
            "Records read back from the crash journal at start that the store did not hold yet",
            self.journal_recovered.clone(),
        );
        registry.register(
            "journal_corrupt",
            "Crash-journal segments that ended in a torn or corrupt frame",
            self.journal_corrupt.clone(),
        );
        registry.register(
            "ingest_filter_panics",
            "Records whose redaction failed with a panic; stored without bodies, error text, properties or user id",
            self.filter_panics.clone(),
        );
        registry.register(
            "batch_write_seconds",
            "Time to write one batch to the store",
            self.batch_write_seconds.clone(),
        );
    }

    /// Total records dropped for any reason.
    pub fn dropped_total(&self) -> u64 {
        DROP_REASONS
            .iter()
            .map(|reason| self.dropped.get_or_create(&DropLabels { reason }).get())
            .sum()
    }
}
