//! The flush loop shared by every store: collect records into batches by rows, bytes and time,
//! hand each batch to a [`BatchWriter`], retry with backoff, and drain everything on shutdown.
//!
//! It runs on its own OS thread because store writers (SQLite in particular) block; keeping them
//! off the async runtime means a slow disk can never delay a proxied byte.

use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{select, Receiver, Sender};

use crate::metrics::{DropLabels, IngestMetrics};
use crate::record::Record;

/// Rows per batch when unset.
pub const DEFAULT_MAX_ROWS: usize = 1_000;
/// Approximate bytes per batch when unset (bodies dominate).
pub const DEFAULT_MAX_BYTES: usize = 16 * 1024 * 1024;
/// Longest a record waits in a partial batch when unset.
pub const DEFAULT_FLUSH_INTERVAL: Duration = Duration::from_millis(200);
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
    stop: Sender<()>,
    thread: JoinHandle<()>,
}

impl IngestWorker {
    /// Starts the flush loop on a dedicated thread.
    pub fn spawn<W: BatchWriter>(
        rx: Receiver<Record>,
        writer: W,
        config: BatchConfig,
        metrics: IngestMetrics,
    ) -> std::io::Result<Self> {
        let (stop, stop_rx) = crossbeam_channel::bounded(1);
        let thread = std::thread::Builder::new()
            .name("tally-ingest".into())
            .spawn(move || {
                FlushLoop {
                    rx,
                    stop: stop_rx,
                    writer,
                    config,
                    metrics,
                    batch: Vec::new(),
                    batch_bytes: 0,
                }
                .run()
            })?;
        Ok(Self { stop, thread })
    }

    /// Writes everything already in the channel, then stops. Call it after the proxy stopped
    /// producing records; anything sent later is counted as dropped (`channel_closed`).
    pub fn shutdown(self) {
        let _ = self.stop.send(());
        if self.thread.join().is_err() {
            tracing::error!("ingest worker panicked during shutdown");
        }
    }
}

struct FlushLoop<W> {
    rx: Receiver<Record>,
    stop: Receiver<()>,
    writer: W,
    config: BatchConfig,
    metrics: IngestMetrics,
    batch: Vec<Record>,
    batch_bytes: usize,
}

impl<W: BatchWriter> FlushLoop<W> {
    fn run(mut self) {
        let mut deadline: Option<Instant> = None;
        loop {
            let wait = deadline.map_or(Duration::from_secs(3600), |d| {
                d.saturating_duration_since(Instant::now())
            });
            select! {
                recv(self.rx) -> msg => match msg {
                    Ok(record) => {
                        if self.batch.is_empty() {
                            deadline = Some(Instant::now() + self.config.flush_interval);
                        }
                        self.push(record);
                        // Take what is already waiting without going back through select.
                        while !self.is_full() {
                            match self.rx.try_recv() {
                                Ok(r) => self.push(r),
                                Err(_) => break,
                            }
                        }
                        self.metrics.channel_depth.set(self.rx.len() as i64);
                        if self.is_full() {
                            self.flush();
                            deadline = None;
                        }
                    }
                    Err(_) => {
                        // Every sender is gone: nothing more can arrive.
                        self.flush();
                        return;
                    }
                },
                recv(self.stop) -> _ => {
                    self.drain();
                    return;
                },
                default(wait) => {
                    self.flush();
                    deadline = None;
                }
            }
        }
    }

    fn push(&mut self, record: Record) {
        self.batch_bytes += record.approx_bytes();
        self.batch.push(record);
    }

    fn is_full(&self) -> bool {
        self.batch.len() >= self.config.max_rows || self.batch_bytes >= self.config.max_bytes
    }

    fn drain(&mut self) {
        while let Ok(r) = self.rx.try_recv() {
            self.push(r);
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
        let mut backoff = self.config.retry_backoff;
        for attempt in 1..=self.config.max_attempts {
            let started = Instant::now();
            match self.writer.write_batch(&self.batch) {
                Ok(()) => {
                    self.metrics
                        .batch_write_seconds
                        .observe(started.elapsed().as_secs_f64());
                    self.metrics.written.inc_by(self.batch.len() as u64);
                    tracing::debug!(rows = self.batch.len(), "batch written");
                    self.batch.clear();
                    self.batch_bytes = 0;
                    return;
                }
                Err(e) => {
                    self.metrics.write_errors.inc();
                    tracing::warn!(attempt, rows = self.batch.len(), error = %e, "batch write failed");
                    if !W::retriable(&e) {
                        tracing::error!(error = %e, "the store refused the batch permanently");
                        break;
                    }
                    if attempt < self.config.max_attempts {
                        std::thread::sleep(backoff);
                        backoff *= 2;
                    }
                }
            }
        }
        tracing::error!(
            rows = self.batch.len(),
            "giving up on batch; records dropped"
        );
        self.metrics
            .dropped
            .get_or_create(&DropLabels {
                reason: "store_error",
            })
            .inc_by(self.batch.len() as u64);
        self.batch.clear();
        self.batch_bytes = 0;
    }
}
