use clickhouse::error::Error;

use super::{ClickHouseError, ClickHouseSettings, RequestRow};
use crate::batch::BatchWriter;
use crate::purge::Erasures;
use crate::record::Record;

/// ClickHouse error codes that no retry can fix: the request itself is wrong.
const PERMANENT_CODES: &[&str] = &[
    "Code: 16.",  // NO_SUCH_COLUMN_IN_TABLE
    "Code: 27.",  // CANNOT_PARSE_INPUT_ASSERTION_FAILED
    "Code: 33.",  // CANNOT_READ_ALL_DATA
    "Code: 47.",  // UNKNOWN_IDENTIFIER
    "Code: 53.",  // TYPE_MISMATCH
    "Code: 60.",  // UNKNOWN_TABLE
    "Code: 62.",  // SYNTAX_ERROR
    "Code: 81.",  // UNKNOWN_DATABASE
    "Code: 117.", // INCORRECT_DATA
    "Code: 164.", // READONLY
    "Code: 192.", // UNKNOWN_USER
    "Code: 193.", // WRONG_PASSWORD
    "Code: 497.", // ACCESS_DENIED
    "Code: 516.", // AUTHENTICATION_FAILED
];

/// Whether a failed insert may succeed if sent again: network failures, timeouts and server
/// overload are retried; malformed data, schema mismatches and auth failures are not.
pub fn is_retriable(e: &ClickHouseError) -> bool {
    match e {
        ClickHouseError::Client(Error::BadResponse(text)) => {
            !PERMANENT_CODES.iter().any(|c| text.contains(c))
        }
        ClickHouseError::Client(
            Error::InvalidParams(_)
            | Error::RowNotFound
            | Error::SchemaMismatch(_)
            | Error::Unsupported(_),
        ) => false,
        _ => true,
    }
}

/// The deduplication token of a batch: the same records in the same order always give the
/// same token, so a batch re-sent after a lost acknowledgement (a retry, or a replay) is
/// dropped by ClickHouse instead of counted twice.
pub fn batch_token(batch: &[Record]) -> String {
    let first = batch.first().map(|r| r.request_id.simple().to_string());
    let last = batch.last().map(|r| r.request_id.simple().to_string());
    format!(
        "tally-{}-{}-{}",
        first.unwrap_or_default(),
        last.unwrap_or_default(),
        batch.len()
    )
}

/// How close to its expiry a record is not read back after its insert (an hour: TTL merges
/// run on their own schedule).
const TTL_MARGIN_MS: i64 = 3_600_000;

/// Writes batches into `requests` with one INSERT each.
///
/// The ingest worker is a plain thread; this writer owns a single-threaded runtime to drive
/// the async client, so ClickHouse I/O never touches the proxy's runtime.
pub struct ClickHouseWriter {
    runtime: tokio::runtime::Runtime,
    client: clickhouse::Client,
    table: &'static str,
    /// Read the batch back after the INSERT (see [`ClickHouseWriter::verify`]).
    verify: bool,
    /// The purges whose records are left out of every batch (`crate::purge`); not read on a
    /// cluster, where `tally purge` does not run.
    erasures: Option<Erasures>,
    /// The retention policy, whose TTLs may remove a record as soon as it is inserted.
    retention: crate::retention::Policy,
}

impl ClickHouseWriter {
    /// A writer for the validated settings (run migrations first).
    pub fn new(settings: &ClickHouseSettings) -> Result<Self, ClickHouseError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        Ok(Self {
            runtime,
            client: settings.client(),
            table: settings.requests_table(),
            // A Distributed table forwards inserts asynchronously: its rows are not readable
            // at once, so a read-back would fail batches that are on their way.
            verify: settings.cluster.is_none(),
            erasures: settings.cluster.is_none().then(Erasures::default),
            retention: settings.retention(),
        })
    }

    /// Checks that the batch's first and last records are in the table. An INSERT is
    /// acknowledged by a 200, but some proxies in front of ClickHouse answer 200 with an error
    /// in the body (and the client crate reads an error there only in ClickHouse's own
    /// format), and then nothing was stored. Reading two rows back by their time (the sort
    /// key's leading column) costs one small query per batch and makes the acknowledgement
    /// mean what it says. A batch that was deduplicated (a replay) finds its first insert.
    async fn verify(&self, batch: &[&Record]) -> Result<(), ClickHouseError> {
        let (Some(first), Some(last)) = (batch.first(), batch.last()) else {
            return Ok(());
        };
        let expected: u64 = if first.request_id == last.request_id {
            1
        } else {
            2
        };
        let (lo, hi) = (first.ts.min(last.ts), first.ts.max(last.ts));
        let sql = format!(
            "SELECT uniqExact(request_id) FROM {} \
             WHERE ts >= fromUnixTimestamp64Milli(toInt64(?), 'UTC') \
               AND ts <= fromUnixTimestamp64Milli(toInt64(?), 'UTC') \
               AND request_id IN (toUUID(?), toUUID(?))",
            self.table
        );
        let found: u64 = self
            .client
            .query(&sql)
            .bind(lo)
            .bind(hi)
            .bind(first.request_id.to_string())
            .bind(last.request_id.to_string())
            .fetch_one()
            .await?;
        if found == expected {
            Ok(())
        } else {
            Err(ClickHouseError::NotStored(format!(
                "ClickHouse acknowledged an insert of {} rows, but {found} of the {expected} checked are in the table",
                batch.len()
            )))
        }
    }

    async fn insert(&self, batch: &[Record]) -> Result<(), ClickHouseError> {
        let kept: Vec<&Record> = match &self.erasures {
            Some(e) if !e.is_empty() => batch.iter().filter(|r| !e.erases(r)).collect(),
            _ => batch.iter().collect(),
        };
        if kept.is_empty() {
            return Ok(());
        }
        // The token of the whole batch, whatever was left out: a batch first sent before a
        // purge and retried after it must still be recognised as the one already inserted
        // (the purge deletes what that first insert stored).
        let client = self
            .client
            .clone()
            .with_setting("insert_deduplication_token", batch_token(batch))
            .with_setting("insert_deduplicate", "1")
            // Without this, a retried batch is dropped by `requests` but still aggregated again
            // by the rollup's materialized view (the suite's rollup test catches it).
            .with_setting("deduplicate_blocks_in_dependent_materialized_views", "1");
        let mut insert = client.insert::<RequestRow>(self.table).await?;
        for r in &kept {
            insert.write(&RequestRow::from(*r)).await?;
        }
        insert.end().await?;
        if self.verify {
            // Only records the table's TTL will not remove at once (a spool replay of old
            // records, a short retention rule): a merge may drop those before the read-back.
            let now = crate::now_ms();
            let lasting: Vec<&Record> = kept
                .iter()
                .copied()
                .filter(|r| !self.retention.expired(r, now, TTL_MARGIN_MS))
                .collect();
            self.verify(&lasting).await?;
        }
        Ok(())
    }

    /// Asks which of `batch`'s request ids the table holds, within the batch's time range
    /// (the sort key's leading column, so only those parts are read).
    async fn stored_ids(&self, batch: &[Record]) -> Result<Vec<String>, ClickHouseError> {
        let (Some(lo), Some(hi)) = (
            batch.iter().map(|r| r.ts).min(),
            batch.iter().map(|r| r.ts).max(),
        ) else {
            return Ok(Vec::new());
        };
        let ids: Vec<String> = batch.iter().map(|r| r.request_id.to_string()).collect();
        let sql = format!(
            "SELECT DISTINCT toString(request_id) FROM {} \
             WHERE ts >= fromUnixTimestamp64Milli(toInt64(?), 'UTC') \
               AND ts <= fromUnixTimestamp64Milli(toInt64(?), 'UTC') \
               AND has(?, toString(request_id))",
            self.table
        );
        Ok(self
            .client
            .query(&sql)
            .bind(lo)
            .bind(hi)
            .bind(ids)
            .fetch_all::<String>()
            .await?)
    }
}

impl BatchWriter for ClickHouseWriter {
    type Error = ClickHouseError;

    fn write_batch(&mut self, batch: &[Record]) -> Result<(), ClickHouseError> {
        if let Some(erasures) = self.erasures.as_mut().filter(|e| e.stale()) {
            self.runtime.block_on(erasures.refresh(&self.client))?;
        }
        self.runtime.block_on(self.insert(batch))
    }

    fn retriable(error: &ClickHouseError) -> bool {
        is_retriable(error)
    }

    fn stored(
        &mut self,
        batch: &[Record],
    ) -> Result<std::collections::HashSet<uuid::Uuid>, ClickHouseError> {
        let ids = self.runtime.block_on(self.stored_ids(batch))?;
        // `toString` of a UUID column: the canonical form, which always parses.
        Ok(ids.iter().filter_map(|s| s.parse().ok()).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification() {
        let bad = |t: &str| ClickHouseError::Client(Error::BadResponse(t.to_owned()));
        assert!(!is_retriable(&bad(
            "Code: 60. DB::Exception: Table tally.requests does not exist"
        )));
        assert!(!is_retriable(&bad(
            "Code: 516. DB::Exception: Authentication failed"
        )));
        assert!(is_retriable(&bad(
            "Code: 252. DB::Exception: Too many parts"
        )));
        assert!(is_retriable(&bad(
            "Code: 159. DB::Exception: Timeout exceeded"
        )));
        assert!(is_retriable(&ClickHouseError::Client(Error::TimedOut)));
    }

    #[test]
    fn token_depends_on_the_batch_only() {
        let a: Vec<Record> = (0..3).map(crate::tests::record).collect();
        assert_eq!(batch_token(&a), batch_token(&a.clone()));
        assert_ne!(batch_token(&a), batch_token(&a[..2]));
    }
}
