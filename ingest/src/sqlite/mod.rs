//! The embedded default store: one SQLite file in WAL mode, so users can read it with `sqlite3`
//! while Tally keeps writing.

mod migrate;
pub mod retention;
mod writer;

pub use migrate::migrate;
pub use writer::SqliteWriter;

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

/// Page size of a new store, bytes.
pub const PAGE_SIZE: u32 = 16 * 1024;

/// Page cache of the ingest writer's connection, KiB.
pub const WRITER_CACHE_KIB: i64 = 64 * 1024;

/// WAL pages between automatic checkpoints of the ingest writer (64 MiB at [`PAGE_SIZE`]).
pub const WAL_AUTOCHECKPOINT_PAGES: i64 = 4_000;

/// How long a writer waits on a lock held by a reader before the batch attempt fails.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Something went wrong with the SQLite store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SqliteError {
    /// The database file could not be opened or configured.
    #[error("cannot open SQLite store at {path}: {source}")]
    Open {
        /// The file Tally tried to open.
        path: PathBuf,
        /// What SQLite said.
        source: rusqlite::Error,
    },
    /// A migration failed; the store is left at the previous version.
    #[error("SQLite migration {name} failed: {source}")]
    Migrate {
        /// The migration's name.
        name: &'static str,
        /// What SQLite said.
        source: rusqlite::Error,
    },
    /// A batch could not be written.
    #[error("SQLite write failed: {0}")]
    Write(#[from] rusqlite::Error),
}

/// Opens (creating if missing) the store for writing: WAL, normal sync, a busy timeout.
pub fn open_rw(path: &Path) -> Result<Connection, SqliteError> {
    let err = |source| SqliteError::Open {
        path: path.to_owned(),
        source,
    };
    let conn = Connection::open(path).map_err(err)?;
    // Only a new, empty file takes it (an existing store keeps its page size). Rows carry
    // kilobytes of bodies: 16 KiB pages took sustained ingest from 39,000 to 52,000 records/s
    // with 1 KiB bodies (BENCHMARKS.md, "Ingest"), with fewer page splits and WAL frames per row.
    conn.pragma_update(None, "page_size", PAGE_SIZE)
        .map_err(err)?;
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(err)?;
    // NORMAL in WAL mode is durable against application crashes, which is what matters here;
    // only an OS crash can lose the last transactions.
    conn.pragma_update(None, "synchronous", "NORMAL")
        .map_err(err)?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(err)?;
    Ok(conn)
}

/// The ingest writer's connection: [`open_rw`] with a larger page cache and fewer, larger
/// checkpoints. Inserts walk six indexes; once the file is larger than SQLite's default 2 MiB
/// cache, every walk rereads pages through `pread`, and every 1,000 pages of WAL a checkpoint
/// (with its fsync) stops the writer. With both raised, a million 1 KiB-body records went in at
/// 69,000/s instead of 46,000/s (BENCHMARKS.md, "Ingest"). The cache is the writer's only:
/// up to [`WRITER_CACHE_KIB`] of the process's memory once the store is that large.
pub fn open_writer(path: &Path) -> Result<Connection, SqliteError> {
    let conn = open_rw(path)?;
    let err = |source| SqliteError::Open {
        path: path.to_owned(),
        source,
    };
    conn.pragma_update(None, "cache_size", -WRITER_CACHE_KIB)
        .map_err(err)?;
    conn.pragma_update(None, "wal_autocheckpoint", WAL_AUTOCHECKPOINT_PAGES)
        .map_err(err)?;
    Ok(conn)
}

/// Opens the store for reading only; SQLite itself refuses any write on this connection.
///
/// A read must create nothing on disk. In WAL mode, a reader that finds no `-wal`/`-shm` files
/// (no writer has the store open: Tally is stopped) would create them; then the file is opened
/// `immutable`, which reads it as it is without those files or locks. While Tally runs they
/// exist, and the reader shares them as WAL readers do.
pub fn open_ro(path: &Path) -> Result<Connection, SqliteError> {
    let err = |source| SqliteError::Open {
        path: path.to_owned(),
        source,
    };
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let side = |suffix: &str| {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        PathBuf::from(p).exists()
    };
    let conn = if path.exists() && !side("-wal") && !side("-shm") {
        let uri = format!("file:{}?immutable=1", uri_path(path));
        Connection::open_with_flags(uri, flags | OpenFlags::SQLITE_OPEN_URI)
    } else {
        Connection::open_with_flags(path, flags)
    }
    .map_err(err)?;
    conn.pragma_update(None, "query_only", true).map_err(err)?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(err)?;
    Ok(conn)
}

/// `path` as the path part of an SQLite `file:` URI (RFC 3986; `?`, `#` and `%` escaped).
fn uri_path(path: &Path) -> String {
    let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_owned());
    let mut out = String::new();
    for c in abs.to_string_lossy().chars() {
        match c {
            '?' | '#' | '%' => out.push_str(&format!("%{:02X}", c as u32)),
            _ => out.push(c),
        }
    }
    out
}

/// Whether `sql` only reads: SQLite's own verdict on the prepared statement. A read-only
/// connection already refuses writes to the store, but `VACUUM INTO '/any/path'` fails only
/// after creating its target file.
pub fn reads_only(conn: &Connection, sql: &str) -> Result<bool, rusqlite::Error> {
    Ok(conn.prepare(sql)?.readonly())
}
