//! ClickHouse as the analytics store: migrations rendered from `schema/clickhouse/`, typed
//! RowBinary inserts with a per-batch deduplication token, and retry classification.
//!
//! One file per concern, after Vector's sink: `config.rs` (what the user configures and its
//! validation), `migrate.rs` (DDL), `row.rs` (encoding a record), `writer.rs` (sending a batch
//! and classifying failures).

mod config;
mod migrate;
mod row;
mod writer;

pub use config::{ClickHouseConfig, ClickHouseSettings, Compression, ConfigError};
pub use migrate::{migrate, render_statements};
pub use row::RequestRow;
pub use writer::{batch_token, is_retriable, ClickHouseWriter};

/// A ClickHouse operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClickHouseError {
    /// The server or the connection reported an error.
    #[error("ClickHouse: {0}")]
    Client(#[from] clickhouse::error::Error),
    /// The writer's runtime could not be started.
    #[error("ClickHouse writer runtime: {0}")]
    Runtime(#[from] std::io::Error),
    /// ClickHouse answered an insert with success, but the rows are not in the table.
    #[error("{0}")]
    NotStored(String),
}
