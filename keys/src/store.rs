//! Keys in the configured store: the `tally_keys` table of the SQLite file or the ClickHouse
//! database the records go to, so every replica on a shared store sees the same keys.
//!
//! Each change writes the whole document. SQLite replaces the row; ClickHouse appends a
//! version (MergeTree has no cheap update), and readers keep the newest per id. Keys are few
//! (hundreds, not millions), so the keyring reads them all on every refresh.

use std::collections::HashMap;
use std::path::PathBuf;

use serde::Deserialize;
use tally_ingest::clickhouse::ClickHouseSettings;

use crate::key::Key;

/// A store operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// SQLite said no.
    #[error("SQLite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The SQLite file could not be opened.
    #[error(transparent)]
    Open(#[from] tally_ingest::sqlite::SqliteError),
    /// ClickHouse said no.
    #[error("ClickHouse: {0}")]
    ClickHouse(#[from] clickhouse::error::Error),
    /// A stored document is not a key.
    #[error("stored key {id} is unreadable: {error}")]
    Document {
        /// Its id.
        id: String,
        /// Why.
        error: serde_json::Error,
    },
    /// A blocking task died.
    #[error("store task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

/// Where keys live.
#[derive(Clone)]
pub enum KeyStore {
    /// The SQLite file.
    Sqlite(PathBuf),
    /// A ClickHouse database.
    ClickHouse(Box<clickhouse::Client>),
}

impl KeyStore {
    /// A ClickHouse key store for validated settings.
    pub fn clickhouse(s: &ClickHouseSettings) -> Self {
        KeyStore::ClickHouse(Box::new(s.client()))
    }

    /// Every key, newest version of each.
    pub async fn load(&self) -> Result<Vec<Key>, StoreError> {
        let rows: Vec<(String, i64, String)> = match self {
            KeyStore::Sqlite(path) => {
                let path = path.clone();
                tokio::task::spawn_blocking(move || -> Result<_, StoreError> {
                    let conn = tally_ingest::sqlite::open_ro(&path)?;
                    let mut stmt =
                        conn.prepare("SELECT key_id, updated_at, doc FROM tally_keys")?;
                    let rows = stmt
                        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                        .collect::<Result<Vec<_>, _>>()?;
                    Ok(rows)
                })
                .await??
            }
            KeyStore::ClickHouse(client) => {
                #[derive(Deserialize, clickhouse::Row)]
                struct Row {
                    key_id: String,
                    updated_at: i64,
                    doc: String,
                }
                client
                    .query("SELECT key_id, updated_at, doc FROM tally_keys")
                    .fetch_all::<Row>()
                    .await?
                    .into_iter()
                    .map(|r| (r.key_id, r.updated_at, r.doc))
                    .collect()
            }
        };
        let mut newest: HashMap<String, (i64, String)> = HashMap::new();
        for (id, at, doc) in rows {
            match newest.get(&id) {
                Some((t, _)) if *t >= at => {}
                _ => {
                    newest.insert(id, (at, doc));
                }
            }
        }
        let mut keys = newest
            .into_iter()
            .map(|(id, (_, doc))| {
                serde_json::from_str::<Key>(&doc)
                    .map_err(|error| StoreError::Document { id, error })
            })
            .collect::<Result<Vec<_>, _>>()?;
        keys.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
        Ok(keys)
    }

    /// Writes `key` as its newest version.
    pub async fn put(&self, key: &Key) -> Result<(), StoreError> {
        let doc = serde_json::to_string(key).map_err(|error| StoreError::Document {
            id: key.id.clone(),
            error,
        })?;
        let (id, name, at) = (key.id.clone(), key.name.clone(), key.updated_at);
        match self {
            KeyStore::Sqlite(path) => {
                let path = path.clone();
                tokio::task::spawn_blocking(move || -> Result<(), StoreError> {
                    let conn = tally_ingest::sqlite::open_rw(&path)?;
                    conn.execute(
                        "INSERT OR REPLACE INTO tally_keys (key_id, name, updated_at, doc) \
                         VALUES (?1, ?2, ?3, ?4)",
                        rusqlite::params![id, name, at, doc],
                    )?;
                    Ok(())
                })
                .await?
            }
            KeyStore::ClickHouse(client) => {
                client
                    .query(
                        "INSERT INTO tally_keys (key_id, name, updated_at, doc) \
                         VALUES (?, ?, ?, ?)",
                    )
                    .bind(id)
                    .bind(name)
                    .bind(at)
                    .bind(doc)
                    .execute()
                    .await?;
                Ok(())
            }
        }
    }
}
