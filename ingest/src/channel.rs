//! The bounded hand-off between the proxy's hot path and the ingest worker.
//!
//! The proxy only ever calls [`RecordSender::send`], which is a `try_send`: a full channel costs
//! the request nothing but a counter increment. That is the whole point of the design; a logging
//! proxy that stalls traffic when its database is slow is worse than no proxy.

use crossbeam_channel::{Receiver, Sender, TrySendError};

use crate::metrics::{DropLabels, IngestMetrics};
use crate::record::Record;

/// Default channel capacity: about a few seconds of peak traffic.
pub const DEFAULT_CHANNEL_CAPACITY: usize = 65_536;

/// The proxy's end of the channel. Cloning is cheap.
#[derive(Clone)]
pub struct RecordSender {
    tx: Sender<Record>,
    metrics: IngestMetrics,
}

/// Creates the channel with room for `capacity` records.
pub fn channel(capacity: usize, metrics: IngestMetrics) -> (RecordSender, Receiver<Record>) {
    let (tx, rx) = crossbeam_channel::bounded(capacity);
    (RecordSender { tx, metrics }, rx)
}

impl RecordSender {
    /// Hands a record to the worker without ever blocking. Returns false (and counts the drop)
    /// when the channel is full or the worker is gone.
    pub fn send(&self, record: Record) -> bool {
        let result = self.tx.try_send(record);
        self.metrics.channel_depth.set(self.tx.len() as i64);
        match result {
            Ok(()) => {
                self.metrics.enqueued.inc();
                true
            }
            Err(e) => {
                let reason = match e {
                    TrySendError::Full(_) => "channel_full",
                    TrySendError::Disconnected(_) => "channel_closed",
                };
                self.metrics
                    .dropped
                    .get_or_create(&DropLabels { reason })
                    .inc();
                tracing::warn!(reason, "record dropped before reaching the store");
                false
            }
        }
    }

    /// Records currently waiting.
    pub fn len(&self) -> usize {
        self.tx.len()
    }

    /// True when nothing is waiting.
    pub fn is_empty(&self) -> bool {
        self.tx.is_empty()
    }

    /// The metrics this sender reports into.
    pub fn metrics(&self) -> &IngestMetrics {
        &self.metrics
    }
}
