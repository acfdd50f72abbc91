//! Every read query against the ClickHouse store. Values are bound with the client's `?`
//! placeholders (escaped by the `clickhouse` crate), never formatted into the SQL.

use clickhouse::Client;
use tally_ingest::clickhouse::{ClickHouseSettings, RequestRow};
use tally_ingest::Record;

use super::{Page, RequestFilter, StoreError};

/// The columns of [`RequestRow`], with the bodies read or replaced by NULL.
fn columns(with_bodies: bool) -> String {
    let bodies = if with_bodies {
        "request_body, response_body"
    } else {
        "CAST(NULL, 'Nullable(String)') AS request_body, CAST(NULL, 'Nullable(String)') AS response_body"
    };
    format!(
        "request_id, ts, provider, endpoint, method, model, response_model, status, stream,
         latency_ms, ttft_ms, prompt_tokens, completion_tokens, cache_read_tokens,
         cache_write_tokens, reasoning_tokens, total_tokens, tokens_estimated, cost_usd, user_id,
         session_id, session_path, session_name, properties, cache_status, error, request_bytes,
         response_bytes, api_key_hint, provider_request_id, {bodies}, request_body_truncated,
         response_body_truncated"
    )
}

/// Reads the ClickHouse store.
#[derive(Clone)]
pub struct ClickHouseReader {
    client: Client,
    table: &'static str,
}

impl ClickHouseReader {
    /// A reader for validated settings.
    pub fn new(settings: &ClickHouseSettings) -> Self {
        Self {
            client: settings.client(),
            table: settings.requests_table(),
        }
    }

    /// Checks that the table can be read.
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.client
            .query(&format!("SELECT count() FROM {} LIMIT 1", self.table))
            .fetch_one::<u64>()
            .await?;
        Ok(())
    }

    /// A page of records, newest first, without bodies.
    pub async fn list(&self, f: &RequestFilter) -> Result<Page, StoreError> {
        let mut sql = format!("SELECT {} FROM {} WHERE 1", columns(false), self.table);
        // (clause, binds) in order; every value goes through `bind`.
        enum V {
            I(i64),
            S(String),
            U(u16),
        }
        let mut binds: Vec<V> = Vec::new();
        if let Some(c) = &f.cursor {
            sql.push_str(
                " AND (ts < fromUnixTimestamp64Milli(?) OR (ts = fromUnixTimestamp64Milli(?) AND toString(request_id) < ?))",
            );
            binds.extend([V::I(c.ts), V::I(c.ts), V::S(c.request_id.clone())]);
        }
        if let Some(v) = f.from_ms {
            sql.push_str(" AND ts >= fromUnixTimestamp64Milli(?)");
            binds.push(V::I(v));
        }
        if let Some(v) = f.to_ms {
            sql.push_str(" AND ts < fromUnixTimestamp64Milli(?)");
            binds.push(V::I(v));
        }
        for (col, v) in f.equality_filters() {
            if let Some(v) = v {
                sql.push_str(&format!(" AND {col} = ?"));
                binds.push(V::S(v.clone()));
            }
        }
        if let Some(s) = f.status {
            let (lo, hi) = s.range();
            sql.push_str(" AND status BETWEEN ? AND ?");
            binds.extend([V::U(lo), V::U(hi)]);
        }
        for (k, v) in &f.properties {
            sql.push_str(" AND properties[?] = ?");
            binds.extend([V::S(k.clone()), V::S(v.clone())]);
        }
        let limit = f.limit.max(1);
        sql.push_str(" ORDER BY ts DESC, toString(request_id) DESC LIMIT ?");
        binds.push(V::I(limit as i64 + 1));
        let mut q = self.client.query(&sql);
        for b in binds {
            q = match b {
                V::I(v) => q.bind(v),
                V::S(v) => q.bind(v),
                V::U(v) => q.bind(v),
            };
        }
        let records: Vec<Record> = q
            .fetch_all::<RequestRow>()
            .await?
            .into_iter()
            .map(Record::from)
            .collect();
        Ok(Page::from_overfetch(records, limit))
    }

    /// One record with its bodies.
    pub async fn get(&self, request_id: &str) -> Result<Option<Record>, StoreError> {
        let sql = format!(
            "SELECT {} FROM {} WHERE request_id = toUUID(?) LIMIT 1",
            columns(true),
            self.table
        );
        Ok(self
            .client
            .query(&sql)
            .bind(request_id)
            .fetch_optional::<RequestRow>()
            .await?
            .map(Record::from))
    }

    /// Runs one SQL statement with `readonly = 1` (the server refuses writes) and returns the
    /// raw output in `format` (e.g. `TabSeparatedWithNames`, `JSONEachRow`).
    pub async fn query_raw(&self, sql: &str, format: &str) -> Result<Vec<u8>, StoreError> {
        let mut cursor = self
            .client
            .clone()
            .with_setting("readonly", "1")
            .query(sql)
            .fetch_bytes(format)?;
        Ok(cursor.collect().await?.to_vec())
    }
}
