//! The flush loop shared by every store: collect records into batches by rows, bytes and time,
//! hand each batch to a [`BatchWriter`], retry with backoff, and drain everything on shutdown.
//!
//! It runs on its own OS thread because store writers (SQLite in particular) block; keeping them
//! off the async runtime means a slow disk can never delay a proxied byte.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::TryRecvError;
use uuid::Uuid;

use crate::channel::{Queued, RecordReceiver};
use crate::journal::{Journal, Recovered, Ticket};
use crate::metrics::{DropLabels, IngestMetrics};
use crate::record::Record;
use crate::spool::{Spool, SpoolError};

/// First wait before replaying the spool after the store failed; doubles up to the maximum.
const REPLAY_BACKOFF_MIN: Duration = Duration::from_millis(500);
const REPLAY_BACKOFF_MAX: Duration = Duration::from_secs(30);

/// How often the worker takes what the channel holds. It never blocks on the channel itself:
/// a receiver waiting there turns every `try_send` on the proxy into a futex wake and every
/// record into a context switch of this thread (measured: about two futex calls per request
/// at 2,000 requests/s, BENCHMARKS.md "Load"). Polling costs 100 wake-ups a second whatever the
/// traffic, and adds at most this much to a record's time to the store; the channel holds
/// far more than one interval of peak traffic.
const POLL_INTERVAL: Duration = Duration::from_millis(10);

/// A journal segment older than this is sealed, so it is deleted once its records are
/// stored: records sit in the journal before redaction, and should not for long.
const JOURNAL_SEAL_AFTER: Duration = Duration::from_secs(1);

/// Rows per batch when unset. A batch is one transaction (SQLite) or one INSERT (ClickHouse);
/// under load, bigger batches write each touched index page once for more rows: 10,000 rows a
/// batch doubled SQLite's sustained rate over 1,000 (BENCHMARKS.md, "Ingest"). Light traffic
/// never fills one; the flush interval sends it.
pub const DEFAULT_MAX_ROWS: usize = 10_000;
/// Approximate bytes per batch when unset (bodies dominate).
pub const DEFAULT_MAX_BYTES: usize = 16 * 1024 * 1024;
/// Longest a record waits in a partial batch when unset.
pub const DEFAULT_FLUSH_INTERVAL: Duration = Duration::from_millis(200);

/// How much nicer than the process the ingest thread is. Writing a batch is a burst of CPU (index maintenance,
/// encoding); at the default nice it competes with the proxy's workers and shows up as
/// milliseconds in the proxy's p99 on a two-core machine (BENCHMARKS.md, "Load"). At +5 the
/// scheduler gives the workers about three times its share while both want a core; with an
/// idle core, the thread runs as fast as before.
const INGEST_NICE: i32 = 5;

/// Lowers this thread's scheduling priority by [`INGEST_NICE`] (Linux; elsewhere a no-op).
/// Failing to is harmless, so it is only logged. For every thread that works in bursts beside
/// the proxy's event loops (the ingest worker, the OTLP exporter).
pub fn background_priority() {
    #[cfg(target_os = "linux")]
    {
        // Relative to the process's own nice value: lowering priority needs no privilege.
        let tid = rustix::thread::gettid();
        let current = rustix::process::getpriority_process(Some(tid)).unwrap_or(0);
        let nice = (current + INGEST_NICE).min(19);
        if let Err(e) = rustix::process::setpriority_process(Some(tid), nice) {
            tracing::debug!(error = %e, "could not lower the ingest thread's priority");
        }
    }
}
/// Write attempts per batch before its records are counted as dropped.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 5;

/// A store's write side: one call commits one batch atomically, or fails as a whole.
pub trait BatchWriter: Send + 'static {
    /// The store's error type.
    type Error: std::error::Error;

    /// Writes every record of `batch`, or none of them.
    fn write_batch(&mut self, batch: &[Record]) -> Result<(), Self::Error>;

    /// Whether sending the same batch again may succeed. A permanent error (bad data, unknown
    /// table, failed authentication) ends the attempts at once.
    fn retriable(_error: &Self::Error) -> bool {
        true
    }

    /// The request ids of `batch` the store already holds: what a crash left in the journal
    /// may have been committed just before it. The default finds none, which is right only
    /// for a store that ignores a second insert of a key.
    fn stored(&mut self, _batch: &[Record]) -> Result<HashSet<Uuid>, Self::Error> {
        Ok(HashSet::new())
    }
}

/// Sees every record the worker receives, on the worker's thread. It must be quick: the
/// worker does not write while it runs.
pub trait RecordObserver: Send + Sync {
    /// Called once per record, in arrival order.
    fn observe(&self, record: &Record);
}

/// Rewrites every record the worker receives before anything else sees it: the observer, the
/// store and the spool get what it leaves (redaction, `tally-privacy`). It runs on the worker's
/// thread, off the proxy's event loops; like the observer, it must be quick.
pub trait RecordFilter: Send + Sync {
    /// Called once per record, in arrival order, before the observer.
    fn filter(&self, record: &mut Record);
}

/// What the worker runs on each record before batching it, in this order.
#[derive(Clone, Default)]
pub struct Hooks {
    /// Rewrites the record ([`RecordFilter`]).
    pub filter: Option<Arc<dyn RecordFilter>>,
    /// Sees the rewritten record ([`RecordObserver`]).
    pub observer: Option<Arc<dyn RecordObserver>>,
}

/// Limits for the flush loop.
#[derive(Debug, Clone)]
pub struct BatchConfig {
    /// Flush when this many records are waiting.
    pub max_rows: usize,
    /// Flush when the records waiting reach about this many bytes.
    pub max_bytes: usize,
    /// Flush a partial batch after this long.
    pub flush_interval: Duration,
    /// Attempts per batch before giving up on it.
    pub max_attempts: u32,
    /// First retry delay; doubles each attempt.
    pub retry_backoff: Duration,
}

impl Default for BatchConfig {
    fn default() -> Self {
        Self {
            max_rows: DEFAULT_MAX_ROWS,
            max_bytes: DEFAULT_MAX_BYTES,
            flush_interval: DEFAULT_FLUSH_INTERVAL,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            retry_backoff: Duration::from_millis(100),
        }
    }
}

/// The running worker. Dropping it without [`IngestWorker::shutdown`] detaches the thread.
pub struct IngestWorker {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

impl IngestWorker {
    /// Starts the flush loop on a dedicated thread, without a spool: a batch the store keeps
    /// refusing is counted as dropped.
    pub fn spawn<W: BatchWriter>(
        rx: RecordReceiver,
        writer: W,
        config: BatchConfig,
        metrics: IngestMetrics,
    ) -> std::io::Result<Self> {
        Self::spawn_with_spool(rx, writer, config, metrics, None)
    }

    /// Starts the flush loop with a spool: a batch the store cannot take (after the configured
    /// attempts, for retriable errors) is written to disk and replayed, oldest first, once the
    /// store answers again; segments left by an earlier run are replayed too.
    pub fn spawn_with_spool<W: BatchWriter>(
        rx: RecordReceiver,
        writer: W,
        config: BatchConfig,
        metrics: IngestMetrics,
        spool: Option<Spool>,
    ) -> std::io::Result<Self> {
        Self::spawn_observed(rx, writer, config, metrics, spool, Hooks::default())
    }

    /// As [`IngestWorker::spawn_with_spool`], and runs `hooks` on every record as it arrives
    /// from the channel, before it is written: the filter rewrites it, then live counters
    /// (budgets) see spend that happened even if the store is down.
    pub fn spawn_observed<W: BatchWriter>(
        rx: RecordReceiver,
        writer: W,
        config: BatchConfig,
        metrics: IngestMetrics,
        spool: Option<Spool>,
        hooks: Hooks,
    ) -> std::io::Result<Self> {
        Self::spawn_journaled(rx, writer, config, metrics, spool, hooks, None)
    }

    /// As [`IngestWorker::spawn_observed`], releasing each record's journal ticket once its
    /// batch is safe, and writing first what an earlier run left in the journal (the records
    /// the store does not hold yet).
    pub fn spawn_journaled<W: BatchWriter>(
        rx: RecordReceiver,
        writer: W,
        config: BatchConfig,
        metrics: IngestMetrics,
        spool: Option<Spool>,
        hooks: Hooks,
        journal: Option<(Journal, Recovered)>,
    ) -> std::io::Result<Self> {
        let (journal, recovered) = journal.unzip();
        let stop = Arc::new(AtomicBool::new(false));
        let stop_flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("tally-ingest".into())
            .spawn(move || {
                background_priority();
                let replay_at = spool
                    .as_ref()
                    .filter(|s| !s.is_empty())
                    .map(|_| Instant::now());
                let mut l = FlushLoop {
                    rx,
                    stop: stop_flag,
                    writer,
                    config,
                    metrics,
                    hooks,
                    journal,
                    tickets: Vec::new(),
                    batch: Vec::new(),
                    batch_bytes: 0,
                    spool,
                    store_down: false,
                    replay_at,
                    replay_backoff: REPLAY_BACKOFF_MIN,
                };
                l.update_spool_gauges();
                if let Some(r) = recovered {
                    l.recover(r);
                }
                l.run()
            })?;
        Ok(Self { stop, thread })
    }

    /// Writes everything already in the channel, then stops. Call it after the proxy stopped
    /// producing records; anything sent later is counted as dropped (`channel_closed`).
    pub fn shutdown(self) {
        self.stop.store(true, Ordering::Release);
        self.thread.thread().unpark();
        if self.thread.join().is_err() {
            tracing::error!("ingest worker panicked during shutdown");
        }
    }
}

/// Runs `op` (given the attempt number, from 1) up to `attempts` times while it fails with an
/// error the store calls retriable, sleeping `backoff`, doubled each time, between tries.
fn with_retries<W: BatchWriter, T>(
    mut backoff: Duration,
    attempts: u32,
    mut op: impl FnMut(u32) -> Result<T, W::Error>,
) -> Result<T, W::Error> {
    let attempts = attempts.max(1);
    let mut attempt = 1;
    loop {
        match op(attempt) {
            Err(e) if attempt < attempts && W::retriable(&e) => {
                std::thread::sleep(backoff);
                backoff *= 2;
                attempt += 1;
            }
            done => return done,
        }
    }
}

struct FlushLoop<W> {
    rx: RecordReceiver,
    stop: Arc<AtomicBool>,
    writer: W,
    config: BatchConfig,
    metrics: IngestMetrics,
    hooks: Hooks,
    journal: Option<Journal>,
    /// The journal tickets of `batch`, released when it is safe.
    tickets: Vec<Ticket>,
    batch: Vec<Record>,
    batch_bytes: usize,
    spool: Option<Spool>,
    /// The last write failed: new batches get one attempt before going to the spool.
    store_down: bool,
    /// When to try the spool's oldest segment next; `None` when the spool is empty.
    replay_at: Option<Instant>,
    replay_backoff: Duration,
}

impl<W: BatchWriter> FlushLoop<W> {
    fn run(mut self) {
        let mut deadline: Option<Instant> = None;
        loop {
            if self.replay_at.is_some_and(|t| t <= Instant::now()) {
                self.replay();
            }
            let next = [deadline, self.replay_at]
                .into_iter()
                .flatten()
                .fold(Instant::now() + POLL_INTERVAL, Instant::min);
            // Sleep until the next tick or a shutdown's unpark, never waiting on the record
            // channel (see POLL_INTERVAL). A plain park: crossbeam's timed receive spins and
            // yields before it sleeps, about ten `sched_yield` calls a tick.
            std::thread::park_timeout(next.saturating_duration_since(Instant::now()));
            if self.stop.load(Ordering::Acquire) {
                self.drain();
                return;
            }
            loop {
                match self.rx.try_recv() {
                    Ok(queued) => {
                        if self.batch.is_empty() {
                            deadline = Some(Instant::now() + self.config.flush_interval);
                        }
                        self.receive(queued);
                        if self.is_full() {
                            self.flush();
                            deadline = None;
                        }
                    }
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        // Every sender is gone: nothing more can arrive.
                        self.flush();
                        return;
                    }
                }
            }
            self.metrics.channel_depth.set(self.rx.len() as i64);
            if let Some(j) = &self.journal {
                j.seal_older_than(JOURNAL_SEAL_AFTER);
            }
            if deadline.is_some_and(|d| d <= Instant::now()) {
                self.flush();
                deadline = None;
            }
        }
    }

    /// Writes what a crash left in the journal, before anything new: those the store does not
    /// hold yet, in batches, through the same retries and spool as any batch. The journal's
    /// old segments are deleted only after that; a crash in between finds them again.
    fn recover(&mut self, recovered: Recovered) {
        let Recovered { records, tickets } = recovered;
        if records.is_empty() {
            if let Some(j) = &self.journal {
                j.release(tickets);
            }
            return;
        }
        tracing::warn!(
            records = records.len(),
            "the journal holds records from a run that did not stop cleanly; writing those the store lacks"
        );
        let mut records = records.into_iter().peekable();
        while records.peek().is_some() {
            let mut chunk: Vec<Record> = records.by_ref().take(self.config.max_rows).collect();
            let writer = &mut self.writer;
            let asked = with_retries::<W, _>(
                self.config.retry_backoff,
                self.config.max_attempts,
                |attempt| {
                    writer.stored(&chunk).inspect_err(|e| {
                        tracing::warn!(attempt, error = %e, "asking the store which journal records it holds failed");
                    })
                },
            );
            match asked {
                Ok(stored) => chunk.retain(|r| !stored.contains(&r.request_id)),
                // Without the store's answer every record is kept: on SQLite a duplicate is
                // ignored by its key; on ClickHouse one stored just before the crash may be
                // stored twice (GUARANTEES.md).
                Err(e) => {
                    tracing::error!(error = %e, rows = chunk.len(), "cannot ask the store which journal records it holds; keeping them all");
                }
            }
            self.metrics.journal_recovered.inc_by(chunk.len() as u64);
            for r in chunk {
                self.push(r);
                if self.is_full() {
                    self.flush();
                }
            }
            self.flush();
        }
        if let Some(j) = &self.journal {
            j.release(tickets);
        }
        tracing::info!("journal recovery done");
    }

    fn receive(&mut self, queued: Queued) {
        self.tickets.extend(queued.ticket);
        self.push(queued.record);
    }

    /// The one way into a batch, for received and recovered records alike, so both are
    /// filtered and observed.
    fn push(&mut self, mut record: Record) {
        if let Some(f) = &self.hooks.filter {
            let filtered =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f.filter(&mut record)));
            if filtered.is_err() {
                // A bug in redaction must neither stop the storing of every later record nor
                // store what it was to remove: the record keeps its numbers and loses every
                // text the filter reads. The panic's message is not logged: it may quote them.
                record.request_body = None;
                record.response_body = None;
                record.upstream_request_body = None;
                record.upstream_response_body = None;
                record.error = record.error.as_ref().map(|_| "[redacted]".to_owned());
                record.properties.clear();
                record.user_id = None;
                self.metrics.filter_panics.inc();
                tracing::error!(request_id = %record.request_id, "redaction failed on a record; it is stored without its texts");
            }
        }
        if let Some(o) = &self.hooks.observer {
            o.observe(&record);
        }
        self.batch_bytes += record.approx_bytes();
        self.batch.push(record);
    }

    fn is_full(&self) -> bool {
        self.batch.len() >= self.config.max_rows || self.batch_bytes >= self.config.max_bytes
    }

    fn drain(&mut self) {
        while let Ok(q) = self.rx.try_recv() {
            self.receive(q);
            if self.is_full() {
                self.flush();
            }
        }
        self.flush();
        self.metrics.channel_depth.set(0);
    }

    fn flush(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        let batch = std::mem::take(&mut self.batch);
        self.batch_bytes = 0;
        // While the store is known to be down, do not spend the backoff on every new batch.
        let attempts = if self.store_down {
            1
        } else {
            self.config.max_attempts
        };
        match self.write(&batch, attempts) {
            Ok(()) => {
                if self.store_down {
                    tracing::info!("store is accepting writes again");
                }
                self.store_down = false;
                if self.spool.as_ref().is_some_and(|s| !s.is_empty()) {
                    self.replay_at = Some(Instant::now());
                }
            }
            Err(retriable) => {
                self.store_down = true;
                // Even an error the store calls permanent is spooled, not dropped: "bad
                // credentials" and "unknown table" are what a password rotation or a migration
                // in progress look like, and both pass. The spool retries with backoff.
                if self.spool.is_some() {
                    self.spool_batch(&batch);
                } else {
                    tracing::error!(
                        rows = batch.len(),
                        retriable,
                        "giving up on batch; records dropped"
                    );
                    self.drop_records("store_error", batch.len());
                }
            }
        }
        let mut batch = batch;
        batch.clear();
        self.batch = batch;
        // Stored, spooled (synced) or counted as dropped: either way the journal is done with it.
        if let Some(j) = &self.journal {
            j.release(self.tickets.drain(..));
        }
    }

    /// Tries a batch up to `attempts` times. `Err(true)` when the last failure may pass on a
    /// later try, `Err(false)` when the store refused the batch for good.
    fn write(&mut self, batch: &[Record], attempts: u32) -> Result<(), bool> {
        let (writer, metrics) = (&mut self.writer, &self.metrics);
        let written = with_retries::<W, _>(self.config.retry_backoff, attempts, |attempt| {
            let started = Instant::now();
            writer
                .write_batch(batch)
                .inspect(|()| {
                    metrics
                        .batch_write_seconds
                        .observe(started.elapsed().as_secs_f64());
                })
                .inspect_err(|e| {
                    metrics.write_errors.inc();
                    tracing::warn!(attempt, rows = batch.len(), error = %e, "batch write failed");
                })
        });
        match written {
            Ok(()) => {
                metrics.written.inc_by(batch.len() as u64);
                tracing::debug!(rows = batch.len(), "batch written");
                Ok(())
            }
            Err(e) if !W::retriable(&e) => {
                tracing::error!(error = %e, "the store refused the batch permanently");
                Err(false)
            }
            Err(_) => Err(true),
        }
    }

    fn spool_batch(&mut self, batch: &[Record]) {
        let Some(spool) = self.spool.as_mut() else {
            return;
        };
        match spool.append(batch) {
            Ok(()) => {
                self.metrics.spooled.inc_by(batch.len() as u64);
                tracing::warn!(
                    rows = batch.len(),
                    segments = spool.len(),
                    "store unavailable; batch spooled to disk"
                );
                if self.replay_at.is_none() {
                    self.replay_at = Some(Instant::now() + self.replay_backoff);
                }
            }
            Err(e @ SpoolError::Full { .. }) => {
                tracing::error!(rows = batch.len(), error = %e, "spool full; records dropped");
                self.drop_records("spool_full", batch.len());
            }
            Err(e) => {
                tracing::error!(rows = batch.len(), error = %e, "cannot spool; records dropped");
                self.drop_records("spool_error", batch.len());
            }
        }
        self.update_spool_gauges();
    }

    /// Replays spooled segments, oldest first, until one fails or the spool is empty.
    ///
    /// A failure never repeats at once: either the segment leaves the queue (replayed,
    /// quarantined, or gone from disk) or the replay backs off. Only what is proven bad is
    /// quarantined: a segment that fails its checksum or does not decode, or one the store
    /// refuses for good while it accepts the segment after it. A store that refuses
    /// everything is down, whatever its error says, and is waited for.
    fn replay(&mut self) {
        self.replay_at = None;
        // A segment the store refused permanently, waiting for the next one to tell whether
        // the batch or the store is at fault.
        let mut suspect: Option<crate::spool::Segment> = None;
        while let Some(spool) = self.spool.as_ref() {
            let next = match &suspect {
                Some(s) => spool.after(s),
                None => spool.oldest(),
            };
            let Some(segment) = next else {
                if suspect.is_none() {
                    self.replay_backoff = REPLAY_BACKOFF_MIN;
                } else {
                    self.back_off();
                }
                break;
            };
            match spool.read(&segment) {
                Ok(records) => match self.write(&records, 1) {
                    Ok(()) => {
                        if let Some(bad) = suspect.take() {
                            tracing::error!(
                                "the store refused one spooled batch for good and took the next"
                            );
                            self.quarantine(&bad);
                        }
                        self.replayed(&segment, records.len());
                    }
                    Err(false) if suspect.is_none() => suspect = Some(segment),
                    Err(_) => {
                        self.back_off();
                        break;
                    }
                },
                Err(SpoolError::Corrupt(_)) => {
                    tracing::error!(path = %segment.path().display(), "spool segment unreadable");
                    self.quarantine(&segment);
                }
                Err(e @ SpoolError::Missing(_)) => {
                    tracing::error!(error = %e, "a spooled batch is gone from disk; its records are lost");
                    self.lost(&segment);
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot read the spool; retrying later");
                    self.back_off();
                    break;
                }
            }
        }
        self.update_spool_gauges();
    }

    /// The store took a replayed segment: delete it.
    fn replayed(&mut self, segment: &crate::spool::Segment, rows: usize) {
        self.store_down = false;
        if let Some(s) = self.spool.as_mut() {
            if let Err(e) = s.remove(segment) {
                // Its batch is in the store; replaying it again would be harmless (the batch
                // token and the primary key make the store drop the duplicate), but trying to
                // delete it forever would stall the replay.
                tracing::error!(error = %e, "cannot delete a replayed segment; leaving it");
                s.forget(segment);
            }
        }
        self.update_spool_gauges();
        self.metrics.replayed.inc_by(rows as u64);
    }

    fn back_off(&mut self) {
        self.store_down = true;
        self.replay_at = Some(Instant::now() + self.replay_backoff);
        self.replay_backoff = (self.replay_backoff * 2).min(REPLAY_BACKOFF_MAX);
    }

    /// A segment that is gone: counted as lost (by its rows when its name says them).
    fn lost(&mut self, segment: &crate::spool::Segment) {
        if let Some(s) = self.spool.as_mut() {
            s.forget(segment);
        }
        self.metrics.spool_segments_lost.inc();
        if let Some(rows) = segment.rows {
            self.drop_records("spool_lost", rows as usize);
        }
    }

    fn quarantine(&mut self, segment: &crate::spool::Segment) {
        if let Some(s) = self.spool.as_mut() {
            match s.quarantine(segment) {
                Ok(path) => {
                    self.metrics.spool_quarantined.inc();
                    tracing::error!(path = %path.display(), "spool segment quarantined; `tally spool requeue` puts it back");
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot quarantine a spool segment; leaving it");
                    self.lost(segment);
                }
            }
        }
    }

    fn drop_records(&self, reason: &'static str, n: usize) {
        self.metrics
            .dropped
            .get_or_create(&DropLabels { reason })
            .inc_by(n as u64);
    }

    fn update_spool_gauges(&self) {
        if let Some(s) = &self.spool {
            self.metrics
                .spool_quarantined_segments
                .set(s.quarantined() as i64);
        }
        if let Some(s) = &self.spool {
            self.metrics.spool_bytes.set(s.bytes() as i64);
            self.metrics.spool_segments.set(s.len() as i64);
        }
    }
}
