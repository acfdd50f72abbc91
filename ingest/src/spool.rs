//! The on-disk spool: batches the store could not take, kept until it can.
//!
//! One append-only segment file per batch, named by an increasing sequence number so replay
//! order is write order (and by its row count, so a segment that disappears is still counted),
//! and written to a temporary name then renamed so a crash never leaves a half-written segment
//! under a real name. Each segment is `TSPOOL1\n`, the payload length (u64 LE), its CRC32
//! (u32 LE), and the payload (the batch as JSON). A segment that fails its checksum or does not
//! parse is moved to `quarantine/` and counted; it never stops the replay.
//!
//! **One process per spool directory.** `Spool::open` takes an exclusive lock on `LOCK` in the
//! directory and refuses a second process with [`SpoolError::Locked`]: two processes numbering
//! segments from their own counters would overwrite each other's batches. Replicas on one
//! volume each need their own `store.spool_dir`. The lock is an OS file lock, released when the
//! process exits however it exits.
//!
//! The spool has a byte limit. At the limit, a new batch is refused (its records are counted as
//! dropped with reason `spool_full` and an error is logged) rather than deleting older data:
//! the oldest records are as valuable as the newest, and an operator watching
//! `tally_spool_bytes` can act before the limit.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::record::Record;

const MAGIC: &[u8] = b"TSPOOL1\n";
const HEADER: usize = 8 + 8 + 4;

/// Default spool size limit: 1 GiB.
pub const DEFAULT_MAX_BYTES: u64 = 1024 * 1024 * 1024;

/// A spool operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SpoolError {
    /// The spool directory could not be read or written.
    #[error("spool I/O at {path}: {source}")]
    Io {
        /// File or directory concerned.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Accepting the batch would pass the size limit.
    #[error("spool is full ({used} of {limit} bytes used; batch needs {needed})")]
    Full {
        /// Bytes in use.
        used: u64,
        /// The limit.
        limit: u64,
        /// Bytes the batch needs.
        needed: u64,
    },
    /// A segment failed its checksum or did not parse.
    #[error("corrupt spool segment {0}")]
    Corrupt(PathBuf),
    /// A segment the spool knew of is gone (deleted, or lost with its volume).
    #[error("spool segment {0} has disappeared")]
    Missing(PathBuf),
    /// Another process holds the spool directory.
    #[error(
        "spool directory {0} is in use by another Tally process; two processes cannot share one \
         (give each replica its own store.spool_dir)"
    )]
    Locked(PathBuf),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io {
        path: path.to_owned(),
        source,
    }
}

/// A spooled batch waiting for the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    seq: u64,
    path: PathBuf,
    bytes: u64,
    /// Records in it; `None` for segments named before row counts were (`<seq>.seg`).
    pub rows: Option<u64>,
}

impl Segment {
    /// Its file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The spool directory.
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    max_bytes: u64,
    segments: Vec<Segment>,
    next_seq: u64,
    /// Held for the spool's lifetime; see the module docs.
    _lock: fs::File,
}

/// `<seq>.seg` or `<seq>-<rows>.seg`.
fn parse_name(name: &str) -> Option<(u64, Option<u64>)> {
    let stem = name.strip_suffix(".seg")?;
    match stem.split_once('-') {
        Some((seq, rows)) => Some((seq.parse().ok()?, Some(rows.parse().ok()?))),
        None => Some((stem.parse().ok()?, None)),
    }
}

/// Takes the directory's lock, or says who holds it.
pub(crate) fn lock(dir: &Path) -> Result<fs::File, SpoolError> {
    let path = dir.join("LOCK");
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io(&path))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(fs::TryLockError::WouldBlock) => Err(SpoolError::Locked(dir.to_owned())),
        Err(fs::TryLockError::Error(e)) => Err(SpoolError::Io { path, source: e }),
    }
}

impl Spool {
    /// Opens (creating) the spool at `dir`, finding the segments a previous run left.
    pub fn open(dir: impl Into<PathBuf>, max_bytes: u64) -> Result<Self, SpoolError> {
        let dir = dir.into();
        fs::create_dir_all(&dir).map_err(io(&dir))?;
        let lock = lock(&dir)?;
        let mut segments = Vec::new();
        for entry in fs::read_dir(&dir).map_err(io(&dir))? {
            let entry = entry.map_err(io(&dir))?;
            let path = entry.path();
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if let Some((seq, rows)) = parse_name(&name) {
                let bytes = entry.metadata().map_err(io(&path))?.len();
                segments.push(Segment {
                    seq,
                    path,
                    bytes,
                    rows,
                });
            } else if name.ends_with(".tmp") {
                // A write that never completed: its batch was not acknowledged as spooled.
                let _ = fs::remove_file(&path);
            }
        }
        segments.sort_by_key(|s| s.seq);
        let next_seq = segments.last().map_or(0, |s| s.seq + 1);
        Ok(Self {
            dir,
            max_bytes,
            segments,
            next_seq,
            _lock: lock,
        })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Bytes on disk.
    pub fn bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.bytes).sum()
    }

    /// Segments waiting.
    pub fn len(&self) -> usize {
        self.segments.len()
    }

    /// True when nothing waits.
    pub fn is_empty(&self) -> bool {
        self.segments.is_empty()
    }

    /// Writes `batch` as a new segment (durably: written, synced, renamed).
    pub fn append(&mut self, batch: &[Record]) -> Result<(), SpoolError> {
        let payload = serde_json::to_vec(batch).map_err(|e| SpoolError::Io {
            path: self.dir.clone(),
            source: std::io::Error::other(e),
        })?;
        let needed = (HEADER + payload.len()) as u64;
        let used = self.bytes();
        if used + needed > self.max_bytes {
            return Err(SpoolError::Full {
                used,
                limit: self.max_bytes,
                needed,
            });
        }
        let seq = self.next_seq;
        let rows = batch.len() as u64;
        let path = self.dir.join(format!("{seq:020}-{rows}.seg"));
        write_segment(&self.dir.join(format!("{seq:020}.tmp")), &path, &payload)?;
        self.next_seq += 1;
        self.segments.push(Segment {
            seq,
            path,
            bytes: needed,
            rows: Some(rows),
        });
        Ok(())
    }

    /// The oldest segment, if any.
    pub fn oldest(&self) -> Option<Segment> {
        self.segments.first().cloned()
    }

    /// The segment after `segment`, in replay order.
    pub fn after(&self, segment: &Segment) -> Option<Segment> {
        self.segments.iter().find(|s| s.seq > segment.seq).cloned()
    }

    /// Reads and verifies a segment.
    pub fn read(&self, segment: &Segment) -> Result<Vec<Record>, SpoolError> {
        read_segment(&segment.path, true)
    }

    /// Forgets a segment that is gone from disk, or that cannot be moved aside: the replay
    /// must move on rather than try it again forever.
    pub fn forget(&mut self, segment: &Segment) {
        self.segments.retain(|s| s.seq != segment.seq);
    }

    /// Deletes a segment whose batch the store has acknowledged.
    pub fn remove(&mut self, segment: &Segment) -> Result<(), SpoolError> {
        fs::remove_file(&segment.path).map_err(io(&segment.path))?;
        self.segments.retain(|s| s.seq != segment.seq);
        Ok(())
    }

    /// Moves quarantined segments back into the spool, oldest first, to be replayed like any
    /// other (the next run replays them; the spool must not be in use, which holding `self`
    /// proves). With `ignore_checksum`, a segment whose checksum fails but whose batch still
    /// parses (a flipped bit inside a string) is rewritten with a fresh checksum; one that does
    /// not parse stays in quarantine. Returns the segments and records requeued, and the names
    /// of those left.
    pub fn requeue(&mut self, ignore_checksum: bool) -> Result<Requeued, SpoolError> {
        let qdir = self.dir.join("quarantine");
        let mut out = Requeued::default();
        let Ok(entries) = fs::read_dir(&qdir) else {
            return Ok(out);
        };
        let mut paths: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "seg"))
            .collect();
        paths.sort();
        for path in paths {
            let batch = match read_segment(&path, !ignore_checksum) {
                Ok(b) => b,
                Err(_) => {
                    out.left.push(path.display().to_string());
                    continue;
                }
            };
            let payload = serde_json::to_vec(&batch).map_err(|e| SpoolError::Io {
                path: path.clone(),
                source: std::io::Error::other(e),
            })?;
            let seq = self.next_seq;
            let rows = batch.len() as u64;
            let target = self.dir.join(format!("{seq:020}-{rows}.seg"));
            write_segment(&self.dir.join(format!("{seq:020}.tmp")), &target, &payload)?;
            fs::remove_file(&path).map_err(io(&path))?;
            self.next_seq += 1;
            self.segments.push(Segment {
                seq,
                path: target,
                bytes: (HEADER + payload.len()) as u64,
                rows: Some(rows),
            });
            out.segments += 1;
            out.records += rows;
        }
        Ok(out)
    }

    /// Removes the records `erased` picks from every segment, waiting and quarantined
    /// (`tally purge`); returns how many. A segment is rewritten without them in place (same
    /// sequence number, so the replay order holds: written to a temporary name, synced,
    /// renamed), or deleted when nothing is left. A quarantined segment that does not parse
    /// cannot be searched and is left, named in the log.
    pub fn erase(&mut self, erased: impl Fn(&Record) -> bool) -> Result<u64, SpoolError> {
        let mut removed = 0;
        let mut kept = Vec::with_capacity(self.segments.len());
        for segment in std::mem::take(&mut self.segments) {
            let batch = match read_segment(&segment.path, true) {
                Ok(b) => b,
                // Unreadable: the replay quarantines it; nothing here can search it.
                Err(_) => {
                    kept.push(segment);
                    continue;
                }
            };
            let before = batch.len();
            let rest: Vec<Record> = batch.into_iter().filter(|r| !erased(r)).collect();
            if rest.len() == before {
                kept.push(segment);
                continue;
            }
            removed += (before - rest.len()) as u64;
            if rest.is_empty() {
                fs::remove_file(&segment.path).map_err(io(&segment.path))?;
                continue;
            }
            let rows = rest.len() as u64;
            let path = self.dir.join(format!("{:020}-{rows}.seg", segment.seq));
            let payload = encode(&rest, &self.dir)?;
            write_segment(
                &self.dir.join(format!("{:020}.tmp", segment.seq)),
                &path,
                &payload,
            )?;
            if path != segment.path {
                fs::remove_file(&segment.path).map_err(io(&segment.path))?;
            }
            kept.push(Segment {
                seq: segment.seq,
                path,
                bytes: (HEADER + payload.len()) as u64,
                rows: Some(rows),
            });
        }
        self.segments = kept;
        let qdir = self.dir.join("quarantine");
        if let Ok(entries) = fs::read_dir(&qdir) {
            for path in entries.filter_map(Result::ok).map(|e| e.path()) {
                if path.extension().is_none_or(|e| e != "seg") {
                    continue;
                }
                let Ok(batch) = read_segment(&path, false) else {
                    tracing::warn!(segment = %path.display(), "a quarantined spool segment does not parse, so a purge could not search it");
                    continue;
                };
                let before = batch.len();
                let rest: Vec<Record> = batch.into_iter().filter(|r| !erased(r)).collect();
                if rest.len() == before {
                    continue;
                }
                removed += (before - rest.len()) as u64;
                if rest.is_empty() {
                    fs::remove_file(&path).map_err(io(&path))?;
                } else {
                    let payload = encode(&rest, &self.dir)?;
                    write_segment(&path.with_extension("tmp"), &path, &payload)?;
                }
            }
        }
        Ok(removed)
    }

    /// Segments waiting in `quarantine/`.
    pub fn quarantined(&self) -> usize {
        fs::read_dir(self.dir.join("quarantine")).map_or(0, |d| {
            d.filter_map(Result::ok)
                .filter(|e| e.path().extension().is_some_and(|x| x == "seg"))
                .count()
        })
    }

    /// Moves a corrupt segment aside to `quarantine/`, where an operator can inspect it.
    pub fn quarantine(&mut self, segment: &Segment) -> Result<PathBuf, SpoolError> {
        let qdir = self.dir.join("quarantine");
        fs::create_dir_all(&qdir).map_err(io(&qdir))?;
        let target = qdir.join(
            segment
                .path
                .file_name()
                .map(|n| n.to_owned())
                .unwrap_or_default(),
        );
        fs::rename(&segment.path, &target).map_err(io(&target))?;
        self.segments.retain(|s| s.seq != segment.seq);
        Ok(target)
    }
}

/// What [`Spool::requeue`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Requeued {
    /// Segments moved back into the spool.
    pub segments: u64,
    /// Records in them.
    pub records: u64,
    /// Quarantined segments that still cannot be read, by path.
    pub left: Vec<String>,
}

fn encode(batch: &[Record], dir: &Path) -> Result<Vec<u8>, SpoolError> {
    serde_json::to_vec(batch).map_err(|e| SpoolError::Io {
        path: dir.to_owned(),
        source: std::io::Error::other(e),
    })
}

/// Writes a segment durably: to `tmp`, synced, then renamed to `path`.
fn write_segment(tmp: &Path, path: &Path, payload: &[u8]) -> Result<(), SpoolError> {
    {
        let mut f = fs::File::create(tmp).map_err(io(tmp))?;
        f.write_all(MAGIC).map_err(io(tmp))?;
        f.write_all(&(payload.len() as u64).to_le_bytes())
            .map_err(io(tmp))?;
        f.write_all(&crc32fast::hash(payload).to_le_bytes())
            .map_err(io(tmp))?;
        f.write_all(payload).map_err(io(tmp))?;
        f.sync_all().map_err(io(tmp))?;
    }
    fs::rename(tmp, path).map_err(io(path))
}

/// Reads a segment; a missing file is [`SpoolError::Missing`], a bad checksum (when checked)
/// or payload [`SpoolError::Corrupt`].
fn read_segment(path: &Path, check_crc: bool) -> Result<Vec<Record>, SpoolError> {
    let data = fs::read(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => SpoolError::Missing(path.to_owned()),
        _ => SpoolError::Io {
            path: path.to_owned(),
            source: e,
        },
    })?;
    let corrupt = || SpoolError::Corrupt(path.to_owned());
    if data.len() < HEADER || &data[..8] != MAGIC {
        return Err(corrupt());
    }
    let len = u64::from_le_bytes(data[8..16].try_into().map_err(|_| corrupt())?) as usize;
    let crc = u32::from_le_bytes(data[16..20].try_into().map_err(|_| corrupt())?);
    let payload = &data[HEADER..];
    if payload.len() != len || (check_crc && crc32fast::hash(payload) != crc) {
        return Err(corrupt());
    }
    serde_json::from_slice(payload).map_err(|_| corrupt())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::record;

    #[test]
    fn a_second_process_is_refused_the_directory() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = Spool::open(dir.path(), DEFAULT_MAX_BYTES).expect("open");
        // An open file description of its own, as another process would have.
        let err = Spool::open(dir.path(), DEFAULT_MAX_BYTES).expect_err("locked");
        assert!(matches!(err, SpoolError::Locked(_)), "{err}");
        assert!(err.to_string().contains("own store.spool_dir"), "{err}");
        drop(first);
        Spool::open(dir.path(), DEFAULT_MAX_BYTES).expect("free again once the holder is gone");
    }

    #[test]
    fn a_vanished_segment_is_missing_not_corrupt_and_can_be_forgotten() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut s = Spool::open(dir.path(), DEFAULT_MAX_BYTES).expect("open");
        s.append(&[record(1), record(2)]).expect("append");
        let seg = s.oldest().expect("segment");
        assert_eq!(seg.rows, Some(2));
        std::fs::remove_file(&seg.path).expect("delete it");
        assert!(matches!(s.read(&seg), Err(SpoolError::Missing(_))));
        s.forget(&seg);
        assert!(s.is_empty());
    }

    #[test]
    fn quarantined_segments_can_be_requeued() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut s = Spool::open(dir.path(), DEFAULT_MAX_BYTES).expect("open");
        let good = vec![record(1)];
        s.append(&good).expect("append");
        s.append(&[record(2), record(3)]).expect("append");
        let (a, b) = (s.segments[0].clone(), s.segments[1].clone());
        s.quarantine(&a).expect("quarantine a");
        // b: a flipped bit inside a string keeps the JSON valid but fails the checksum.
        let mut bytes = std::fs::read(&b.path).expect("read");
        let i = bytes.len() - 30;
        bytes[i] ^= 0x01;
        std::fs::write(&b.path, bytes).expect("corrupt");
        assert!(matches!(s.read(&b), Err(SpoolError::Corrupt(_))));
        s.quarantine(&b).expect("quarantine b");
        assert_eq!((s.len(), s.quarantined()), (0, 2));
        let r = s.requeue(false).expect("requeue");
        assert_eq!((r.segments, r.records, r.left.len()), (1, 1, 1));
        assert_eq!(s.read(&s.oldest().expect("back")).expect("readable"), good);
        let r = s.requeue(true).expect("requeue ignoring the checksum");
        assert_eq!((r.segments, r.records, r.left.len()), (1, 2, 0));
        assert_eq!((s.len(), s.quarantined()), (2, 0));
        drop(s);
        let s = Spool::open(dir.path(), DEFAULT_MAX_BYTES).expect("reopen");
        assert_eq!(s.len(), 2, "requeued segments survive a restart");
    }

    #[test]
    fn segments_survive_reopen_in_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut s = Spool::open(dir.path(), DEFAULT_MAX_BYTES).expect("open");
        let a: Vec<Record> = (0..3).map(record).collect();
        let b: Vec<Record> = (3..5).map(record).collect();
        s.append(&a).expect("a");
        s.append(&b).expect("b");
        std::fs::write(dir.path().join("00000000000000000099.tmp"), b"half").expect("tmp");
        drop(s);
        let mut s = Spool::open(dir.path(), DEFAULT_MAX_BYTES).expect("reopen");
        assert_eq!(s.len(), 2);
        assert!(
            !dir.path().join("00000000000000000099.tmp").exists(),
            "partial write removed"
        );
        let first = s.oldest().expect("segment");
        assert_eq!(s.read(&first).expect("read"), a);
        s.remove(&first).expect("remove");
        let second = s.oldest().expect("segment");
        assert_eq!(s.read(&second).expect("read"), b);
        s.append(&a).expect("append after reopen");
        assert_eq!(s.len(), 2);
    }

    #[test]
    fn corrupt_segment_is_detected_and_quarantined() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut s = Spool::open(dir.path(), DEFAULT_MAX_BYTES).expect("open");
        s.append(&[record(1)]).expect("append");
        let seg = s.oldest().expect("segment");
        let mut bytes = std::fs::read(&seg.path).expect("read");
        let last = bytes.len() - 2;
        bytes[last] ^= 0xff;
        std::fs::write(&seg.path, bytes).expect("corrupt it");
        assert!(matches!(s.read(&seg), Err(SpoolError::Corrupt(_))));
        let moved = s.quarantine(&seg).expect("quarantine");
        assert!(moved.exists() && s.is_empty());
    }

    #[test]
    fn erase_removes_records_from_waiting_and_quarantined_segments_in_place() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut s = Spool::open(dir.path(), DEFAULT_MAX_BYTES).expect("open");
        let r: Vec<Record> = (0..9).map(record).collect();
        s.append(&r[1..4]).expect("a");
        s.append(&r[4..5]).expect("b: only erased records");
        s.append(&r[5..7]).expect("c: nothing erased");
        s.append(&r[7..9]).expect("d: quarantined");
        let d = s.segments[3].clone();
        s.quarantine(&d).expect("quarantine");
        let erased = |r: &Record| {
            ["user-2", "user-4", "user-8"].contains(&r.user_id.as_deref().unwrap_or(""))
        };
        assert_eq!(s.erase(erased).expect("erase"), 3);
        assert_eq!(s.len(), 2, "the segment left empty is deleted");
        drop(s);
        let mut s = Spool::open(dir.path(), DEFAULT_MAX_BYTES).expect("reopen");
        let first = s.oldest().expect("a");
        assert_eq!(first.rows, Some(2), "the name says the new row count");
        let a = s.read(&first).expect("a, with a fresh checksum");
        assert_eq!(a, vec![r[1].clone(), r[3].clone()]);
        let next = s.after(&first).expect("c");
        assert_eq!(s.read(&next).expect("c"), r[5..7]);
        assert_eq!(s.requeue(false).expect("requeue").records, 1);
        let last = s.after(&next).expect("d, requeued");
        assert_eq!(s.read(&last).expect("d"), r[7..8]);
    }

    #[test]
    fn full_spool_refuses_new_batches_and_keeps_old_ones() {
        let probe_dir = tempfile::tempdir().expect("tempdir");
        let mut probe = Spool::open(probe_dir.path(), DEFAULT_MAX_BYTES).expect("open");
        probe.append(&[record(1)]).expect("append");
        let one = probe.bytes();
        // Room for one single-record segment and a bit, not for a three-record one more.
        let dir = tempfile::tempdir().expect("tempdir");
        let mut s = Spool::open(dir.path(), one + one / 2).expect("open");
        s.append(&[record(1)]).expect("fits");
        let err = s
            .append(&[record(2), record(3), record(4)])
            .expect_err("over the limit");
        assert!(matches!(err, SpoolError::Full { .. }), "{err}");
        assert_eq!(s.len(), 1);
    }
}
