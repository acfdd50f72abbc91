use std::collections::HashSet;
use std::path::{Path, PathBuf};

use prometheus_client::metrics::counter::Counter;
use rusqlite::{params, Connection};

use super::SqliteError;
use crate::batch::BatchWriter;
use crate::record::Record;
use uuid::Uuid;

const INSERT: &str = "INSERT OR IGNORE INTO requests (
    request_id, ts, provider, endpoint, method, model, response_model, status, stream,
    latency_ms, ttft_ms, prompt_tokens, completion_tokens, cache_read_tokens, cache_write_tokens,
    reasoning_tokens, total_tokens, tokens_estimated, cost_usd, user_id, session_id, session_path,
    session_name, properties, cache_status, error, request_bytes, response_bytes, api_key_hint,
    provider_request_id, request_body, response_body, request_body_truncated,
    response_body_truncated, router, attempts, parent_request_id, cost_saved_usd, refusal,
    key_id, key_name, upstream_request_body, upstream_response_body, cache_write_1h_tokens,
    service_tier, web_search_calls
) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19,
    ?20, ?21, ?22, ?23, ?24, ?25, ?26, ?27, ?28, ?29, ?30, ?31, ?32, ?33, ?34, ?35, ?36, ?37, ?38, ?39,
    ?40, ?41, ?42, ?43, ?44, ?45, ?46)";

/// Writes batches into the `requests` table, one transaction per batch.
///
/// `INSERT OR IGNORE` on the primary key makes a retried batch idempotent: a batch whose commit
/// succeeded but whose acknowledgement was lost cannot produce duplicate rows.
pub struct SqliteWriter {
    conn: Connection,
    watch: Option<Watch>,
}

/// The store's file as the writer opened it. A file deleted (or replaced) under a running
/// writer keeps taking writes into the orphaned inode, which vanish with the process: so
/// before each batch the writer checks that its path still names the file it holds, and
/// opens the path afresh (creating and migrating a new store) when it does not.
struct Watch {
    path: PathBuf,
    identity: Option<(u64, u64)>,
    reopened: Counter,
}

/// Device and inode of `path`, or `None` when it does not exist.
fn identity(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

impl SqliteWriter {
    /// Wraps a connection that has already been migrated.
    pub fn new(conn: Connection) -> Self {
        Self { conn, watch: None }
    }

    /// As [`SqliteWriter::new`], for the store at `path`: if the file is deleted or replaced
    /// while Tally runs, the next batch goes to a new store at `path` (logged as an error and
    /// counted in `reopened`) instead of the orphaned file.
    pub fn watching(conn: Connection, path: &Path, reopened: Counter) -> Self {
        Self {
            conn,
            watch: Some(Watch {
                path: path.to_owned(),
                identity: identity(path),
                reopened,
            }),
        }
    }

    fn check_file(&mut self) -> Result<(), SqliteError> {
        let Some(w) = self.watch.as_mut() else {
            return Ok(());
        };
        let now = identity(&w.path);
        if now.is_some() && now == w.identity {
            return Ok(());
        }
        tracing::error!(
            path = %w.path.display(),
            gone = now.is_none(),
            "the SQLite store was deleted or replaced under Tally; opening it afresh (rows written before are in the old file, if it still exists)"
        );
        let mut conn = super::open_writer(&w.path)?;
        super::migrate(&mut conn)?;
        self.conn = conn;
        w.identity = identity(&w.path);
        w.reopened.inc();
        Ok(())
    }
}

impl BatchWriter for SqliteWriter {
    type Error = SqliteError;

    fn write_batch(&mut self, batch: &[Record]) -> Result<(), SqliteError> {
        self.check_file()?;
        let tx = self.conn.transaction()?;
        {
            let mut stmt = tx.prepare_cached(INSERT)?;
            for r in batch {
                let t = r.tokens;
                let properties =
                    serde_json::to_string(&r.properties).unwrap_or_else(|_| "{}".to_owned());
                stmt.execute(params![
                    r.request_id.to_string(),
                    r.ts,
                    r.provider,
                    r.endpoint,
                    r.method,
                    r.model,
                    r.response_model,
                    r.status,
                    r.stream,
                    r.latency_ms as i64,
                    r.ttft_ms.map(|v| v as i64),
                    t.map(|t| t.prompt as i64),
                    t.map(|t| t.completion as i64),
                    t.map(|t| t.cache_read as i64),
                    t.map(|t| t.cache_write as i64),
                    t.map(|t| t.reasoning as i64),
                    t.map(|t| t.total() as i64),
                    r.tokens_estimated,
                    r.cost_usd,
                    r.user_id,
                    r.session_id,
                    r.session_path,
                    r.session_name,
                    properties,
                    r.cache_status.as_str(),
                    r.error,
                    r.request_bytes as i64,
                    r.response_bytes as i64,
                    r.api_key_hint,
                    r.provider_request_id,
                    r.request_body,
                    r.response_body,
                    r.request_body_truncated,
                    r.response_body_truncated,
                    r.router,
                    r.attempts,
                    r.parent_request_id.map(|u| u.to_string()),
                    r.cost_saved_usd,
                    r.refusal,
                    r.key_id,
                    r.key_name,
                    r.upstream_request_body,
                    r.upstream_response_body,
                    t.map(|t| t.cache_write_1h as i64),
                    r.service_tier,
                    r.web_search_calls,
                ])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn stored(&mut self, batch: &[Record]) -> Result<HashSet<Uuid>, SqliteError> {
        self.check_file()?;
        let mut stmt = self
            .conn
            .prepare_cached("SELECT 1 FROM requests WHERE request_id = ?1")?;
        let mut out = HashSet::new();
        for r in batch {
            if stmt.exists([r.request_id.to_string()])? {
                out.insert(r.request_id);
            }
        }
        Ok(out)
    }
}
