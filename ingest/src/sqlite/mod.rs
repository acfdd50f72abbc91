//! The embedded default store: one SQLite file in WAL mode, so users can read it with `sqlite3`
//! while Tally keeps writing.

mod migrate;
mod writer;

pub use migrate::migrate;
pub use writer::SqliteWriter;

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

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
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(err)?;
    // NORMAL in WAL mode is durable against application crashes, which is what matters here;
    // only an OS crash can lose the last transactions.
    conn.pragma_update(None, "synchronous", "NORMAL")
        .map_err(err)?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(err)?;
    Ok(conn)
}

/// Opens the store for reading only; SQLite itself refuses any write on this connection.
pub fn open_ro(path: &Path) -> Result<Connection, SqliteError> {
    let err = |source| SqliteError::Open {
        path: path.to_owned(),
        source,
    };
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(err)?;
    conn.pragma_update(None, "query_only", true).map_err(err)?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(err)?;
    Ok(conn)
}
