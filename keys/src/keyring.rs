//! The keys the proxy authenticates against: an in-memory copy of the store, swapped whole on
//! every refresh, so a request reads it without a lock and never waits on the store.
//!
//! A key created or revoked on any replica reaches this one by the next refresh: within one
//! interval plus the time a load takes (README, "Tally keys"). The store being down keeps the
//! last good copy, counted in `refresh_errors`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;

use crate::key::{Key, KeyState};
use crate::secret;
use crate::store::{KeyStore, StoreError};

/// Why a presented Tally key is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthError {
    /// No key where one is required.
    Missing,
    /// Starts like a Tally key but is not one (wrong length or characters).
    Malformed,
    /// Well formed, but no key has that id and secret.
    Unknown,
    /// Revoked.
    Revoked,
    /// Past its expiry.
    Expired,
}

impl AuthError {
    /// The reason, as counted and as sent in errors.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthError::Missing => "missing",
            AuthError::Malformed => "malformed",
            AuthError::Unknown => "unknown",
            AuthError::Revoked => "revoked",
            AuthError::Expired => "expired",
        }
    }

    /// A sentence for the client.
    pub fn message(self) -> &'static str {
        match self {
            AuthError::Missing => {
                "a Tally key is required: send it where your SDK sends its API key"
            }
            AuthError::Malformed => "the Tally key is malformed (expected tly-<id>_<64 hex>)",
            AuthError::Unknown => "the Tally key is not known",
            AuthError::Revoked => "the Tally key has been revoked",
            AuthError::Expired => "the Tally key has expired",
        }
    }
}

/// The in-memory keys.
pub struct Keyring {
    by_id: ArcSwap<HashMap<String, Arc<Key>>>,
    /// When the copy was last loaded, ms (0: never).
    loaded_at: AtomicI64,
    /// Failed loads.
    pub refresh_errors: AtomicU64,
}

impl Default for Keyring {
    fn default() -> Self {
        Self {
            by_id: ArcSwap::from_pointee(HashMap::new()),
            loaded_at: AtomicI64::new(0),
            refresh_errors: AtomicU64::new(0),
        }
    }
}

impl Keyring {
    /// A keyring holding `keys`, without a store (tests).
    pub fn with(keys: Vec<Key>) -> Self {
        let ring = Self::default();
        ring.replace(keys);
        ring
    }

    fn replace(&self, keys: Vec<Key>) {
        let map = keys
            .into_iter()
            .map(|k| (k.id.clone(), Arc::new(k)))
            .collect();
        self.by_id.store(Arc::new(map));
        self.loaded_at.store(crate::now_ms(), Ordering::Relaxed);
    }

    /// Reloads from `store`.
    pub async fn refresh(&self, store: &KeyStore) -> Result<usize, StoreError> {
        let keys = store.load().await?;
        let n = keys.len();
        self.replace(keys);
        Ok(n)
    }

    /// Reloads every `interval` until the process ends, keeping the last good copy when a load
    /// fails.
    pub fn spawn_refresh(
        self: &Arc<Self>,
        store: KeyStore,
        interval: Duration,
    ) -> tokio::task::JoinHandle<()> {
        let ring = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if let Err(e) = ring.refresh(&store).await {
                    let n = ring.refresh_errors.fetch_add(1, Ordering::Relaxed);
                    // Once per streak start and then every 60 failures: a store that is down
                    // must not flood the log at the refresh rate.
                    if n.is_multiple_of(60) {
                        tracing::warn!(error = %e, "cannot reload the Tally keys; keeping the last copy");
                    }
                }
            }
        })
    }

    /// Keys held.
    pub fn len(&self) -> usize {
        self.by_id.load().len()
    }

    /// Whether no key is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The key `presented` is, if it is a usable one at `now`.
    pub fn authenticate(&self, presented: &str, now: i64) -> Result<Arc<Key>, AuthError> {
        let id = secret::parse(presented).ok_or(AuthError::Malformed)?;
        let map = self.by_id.load();
        let key = map.get(id).ok_or(AuthError::Unknown)?;
        if !key.accepts(presented, now) {
            return Err(AuthError::Unknown);
        }
        match key.state(now) {
            KeyState::Active => Ok(key.clone()),
            KeyState::Revoked => Err(AuthError::Revoked),
            KeyState::Expired => Err(AuthError::Expired),
        }
    }

    /// The key named `name`, not revoked (for budgets and rate limits, which go by name).
    pub fn by_name(&self, name: &str) -> Option<Arc<Key>> {
        let now = crate::now_ms();
        self.by_id
            .load()
            .values()
            .find(|k| k.name == name && k.state(now) != KeyState::Revoked)
            .cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::tests::key_with;

    #[test]
    fn authenticate_says_why() {
        let now = crate::now_ms();
        let (active, a) = key_with("a", |_| {});
        let (revoked, r) = key_with("r", |k| k.revoked_at = Some(now - 1));
        let (expired, e) = key_with("e", |k| k.expires_at = Some(now - 1));
        let ring = Keyring::with(vec![a, r, e]);
        assert_eq!(
            ring.authenticate(&active, now).map(|k| k.name.clone()),
            Ok("a".into())
        );
        assert_eq!(
            ring.authenticate(&revoked, now).err(),
            Some(AuthError::Revoked)
        );
        assert_eq!(
            ring.authenticate(&expired, now).err(),
            Some(AuthError::Expired)
        );
        assert_eq!(
            ring.authenticate("tly-nope", now).err(),
            Some(AuthError::Malformed)
        );
        let unknown = crate::Secret::generate().expect("random").text;
        assert_eq!(
            ring.authenticate(&unknown, now).err(),
            Some(AuthError::Unknown)
        );
        // Right id, wrong secret.
        let forged = format!("{}{}", &active[..20], "0".repeat(active.len() - 20));
        assert_eq!(
            ring.authenticate(&forged, now).err(),
            Some(AuthError::Unknown)
        );
    }
}
