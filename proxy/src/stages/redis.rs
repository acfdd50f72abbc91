//! The one way stages talk to Redis: a lazily connecting, self-healing connection with a hard
//! deadline on every command, so a slow or absent Redis costs a request at most that deadline.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::StageError;

/// A shared Redis connection (cheap to clone: one multiplexed socket).
#[derive(Clone)]
pub(crate) struct Redis {
    conn: ConnectionManager,
    timeout: Duration,
}

/// A Redis command that failed or took too long. Stages treat it as "Redis is not there":
/// the cache misses, the rate limiter admits, and a counter says so.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RedisError {
    #[error("redis: {0}")]
    Command(#[from] redis::RedisError),
    #[error("redis did not answer within {0} ms")]
    Timeout(u128),
}

impl Redis {
    /// Connects on first use, so Tally starts even while Redis is down. Must run inside a
    /// Tokio runtime.
    pub(crate) fn connect(
        url: &str,
        timeout: Duration,
        what: &'static str,
    ) -> Result<Self, StageError> {
        let client = redis::Client::open(url).map_err(|e| StageError::Redis {
            what,
            url: redacted(url),
            reason: e.to_string(),
        })?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1);
        let conn = client
            .get_connection_manager_lazy(config)
            .map_err(|e| StageError::Redis {
                what,
                url: redacted(url),
                reason: e.to_string(),
            })?;
        Ok(Self { conn, timeout })
    }

    /// Runs one command or script invocation under the deadline.
    pub(crate) async fn run<T, F, Fut>(&self, f: F) -> Result<T, RedisError>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        match tokio::time::timeout(self.timeout, f(self.conn.clone())).await {
            Ok(r) => Ok(r?),
            Err(_) => Err(RedisError::Timeout(self.timeout.as_millis())),
        }
    }
}

/// `redis://user:secret@host:6379/0` without the password, for error messages and logs.
pub(crate) fn redacted(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://…@{}", &url[..s], &url[at + 1..]),
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn passwords_never_reach_messages() {
        assert_eq!(
            super::redacted("redis://u:hunter2@10.0.0.1:6379/0"),
            "redis://…@10.0.0.1:6379/0"
        );
        assert_eq!(
            super::redacted("redis://127.0.0.1:6379"),
            "redis://127.0.0.1:6379"
        );
    }
}
