//! The record journal: each record on disk before its response completes, so that `kill -9`
//! loses no record of an answered request.
//!
//! The channel and the batch in the worker are memory: a process that dies takes them along
//! (up to a flush interval of records plus the batch being written). The journal closes that
//! gap. [`RecordSender::send`](crate::RecordSender::send) writes the record into the active
//! segment of its thread's lane with one `pwrite`, on the thread that finishes the record, and
//! only then hands it to the channel. The proxy finishes a record before it forwards the response's last
//! frame, so by the time a client has the whole answer, the record is in the kernel's page
//! cache, which outlives the process.
//!
//! **Acknowledgement.** Each appended record carries a [`Ticket`] for its segment through the
//! channel. The worker releases the tickets of a batch once the batch is committed to the
//! store, written to the spool (which is fsynced), or counted as dropped. A segment that is
//! full (sealed) and has no ticket out is deleted. What a crash leaves is read back at the next
//! start ([`Journal::open`]), written through the store's keys ([`BatchWriter::stored`]
//! filters out what the store already holds), and only then deleted: a crash during that
//! replay leaves the segments for the next start.
//!
//! **No fsync.** The journal never syncs: a write to the page cache survives the death of the
//! process, which is what it is for, and costs a few microseconds. A power loss or a kernel
//! crash can still lose what the kernel had not yet written back (by default up to about 30 s
//! of records, `vm.dirty_expire_centisecs`), plus, as always, the store's own unsynced state.
//!
//! **Bounded.** The live segments never pass `max_bytes`; past it a record is not journaled
//! (it still goes to the channel, with today's pre-journal guarantee) and is counted in
//! `tally_journal_refused_total{reason="full"}`.
//!
//! Each segment is `TJOURN1\n`, then frames of payload length (u32 LE), CRC32 (u32 LE) and the
//! record as JSON, then zeros: a segment's space is allocated when it is begun (`fallocate`),
//! and frames are written in place (`pwrite`), so an append neither grows the file nor, on
//! ext4, dirties its inode for the size, which is what an appending `write` costs most of
//! under load (BENCHMARKS.md, "Many connections, and the crash journal"). A zero length ends the frames; a torn or
//! corrupt frame ends the reading of its segment, and is counted.
//!
//! [`BatchWriter::stored`]: crate::BatchWriter::stored

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::metrics::{DropLabels, IngestMetrics};
use crate::record::Record;

const MAGIC: &[u8] = b"TJOURN1\n";
const FRAME_HEADER: usize = 8;

/// Default bound on the journal's disk use: 256 MiB.
pub const DEFAULT_MAX_BYTES: u64 = 256 * 1024 * 1024;

/// Size at which the active segment is sealed and a new one begun. Small enough that a
/// segment is soon wholly acknowledged and deleted; large enough that opening files is rare.
const SEGMENT_BYTES: u64 = 4 * 1024 * 1024;

/// The journal could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("journal at {path}: {source}")]
pub struct JournalError {
    path: PathBuf,
    source: std::io::Error,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> JournalError + '_ {
    move |source| JournalError {
        path: path.to_owned(),
        source,
    }
}

/// A record's claim on its segment: the segment stays on disk until every ticket is released.
#[derive(Debug)]
#[must_use = "a ticket not released keeps its segment on disk until the next start"]
pub struct Ticket {
    segment: u64,
}

/// The journal. Cheap to clone; every clone appends to the same segments.
#[derive(Clone)]
pub struct Journal {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal")
            .field("dir", &self.shared.dir)
            .finish_non_exhaustive()
    }
}

/// Active segments, one per lane. A thread always appends in its own lane, so the event
/// loops never wait for each other's writes: with one shared segment, a loop preempted while
/// holding its lock made the other wait (36 µs at p99, measured in the binary under load).
const LANES: usize = 8;

/// This thread's lane.
fn lane() -> usize {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    thread_local! {
        static LANE: usize = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % LANES;
    }
    LANE.with(|l| *l)
}

struct Shared {
    dir: PathBuf,
    max_bytes: u64,
    metrics: IngestMetrics,
    lanes: [Mutex<Option<Active>>; LANES],
    /// Every segment's bookkeeping. Taken by appends only to begin or seal a segment.
    state: Mutex<State>,
    _lock: fs::File,
}

#[derive(Default)]
struct State {
    segments: BTreeMap<u64, Seg>,
    next_id: u64,
    bytes: u64,
}

impl State {
    /// Takes a segment off the books; deleting its file is the caller's, outside the lock.
    fn remove(&mut self, id: u64) -> Option<PathBuf> {
        let seg = self.segments.remove(&id)?;
        self.bytes -= seg.bytes;
        Some(seg.path)
    }
}

struct Active {
    id: u64,
    /// When it was begun: an old one is sealed by [`Journal::seal_older_than`].
    begun: std::time::Instant,
    file: fs::File,
    /// Where the next frame goes.
    offset: u64,
    /// The space allocated.
    size: u64,
    /// Frames written, each a ticket out; added to the segment's count when it is sealed.
    appended: i64,
}

struct Seg {
    path: PathBuf,
    bytes: u64,
    /// Tickets out: frames appended (counted in when sealed) minus tickets released. Negative
    /// while the segment is still active and releases overtake the seal.
    outstanding: i64,
    sealed: bool,
}

/// What an earlier run left in the journal: records to write before anything else, and the
/// tickets that keep their segments until they are written.
#[derive(Debug, Default)]
pub struct Recovered {
    /// One per request id (a later entry, an estimate's final record, replaces an earlier).
    pub records: Vec<Record>,
    /// Released once `records` are safe (stored, spooled or counted as dropped).
    pub tickets: Vec<Ticket>,
}

fn segment_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:020}.log"))
}

impl Journal {
    /// Opens (creating) the journal in `dir`, taking its lock, and reads what an earlier run
    /// left there.
    pub fn open(
        dir: impl Into<PathBuf>,
        max_bytes: u64,
        metrics: IngestMetrics,
    ) -> Result<(Self, Recovered), JournalError> {
        let dir = dir.into();
        fs::create_dir_all(&dir).map_err(io(&dir))?;
        let lock = crate::spool::lock(&dir).map_err(|e| JournalError {
            path: dir.clone(),
            source: std::io::Error::other(e),
        })?;
        let mut ids = Vec::new();
        for entry in fs::read_dir(&dir).map_err(io(&dir))? {
            let entry = entry.map_err(io(&dir))?;
            let name = entry.file_name();
            if let Some(id) = name
                .to_str()
                .and_then(|n| n.strip_suffix(".log"))
                .and_then(|n| n.parse::<u64>().ok())
            {
                ids.push(id);
            }
        }
        ids.sort_unstable();
        let mut state = State::default();
        let mut recovered = Recovered::default();
        let mut by_id: HashMap<uuid::Uuid, usize> = HashMap::new();
        for id in ids {
            let path = segment_path(&dir, id);
            let data = fs::read(&path).map_err(io(&path))?;
            let (records, corrupt) = read_frames(&data);
            if corrupt {
                metrics.journal_corrupt.inc();
                tracing::error!(path = %path.display(), "journal segment ends in a torn or corrupt frame; read up to it");
            }
            for r in records {
                match by_id.get(&r.request_id) {
                    Some(&i) => recovered.records[i] = r,
                    None => {
                        by_id.insert(r.request_id, recovered.records.len());
                        recovered.records.push(r);
                    }
                }
            }
            state.bytes += data.len() as u64;
            state.segments.insert(
                id,
                Seg {
                    path,
                    bytes: data.len() as u64,
                    outstanding: 1,
                    sealed: true,
                },
            );
            recovered.tickets.push(Ticket { segment: id });
            state.next_id = id + 1;
        }
        let journal = Self {
            shared: Arc::new(Shared {
                dir,
                max_bytes,
                metrics,
                lanes: std::array::from_fn(|_| Mutex::new(None)),
                state: Mutex::new(state),
                _lock: lock,
            }),
        };
        journal.update_gauges(&journal.lock());
        Ok((journal, recovered))
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock leaves the state as consistent as the last write.
        self.shared
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn lane(&self, i: usize) -> std::sync::MutexGuard<'_, Option<Active>> {
        self.shared.lanes[i]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Appends `record`, or returns `None` (and counts why) when it cannot: the caller sends
    /// the record on regardless.
    pub fn append(&self, record: &Record) -> Option<Ticket> {
        // Encoded before taking the lock: the lock covers one write.
        let mut frame = Vec::with_capacity(FRAME_HEADER + 1024);
        frame.extend_from_slice(&[0; FRAME_HEADER]);
        if serde_json::to_writer(&mut frame, record).is_err() {
            self.refused("encode");
            return None;
        }
        let len = (frame.len() - FRAME_HEADER) as u32;
        let crc = crc32fast::hash(&frame[FRAME_HEADER..]);
        frame[..4].copy_from_slice(&len.to_le_bytes());
        frame[4..8].copy_from_slice(&crc.to_le_bytes());

        let mut lane = self.lane(lane());
        let fits = |a: &Active| a.offset + frame.len() as u64 <= a.size;
        if lane.as_ref().is_some_and(|a| !fits(a)) {
            self.seal(lane.take());
        }
        if lane.is_none() {
            let size = SEGMENT_BYTES.max((MAGIC.len() + frame.len()) as u64);
            match self.begin_segment(size) {
                Ok(Some(a)) => *lane = Some(a),
                Ok(None) => {
                    drop(lane);
                    self.refused("full");
                    return None;
                }
                Err(e) => {
                    drop(lane);
                    tracing::error!(error = %e, "cannot begin a journal segment");
                    self.refused("io");
                    return None;
                }
            }
        }
        let active = lane.as_mut()?;
        let id = active.id;
        if let Err(e) = write_at(&active.file, &frame, active.offset) {
            // A short write leaves a torn frame: seal the segment so nothing lands after it,
            // and the next append begins a fresh one.
            self.seal(lane.take());
            drop(lane);
            tracing::error!(error = %e, segment = id, "journal write failed");
            self.refused("io");
            return None;
        }
        active.offset += frame.len() as u64;
        active.appended += 1;
        Some(Ticket { segment: id })
    }

    /// Seals an active segment: nothing more is written to it, and it goes once its last
    /// ticket does (at once if none is out).
    fn seal(&self, active: Option<Active>) {
        let Some(a) = active else {
            return;
        };
        let mut state = self.lock();
        let empty = state.segments.get_mut(&a.id).is_some_and(|s| {
            s.sealed = true;
            s.outstanding += a.appended;
            s.outstanding <= 0
        });
        let gone = empty.then(|| state.remove(a.id)).flatten();
        self.update_gauges(&state);
        drop(state);
        if let Some(path) = gone {
            let _ = fs::remove_file(path);
        }
    }

    /// Creates a segment with `size` bytes allocated and its magic written; `None` when the
    /// bound has no room for it.
    fn begin_segment(&self, size: u64) -> std::io::Result<Option<Active>> {
        let mut state = self.lock();
        if state.bytes + size > self.shared.max_bytes {
            return Ok(None);
        }
        let id = state.next_id;
        let path = segment_path(&self.shared.dir, id);
        let file = fs::OpenOptions::new()
            .create_new(true)
            .read(true)
            .write(true)
            .open(&path)?;
        let made = allocate(&file, size).and_then(|()| write_at(&file, MAGIC, 0));
        if let Err(e) = made {
            let _ = fs::remove_file(&path);
            return Err(e);
        }
        state.next_id += 1;
        state.bytes += size;
        state.segments.insert(
            id,
            Seg {
                path,
                bytes: size,
                outstanding: 0,
                sealed: false,
            },
        );
        self.update_gauges(&state);
        Ok(Some(Active {
            id,
            begun: std::time::Instant::now(),
            file,
            offset: MAGIC.len() as u64,
            size,
            appended: 0,
        }))
    }

    /// Gives back tickets whose records are safe. Sealed segments left with none are deleted.
    pub fn release(&self, tickets: impl IntoIterator<Item = Ticket>) {
        let mut done = Vec::new();
        {
            let mut state = self.lock();
            for t in tickets {
                let Some(seg) = state.segments.get_mut(&t.segment) else {
                    continue;
                };
                seg.outstanding -= 1;
                if seg.outstanding <= 0 && seg.sealed {
                    done.extend(state.remove(t.segment));
                }
            }
            self.update_gauges(&state);
        }
        // Unlinked outside the lock: the event loops take it to begin a segment.
        for path in done {
            if let Err(e) = fs::remove_file(&path) {
                tracing::warn!(path = %path.display(), error = %e, "cannot delete a journal segment");
            }
        }
    }

    /// Seals the active segments begun more than `age` ago, so that a record is on disk only
    /// until its batch is stored and not until its segment fills, which at a low rate can take
    /// hours: the journal holds records before redaction (`tally-privacy` runs on the ingest
    /// thread). Called by the ingest worker on its ticks; a lane busy with an append is left
    /// for the next tick rather than waited for, so an event loop never waits on this.
    pub fn seal_older_than(&self, age: std::time::Duration) {
        for lane in &self.shared.lanes {
            let Ok(mut lane) = lane.try_lock() else {
                continue;
            };
            if lane.as_ref().is_some_and(|a| a.begun.elapsed() >= age) {
                let active = lane.take();
                drop(lane);
                self.seal(active);
            }
        }
    }

    /// Seals every active segment. A sealed segment goes as soon as it has no ticket out (at
    /// its seal or its last release), so after a clean shutdown, when every record is stored,
    /// nothing is left.
    pub fn close(&self) {
        for i in 0..LANES {
            let active = self.lane(i).take();
            self.seal(active);
        }
    }

    fn refused(&self, reason: &'static str) {
        self.shared
            .metrics
            .journal_refused
            .get_or_create(&DropLabels { reason })
            .inc();
    }

    fn update_gauges(&self, state: &State) {
        let m = &self.shared.metrics;
        m.journal_bytes.set(state.bytes as i64);
        m.journal_segments.set(state.segments.len() as i64);
    }
}

fn write_at(file: &fs::File, buf: &[u8], offset: u64) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    file.write_all_at(buf, offset)
}

/// Allocates the segment's blocks up front: a later write into them cannot fail for space, and
/// does not change the file's size.
fn allocate(file: &fs::File, size: u64) -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        match rustix::fs::fallocate(file, rustix::fs::FallocateFlags::empty(), 0, size) {
            // A file system without it (some network and FUSE ones): a sparse file, whose
            // blocks are found at write time.
            Err(rustix::io::Errno::OPNOTSUPP) => file.set_len(size),
            other => other.map_err(std::io::Error::from),
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        file.set_len(size)
    }
}

/// The records of one segment, and whether it ended in a torn or corrupt frame.
fn read_frames(data: &[u8]) -> (Vec<Record>, bool) {
    let Some(mut rest) = data.strip_prefix(MAGIC) else {
        return (Vec::new(), !data.is_empty());
    };
    let mut out = Vec::new();
    while !rest.is_empty() {
        let Some((header, body)) = rest.split_at_checked(FRAME_HEADER) else {
            return (out, true);
        };
        let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(header[4..].try_into().expect("4 bytes"));
        if len == 0 {
            // The allocated space after the last frame.
            return (
                out,
                header != [0; FRAME_HEADER] || body.iter().any(|&b| b != 0),
            );
        }
        let Some((payload, next)) = body.split_at_checked(len) else {
            return (out, true);
        };
        if crc32fast::hash(payload) != crc {
            return (out, true);
        }
        match serde_json::from_slice::<Record>(payload) {
            Ok(r) => out.push(r),
            Err(_) => return (out, true),
        }
        rest = next;
    }
    (out, false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::record;

    fn files(dir: &Path) -> usize {
        fs::read_dir(dir)
            .expect("dir")
            .filter(|e| {
                e.as_ref()
                    .is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".log"))
            })
            .count()
    }

    #[test]
    fn what_is_not_released_comes_back_once_per_request() {
        let dir = tempfile::tempdir().expect("tempdir");
        let m = IngestMetrics::default();
        let (j, rec) = Journal::open(dir.path(), DEFAULT_MAX_BYTES, m.clone()).expect("open");
        assert!(rec.records.is_empty());
        let a = record(1);
        let mut a2 = a.clone();
        a2.cost_usd = Some(9.0);
        let b = record(2);
        let ta = j.append(&a).expect("a");
        let _ta2 = j.append(&a2).expect("a again");
        let tb = j.append(&b).expect("b");
        j.release([ta]);
        drop((j, tb));
        let (_j, rec) = Journal::open(dir.path(), DEFAULT_MAX_BYTES, m).expect("reopen");
        // Released or not, a segment's records come back while it is on disk; the later
        // entry for a request replaces the earlier.
        assert_eq!(rec.records, vec![a2, b]);
    }

    #[test]
    fn a_sealed_segment_goes_when_its_last_ticket_does() {
        let dir = tempfile::tempdir().expect("tempdir");
        let m = IngestMetrics::default();
        let (j, _) = Journal::open(dir.path(), DEFAULT_MAX_BYTES, m.clone()).expect("open");
        let mut r = record(1);
        r.request_body = Some("x".repeat(1024 * 1024));
        let tickets: Vec<Ticket> = (0..5).map(|_| j.append(&r).expect("append")).collect();
        // 5 MiB: the first segment sealed at 4 MiB, a second one active.
        assert_eq!(files(dir.path()), 2);
        j.release(tickets);
        assert_eq!(
            files(dir.path()),
            1,
            "the sealed one is deleted, the active one stays"
        );
        j.close();
        assert_eq!(files(dir.path()), 0);
        assert_eq!(m.journal_bytes.get(), 0);
    }

    #[test]
    fn an_old_active_segment_is_sealed_and_goes_with_its_last_ticket() {
        let dir = tempfile::tempdir().expect("tempdir");
        let m = IngestMetrics::default();
        let (j, _) = Journal::open(dir.path(), DEFAULT_MAX_BYTES, m.clone()).expect("open");
        let t = j.append(&record(1)).expect("append");
        j.seal_older_than(std::time::Duration::from_secs(3600));
        assert_eq!(files(dir.path()), 1, "young: still active");
        j.seal_older_than(std::time::Duration::ZERO);
        assert_eq!(files(dir.path()), 1, "sealed, a ticket still out");
        j.release([t]);
        assert_eq!(files(dir.path()), 0);
        // The next append begins a fresh segment.
        let t = j.append(&record(2)).expect("append");
        assert_eq!(files(dir.path()), 1);
        j.seal_older_than(std::time::Duration::ZERO);
        j.release([t]);
        assert_eq!((files(dir.path()), m.journal_bytes.get()), (0, 0));
    }

    #[test]
    fn the_bound_refuses_and_counts() {
        let dir = tempfile::tempdir().expect("tempdir");
        let m = IngestMetrics::default();
        // Room for one segment and a half: the second cannot be begun.
        let (j, _) = Journal::open(dir.path(), SEGMENT_BYTES * 3 / 2, m.clone()).expect("open");
        let mut r = record(1);
        r.request_body = Some("x".repeat(1024 * 1024));
        let tickets: Vec<Ticket> = (0..3).map(|_| j.append(&r).expect("fits")).collect();
        assert!(j.append(&r).is_none(), "past the bound");
        let full = |m: &IngestMetrics| {
            m.journal_refused
                .get_or_create(&DropLabels { reason: "full" })
                .get()
        };
        assert_eq!(full(&m), 1);
        // Once the first segment's records are stored, it goes, and there is room again.
        j.release(tickets);
        assert_eq!(m.journal_bytes.get(), 0);
        let t = j.append(&r).expect("room again");
        assert_eq!(full(&m), 1);
        j.release([t]);
    }

    #[test]
    fn a_torn_tail_is_read_up_to_and_counted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let m = IngestMetrics::default();
        let (j, _) = Journal::open(dir.path(), DEFAULT_MAX_BYTES, m.clone()).expect("open");
        let (one, two) = (record(1), record(2));
        let _t1 = j.append(&one).expect("1");
        let _t2 = j.append(&two).expect("2");
        drop(j);
        // The second frame torn: a byte of its payload never written.
        let path = segment_path(dir.path(), 0);
        let mut data = fs::read(&path).expect("read");
        let first = u32::from_le_bytes(data[8..12].try_into().expect("len")) as usize;
        data[MAGIC.len() + FRAME_HEADER + first + FRAME_HEADER + 5] ^= 0xff;
        fs::write(&path, data).expect("write");
        let (_j, rec) = Journal::open(dir.path(), DEFAULT_MAX_BYTES, m.clone()).expect("reopen");
        assert_eq!(rec.records, vec![one]);
        assert_eq!(m.journal_corrupt.get(), 1);
    }

    #[test]
    fn threads_append_in_their_own_lanes_and_every_segment_goes_in_the_end() {
        let dir = tempfile::tempdir().expect("tempdir");
        let m = IngestMetrics::default();
        let (j, _) = Journal::open(dir.path(), DEFAULT_MAX_BYTES, m.clone()).expect("open");
        let mut r = record(1);
        r.request_body = Some("y".repeat(64 * 1024));
        let tickets = std::sync::Mutex::new(Vec::new());
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..200 {
                        let t = j.append(&r).expect("append");
                        tickets.lock().expect("lock").push(t);
                    }
                });
            }
        });
        // 800 frames of 64 KiB: several sealed segments per lane, none deletable yet.
        assert!(files(dir.path()) >= 8, "{}", files(dir.path()));
        let (one, two): (Vec<_>, Vec<_>) = tickets
            .into_inner()
            .expect("lock")
            .into_iter()
            .enumerate()
            .partition(|(i, _)| i % 2 == 0);
        j.release(one.into_iter().map(|(_, t)| t));
        assert!(files(dir.path()) > 0);
        j.release(two.into_iter().map(|(_, t)| t));
        j.close();
        assert_eq!(files(dir.path()), 0);
        assert_eq!(m.journal_bytes.get(), 0);
        assert_eq!(m.journal_segments.get(), 0);
    }

    #[test]
    fn one_process_per_journal() {
        let dir = tempfile::tempdir().expect("tempdir");
        let m = IngestMetrics::default();
        let _held = Journal::open(dir.path(), DEFAULT_MAX_BYTES, m.clone()).expect("open");
        assert!(Journal::open(dir.path(), DEFAULT_MAX_BYTES, m).is_err());
    }
}
