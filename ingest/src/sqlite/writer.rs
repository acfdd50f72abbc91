use rusqlite::{params, Connection};

use super::SqliteError;
use crate::batch::BatchWriter;
use crate::record::Record;

const INSERT: &str = "INSERT OR IGNORE INTO requests (
    request_id, ts, provider, endpoint, method, model, response_model, status, stream,
    latency_ms, ttft_ms, prompt_tokens, completion_tokens, cache_read_tokens, cache_write_tokens,
    reasoning_tokens, total_tokens, tokens_estimated, cost_usd, user_id, session_id, session_path,
    session_name, properties, cache_status, error, request_bytes, response_bytes, api_key_hint,
    provider_request_id, request_body, response_body, request_body_truncated,
    response_body_truncated, router, attempts, parent_request_id, cost_saved_usd, refusal
) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19,
    ?20, ?21, ?22, ?23, ?24, ?25, ?26, ?27, ?28, ?29, ?30, ?31, ?32, ?33, ?34, ?35, ?36, ?37, ?38, ?39)";

/// Writes batches into the `requests` table, one transaction per batch.
///
/// `INSERT OR IGNORE` on the primary key makes a retried batch idempotent: a batch whose commit
/// succeeded but whose acknowledgement was lost cannot produce duplicate rows.
pub struct SqliteWriter {
    conn: Connection,
}

impl SqliteWriter {
    /// Wraps a connection that has already been migrated.
    pub fn new(conn: Connection) -> Self {
        Self { conn }
    }
}

impl BatchWriter for SqliteWriter {
    type Error = SqliteError;

    fn write_batch(&mut self, batch: &[Record]) -> Result<(), SqliteError> {
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
                ])?;
            }
        }
        tx.commit()?;
        Ok(())
    }
}
