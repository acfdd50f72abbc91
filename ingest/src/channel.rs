//! The bounded hand-off between the proxy's hot path and the ingest worker.
//!
//! The proxy only ever calls [`RecordSender::send`], which is a `try_send`: a full channel costs
//! the request nothing but a counter increment. That is the whole point of the design; a logging
//! proxy that stalls traffic when its database is slow is worse than no proxy.

use crossbeam_channel::{Receiver, Sender, TrySendError};

use crate::journal::{Journal, Ticket};
use crate::metrics::{DropLabels, IngestMetrics};
use crate::record::Record;

/// A record on its way to the worker, with its claim on the journal.
#[derive(Debug)]
pub struct Queued {
    pub(crate) record: Record,
    pub(crate) ticket: Option<Ticket>,
}

/// The worker's end of the channel.
pub type RecordReceiver = Receiver<Queued>;

/// A record journaled before it is final (its tokens are still being estimated): its journal
/// entry is kept until [`RecordSender::send_reserved`] sends the final one.
#[derive(Debug)]
#[must_use = "send the final record with RecordSender::send_reserved"]
pub struct Reservation(Option<Ticket>);

/// Default channel capacity: about a few seconds of peak traffic.
pub const DEFAULT_CHANNEL_CAPACITY: usize = 65_536;

/// The proxy's end of the channel. Cloning is cheap.
#[derive(Clone)]
pub struct RecordSender {
    tx: Sender<Queued>,
    metrics: IngestMetrics,
    journal: Option<Journal>,
}

/// Creates the channel with room for `capacity` records.
pub fn channel(capacity: usize, metrics: IngestMetrics) -> (RecordSender, RecordReceiver) {
    let (tx, rx) = crossbeam_channel::bounded(capacity);
    (
        RecordSender {
            tx,
            metrics,
            journal: None,
        },
        rx,
    )
}

impl RecordSender {
    /// Journals every record before it enters the channel (see [`crate::journal`]).
    pub fn with_journal(mut self, journal: Journal) -> Self {
        self.journal = Some(journal);
        self
    }

    /// Hands a record to the worker without ever blocking, after writing it to the journal
    /// when there is one. Returns false (and counts the drop) when the channel is full or the
    /// worker is gone.
    pub fn send(&self, record: Record) -> bool {
        let ticket = self.journal.as_ref().and_then(|j| j.append(&record));
        self.enqueue(record, ticket)
    }

    /// Journals a record whose final form comes later, so that a crash in between still
    /// leaves it (as it is now) for the next start.
    pub fn reserve(&self, record: &Record) -> Reservation {
        Reservation(self.journal.as_ref().and_then(|j| j.append(record)))
    }

    /// Sends the final form of a reserved record; its journal entry replaces the reserved one.
    pub fn send_reserved(&self, record: Record, reservation: Reservation) -> bool {
        let ticket = self.journal.as_ref().and_then(|j| j.append(&record));
        self.give_back(reservation.0);
        self.enqueue(record, ticket)
    }

    /// Releases a ticket nothing else will.
    fn give_back(&self, ticket: Option<Ticket>) {
        if let (Some(j), Some(t)) = (&self.journal, ticket) {
            j.release([t]);
        }
    }

    fn enqueue(&self, record: Record, ticket: Option<Ticket>) -> bool {
        let result = self.tx.try_send(Queued { record, ticket });
        self.metrics.channel_depth.set(self.tx.len() as i64);
        match result {
            Ok(()) => {
                self.metrics.enqueued.inc();
                true
            }
            Err(e) => {
                let (reason, queued) = match e {
                    TrySendError::Full(q) => ("channel_full", q),
                    TrySendError::Disconnected(q) => ("channel_closed", q),
                };
                // Nothing will acknowledge it: give its claim back so its segment can go.
                self.give_back(queued.ticket);
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
