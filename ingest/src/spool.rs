//! The on-disk spool: batches the store could not take, kept until it can.
//!
//! One append-only segment file per batch, named by a increasing sequence number so replay
//! order is write order, and written to a temporary name then renamed so a crash never leaves
//! a half-written segment under a real name. Each segment is `TSPOOL1\n`, the payload length
//! (u64 LE), its CRC32 (u32 LE), and the payload (the batch as JSON). A segment that fails its
//! checksum or does not parse is moved to `quarantine/` and counted; it never stops the replay.
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
}

/// The spool directory.
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    max_bytes: u64,
    segments: Vec<Segment>,
    next_seq: u64,
}

impl Spool {
    /// Opens (creating) the spool at `dir`, finding the segments a previous run left.
    pub fn open(dir: impl Into<PathBuf>, max_bytes: u64) -> Result<Self, SpoolError> {
        let dir = dir.into();
        fs::create_dir_all(&dir).map_err(io(&dir))?;
        let mut segments = Vec::new();
        for entry in fs::read_dir(&dir).map_err(io(&dir))? {
            let entry = entry.map_err(io(&dir))?;
            let path = entry.path();
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if let Some(seq) = name
                .strip_suffix(".seg")
                .and_then(|s| s.parse::<u64>().ok())
            {
                let bytes = entry.metadata().map_err(io(&path))?.len();
                segments.push(Segment { seq, path, bytes });
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
        })
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
        let path = self.dir.join(format!("{seq:020}.seg"));
        let tmp = self.dir.join(format!("{seq:020}.tmp"));
        {
            let mut f = fs::File::create(&tmp).map_err(io(&tmp))?;
            f.write_all(MAGIC).map_err(io(&tmp))?;
            f.write_all(&(payload.len() as u64).to_le_bytes())
                .map_err(io(&tmp))?;
            f.write_all(&crc32fast::hash(&payload).to_le_bytes())
                .map_err(io(&tmp))?;
            f.write_all(&payload).map_err(io(&tmp))?;
            f.sync_all().map_err(io(&tmp))?;
        }
        fs::rename(&tmp, &path).map_err(io(&path))?;
        self.next_seq += 1;
        self.segments.push(Segment {
            seq,
            path,
            bytes: needed,
        });
        Ok(())
    }

    /// The oldest segment, if any.
    pub fn oldest(&self) -> Option<Segment> {
        self.segments.first().cloned()
    }

    /// Reads and verifies a segment.
    pub fn read(&self, segment: &Segment) -> Result<Vec<Record>, SpoolError> {
        let data = fs::read(&segment.path).map_err(io(&segment.path))?;
        let corrupt = || SpoolError::Corrupt(segment.path.clone());
        if data.len() < HEADER || &data[..8] != MAGIC {
            return Err(corrupt());
        }
        let len = u64::from_le_bytes(data[8..16].try_into().map_err(|_| corrupt())?) as usize;
        let crc = u32::from_le_bytes(data[16..20].try_into().map_err(|_| corrupt())?);
        let payload = &data[HEADER..];
        if payload.len() != len || crc32fast::hash(payload) != crc {
            return Err(corrupt());
        }
        serde_json::from_slice(payload).map_err(|_| corrupt())
    }

    /// Deletes a segment whose batch the store has acknowledged.
    pub fn remove(&mut self, segment: &Segment) -> Result<(), SpoolError> {
        fs::remove_file(&segment.path).map_err(io(&segment.path))?;
        self.segments.retain(|s| s.seq != segment.seq);
        Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::record;

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
