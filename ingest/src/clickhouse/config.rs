use std::time::Duration;

use serde::Deserialize;

/// Database when unset.
pub const DEFAULT_DATABASE: &str = "tally";
/// User when unset.
pub const DEFAULT_USER: &str = "default";
/// Per-request timeout towards ClickHouse when unset.
pub const DEFAULT_TIMEOUT_MS: u64 = 30_000;

/// Wire compression of inserts and results.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// LZ4, ClickHouse's native block compression (default).
    #[default]
    Lz4,
    /// None: for servers or proxies that do not speak ClickHouse compression.
    None,
}

/// The ClickHouse part of `[store]`, as written.
#[derive(Debug, Clone, Default)]
pub struct ClickHouseConfig {
    /// HTTP endpoint, e.g. `http://127.0.0.1:8123`.
    pub url: String,
    /// Database; `tally` when unset. Created if missing.
    pub database: Option<String>,
    /// User; `default` when unset.
    pub user: Option<String>,
    /// Password; empty when unset.
    pub password: Option<String>,
    /// `ON CLUSTER` name for migrations; unset for a single server.
    pub cluster: Option<String>,
    /// Days rows are kept; 0 (default) keeps them forever.
    pub retention_days: u32,
    /// Days bodies are kept (shorter than rows); 0 (default) keeps them as long as the rows.
    pub body_ttl_days: u32,
    /// `[[store.retention]]`: property values with days of their own (first match wins).
    pub retention_rules: Vec<crate::retention::Rule>,
    /// Wire compression; LZ4 when unset.
    pub compression: Compression,
    /// Per-request timeout, milliseconds.
    pub timeout_ms: Option<u64>,
}

/// A ClickHouse setting that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// Not an `http(s)://` URL.
    #[error("store.url {0:?} must be an http:// or https:// URL")]
    Url(String),
    /// A database or cluster name that is not a plain identifier.
    #[error("store.{field} {value:?} must be letters, digits and '_', not starting with a digit")]
    Identifier {
        /// `database` or `cluster`.
        field: &'static str,
        /// The value given.
        value: String,
    },
    /// Bodies kept longer than rows.
    #[error("store.body_ttl_days ({body}) must not exceed store.retention_days ({rows})")]
    BodyTtl {
        /// Body TTL.
        body: u32,
        /// Row TTL.
        rows: u32,
    },
}

/// Validated ClickHouse settings.
#[derive(Debug, Clone)]
pub struct ClickHouseSettings {
    /// HTTP endpoint.
    pub url: String,
    /// Database (a checked identifier).
    pub database: String,
    /// User.
    pub user: String,
    /// Password.
    pub password: String,
    /// Cluster (a checked identifier), if any.
    pub cluster: Option<String>,
    /// Row retention in days, 0 = forever.
    pub retention_days: u32,
    /// Body retention in days, 0 = as long as the row.
    pub body_ttl_days: u32,
    /// Retention rules per property value.
    pub retention_rules: Vec<crate::retention::Rule>,
    /// Wire compression.
    pub compression: Compression,
    /// Per-request timeout.
    pub timeout: Duration,
}

/// Identifiers end up in DDL, where ClickHouse takes no query parameters; they are held to a
/// pattern that cannot carry anything but a name.
fn identifier(field: &'static str, value: &str) -> Result<String, ConfigError> {
    let ok = !value.is_empty()
        && value.len() <= 64
        && !value.as_bytes()[0].is_ascii_digit()
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if ok {
        Ok(value.to_owned())
    } else {
        Err(ConfigError::Identifier {
            field,
            value: value.to_owned(),
        })
    }
}

impl ClickHouseConfig {
    /// Checks the values and fills defaults.
    pub fn validate(&self) -> Result<ClickHouseSettings, ConfigError> {
        let url = self.url.trim_end_matches('/').to_owned();
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(ConfigError::Url(self.url.clone()));
        }
        let database = identifier(
            "database",
            self.database.as_deref().unwrap_or(DEFAULT_DATABASE),
        )?;
        let cluster = self
            .cluster
            .as_deref()
            .map(|c| identifier("cluster", c))
            .transpose()?;
        if self.retention_days > 0 && self.body_ttl_days > self.retention_days {
            return Err(ConfigError::BodyTtl {
                body: self.body_ttl_days,
                rows: self.retention_days,
            });
        }
        for r in &self.retention_rules {
            if r.records_days > 0 && r.bodies_days > r.records_days {
                return Err(ConfigError::BodyTtl {
                    body: r.bodies_days,
                    rows: r.records_days,
                });
            }
        }
        Ok(ClickHouseSettings {
            url,
            database,
            user: self.user.clone().unwrap_or_else(|| DEFAULT_USER.to_owned()),
            password: self.password.clone().unwrap_or_default(),
            cluster,
            retention_days: self.retention_days,
            body_ttl_days: self.body_ttl_days,
            retention_rules: self.retention_rules.clone(),
            compression: self.compression,
            timeout: Duration::from_millis(self.timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS)),
        })
    }
}

impl ClickHouseSettings {
    /// The retention policy these settings describe.
    pub fn retention(&self) -> crate::retention::Policy {
        crate::retention::Policy {
            records_days: self.retention_days,
            bodies_days: self.body_ttl_days,
            rules: self.retention_rules.clone(),
        }
    }

    /// A client for the server, without a database selected (for `CREATE DATABASE`).
    pub fn server_client(&self) -> clickhouse::Client {
        let c = clickhouse::Client::default()
            .with_url(&self.url)
            .with_user(&self.user)
            .with_compression(match self.compression {
                Compression::Lz4 => clickhouse::Compression::Lz4,
                Compression::None => clickhouse::Compression::None,
            });
        if self.password.is_empty() {
            c
        } else {
            c.with_password(&self.password)
        }
    }

    /// A client bound to Tally's database.
    pub fn client(&self) -> clickhouse::Client {
        self.server_client().with_database(&self.database)
    }

    /// The table rows are written to and read from (`requests`; in cluster mode the
    /// Distributed table of that name).
    pub fn requests_table(&self) -> &'static str {
        "requests"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(url: &str) -> ClickHouseConfig {
        ClickHouseConfig {
            url: url.into(),
            ..Default::default()
        }
    }

    #[test]
    fn defaults_and_refusals() {
        let s = config("http://127.0.0.1:8123/").validate().expect("valid");
        assert_eq!(
            (s.url.as_str(), s.database.as_str()),
            ("http://127.0.0.1:8123", "tally")
        );
        assert!(matches!(
            config("tcp://x").validate(),
            Err(ConfigError::Url(_))
        ));
        for bad in ["x; DROP TABLE y", "1abc", "a-b", "", "a`b"] {
            let c = ClickHouseConfig {
                database: Some(bad.into()),
                ..config("http://h")
            };
            assert!(
                matches!(c.validate(), Err(ConfigError::Identifier { .. })),
                "{bad}"
            );
        }
        let c = ClickHouseConfig {
            retention_days: 30,
            body_ttl_days: 90,
            ..config("http://h")
        };
        assert!(matches!(c.validate(), Err(ConfigError::BodyTtl { .. })));
    }
}
