//! The key operations, shared by `tally keys …` and the admin API so both validate and
//! write the same way. Each writes the store; replicas pick the change up on their next
//! refresh.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::key::{Key, KeyPolicy, KeyState};
use crate::secret::{self, Secret};
use crate::store::{KeyStore, StoreError};

/// A key operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AdminError {
    /// An option is out of range; the message names it.
    #[error("{0}")]
    Invalid(String),
    /// No key has that id or name.
    #[error("no key {0:?}")]
    NotFound(String),
    /// The name is taken by a key that is not revoked.
    #[error("a key named {0:?} exists; revoke it first or pick another name")]
    NameTaken(String),
    /// The OS gave no randomness.
    #[error("no randomness: {0}")]
    Random(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What `create` takes; the CLI's flags and the admin API's JSON body.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CreateOptions {
    /// Unique name: letters, digits, `.`, `_` and `-`, at most 64.
    pub name: String,
    /// Spend allowed per window, USD.
    pub budget_usd: Option<f64>,
    /// `day`, `week` or `month`.
    pub window: Option<String>,
    /// Model patterns.
    pub models: Vec<String>,
    /// Provider or router names.
    pub providers: Vec<String>,
    /// Requests per minute.
    pub rpm: Option<u64>,
    /// Tokens per minute.
    pub tpm: Option<u64>,
    /// `2027-01-01` (midnight UTC) or an RFC 3339 time.
    pub expires: Option<String>,
    /// Labels.
    pub metadata: BTreeMap<String, String>,
}

/// A key as listed: never its hash.
#[derive(Debug, Clone, Serialize)]
pub struct KeyView {
    /// Id.
    pub id: String,
    /// Name.
    pub name: String,
    /// `active`, `revoked` or `expired`.
    pub state: &'static str,
    /// Hint of the current secret.
    pub hint: String,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339, when set.
    pub expires_at: Option<String>,
    /// RFC 3339, when revoked.
    pub revoked_at: Option<String>,
    /// RFC 3339: until when the secret replaced by the last rotation still works.
    pub previous_valid_until: Option<String>,
    /// Limits.
    pub policy: KeyPolicy,
}

fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_default()
}

impl KeyView {
    /// The shown form of `key` at `now`.
    pub fn of(key: &Key, now: i64) -> Self {
        Self {
            id: key.id.clone(),
            name: key.name.clone(),
            state: key.state(now).as_str(),
            hint: key.hint.clone(),
            created_at: rfc3339(key.created_at),
            expires_at: key.expires_at.map(rfc3339),
            revoked_at: key.revoked_at.map(rfc3339),
            previous_valid_until: key.previous_until.filter(|t| *t > now).map(rfc3339),
            policy: key.policy.clone(),
        }
    }
}

/// A new secret and the key it belongs to.
#[derive(Debug)]
pub struct Issued {
    /// Shown once.
    pub secret: Secret,
    /// As stored.
    pub key: Key,
}

/// The operations over one store.
pub struct Admin {
    store: KeyStore,
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// `2027-01-01` or RFC 3339, as ms.
pub fn parse_time(s: &str) -> Result<i64, String> {
    if let Ok(d) = chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        if let Some(t) = d.and_hms_opt(0, 0, 0) {
            return Ok(t.and_utc().timestamp_millis());
        }
    }
    chrono::DateTime::parse_from_rfc3339(s)
        .map(|t| t.timestamp_millis())
        .map_err(|_| format!("{s:?} is neither a date (2027-01-01) nor an RFC 3339 time"))
}

impl CreateOptions {
    fn policy(&self) -> Result<(KeyPolicy, Option<i64>), AdminError> {
        let bad = |m: String| AdminError::Invalid(m);
        if !valid_name(&self.name) {
            return Err(bad(format!(
                "name {:?}: use 1-64 letters, digits, '.', '_' or '-'",
                self.name
            )));
        }
        if let Some(b) = self.budget_usd {
            if !(b.is_finite() && b > 0.0) {
                return Err(bad(format!("budget_usd {b} must be above 0")));
            }
        }
        let window = match (self.budget_usd, self.window.as_deref()) {
            (_, Some(w @ ("day" | "week" | "month"))) => Some(w.to_owned()),
            (_, Some(w)) => return Err(bad(format!("window {w:?} is not day, week or month"))),
            (Some(_), None) => Some("month".to_owned()),
            (None, None) => None,
        };
        if window.is_some() && self.budget_usd.is_none() {
            return Err(bad("window needs budget_usd".into()));
        }
        for (what, v) in [("rpm", self.rpm), ("tpm", self.tpm)] {
            if v == Some(0) {
                return Err(bad(format!("{what} must be above 0")));
            }
        }
        let clean = |list: &[String]| -> Vec<String> {
            list.iter()
                .flat_map(|s| s.split(','))
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect()
        };
        let expires = self
            .expires
            .as_deref()
            .map(parse_time)
            .transpose()
            .map_err(bad)?;
        Ok((
            KeyPolicy {
                models: clean(&self.models),
                providers: clean(&self.providers),
                budget_usd: self.budget_usd,
                budget_window: window,
                rpm: self.rpm,
                tpm: self.tpm,
                metadata: self.metadata.clone(),
            },
            expires,
        ))
    }
}

impl Admin {
    /// Operations on `store`.
    pub fn new(store: KeyStore) -> Self {
        Self { store }
    }

    /// The store the operations write.
    pub fn store(&self) -> &KeyStore {
        &self.store
    }

    /// Every key.
    pub async fn list(&self) -> Result<Vec<Key>, AdminError> {
        Ok(self.store.load().await?)
    }

    /// The key with this id, or the key not revoked with this name (else the newest so
    /// named).
    pub async fn show(&self, id_or_name: &str) -> Result<Key, AdminError> {
        let keys = self.store.load().await?;
        find(keys, id_or_name)
    }

    /// Creates a key.
    pub async fn create(&self, opts: &CreateOptions) -> Result<Issued, AdminError> {
        let (policy, expires_at) = opts.policy()?;
        let now = crate::now_ms();
        let keys = self.store.load().await?;
        if keys
            .iter()
            .any(|k| k.name == opts.name && k.state(now) != KeyState::Revoked)
        {
            return Err(AdminError::NameTaken(opts.name.clone()));
        }
        let secret = Secret::generate().map_err(|e| AdminError::Random(e.to_string()))?;
        let key = Key {
            id: secret.id.clone(),
            name: opts.name.clone(),
            hash: secret::hash(&secret.text),
            previous_hash: None,
            previous_until: None,
            hint: secret::hint(&secret.text),
            created_at: now,
            updated_at: now,
            expires_at,
            revoked_at: None,
            policy,
        };
        self.store.put(&key).await?;
        Ok(Issued { secret, key })
    }

    /// Revokes a key; it is refused from the next refresh on.
    pub async fn revoke(&self, id_or_name: &str) -> Result<Key, AdminError> {
        let mut key = self.show(id_or_name).await?;
        let now = crate::now_ms();
        if key.revoked_at.is_none() {
            key.revoked_at = Some(now);
            key.updated_at = now.max(key.updated_at + 1);
            self.store.put(&key).await?;
        }
        Ok(key)
    }

    /// A new secret for a key; the old one keeps working for `grace_ms`. Rotating again
    /// within the grace period ends the older secret's grace at once.
    pub async fn rotate(&self, id_or_name: &str, grace_ms: i64) -> Result<Issued, AdminError> {
        let mut key = self.show(id_or_name).await?;
        let now = crate::now_ms();
        if key.state(now) != KeyState::Active {
            return Err(AdminError::Invalid(format!(
                "key {:?} is {}; only an active key can be rotated",
                key.name,
                key.state(now).as_str()
            )));
        }
        let secret = Secret::for_id(&key.id).map_err(|e| AdminError::Random(e.to_string()))?;
        key.previous_hash = Some(std::mem::replace(&mut key.hash, secret::hash(&secret.text)));
        key.previous_until = Some(now + grace_ms.max(0));
        key.hint = secret::hint(&secret.text);
        key.updated_at = now.max(key.updated_at + 1);
        self.store.put(&key).await?;
        Ok(Issued { secret, key })
    }
}

fn find(keys: Vec<Key>, id_or_name: &str) -> Result<Key, AdminError> {
    let now = crate::now_ms();
    let mut named: Vec<Key> = Vec::new();
    for k in keys {
        if k.id == id_or_name {
            return Ok(k);
        }
        if k.name == id_or_name {
            named.push(k);
        }
    }
    named.sort_by_key(|k| (k.state(now) != KeyState::Revoked, k.created_at));
    named
        .pop()
        .ok_or_else(|| AdminError::NotFound(id_or_name.to_owned()))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A key named `name`, adjusted by `f`, and its secret.
    pub(crate) fn key_with(name: &str, f: impl FnOnce(&mut Key)) -> (String, Key) {
        let s = Secret::generate().expect("random");
        let mut k = Key {
            id: s.id.clone(),
            name: name.into(),
            hash: secret::hash(&s.text),
            previous_hash: None,
            previous_until: None,
            hint: secret::hint(&s.text),
            created_at: 1,
            updated_at: 1,
            expires_at: None,
            revoked_at: None,
            policy: KeyPolicy::default(),
        };
        f(&mut k);
        (s.text, k)
    }

    fn sqlite() -> (tempfile::TempDir, KeyStore) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("t.db");
        let mut conn = tally_ingest::sqlite::open_rw(&path).expect("open");
        tally_ingest::sqlite::migrate(&mut conn).expect("migrate");
        (dir, KeyStore::Sqlite(path))
    }

    #[tokio::test]
    async fn create_rotate_revoke_on_sqlite() {
        let (_dir, store) = sqlite();
        let admin = Admin::new(store.clone());
        let opts = CreateOptions {
            name: "search-team".into(),
            budget_usd: Some(5.0),
            models: vec!["gpt-4o-mini, claude-*".into()],
            ..Default::default()
        };
        let issued = admin.create(&opts).await.expect("create");
        assert_eq!(issued.key.policy.models, ["gpt-4o-mini", "claude-*"]);
        assert_eq!(issued.key.policy.budget_window.as_deref(), Some("month"));
        assert!(matches!(
            admin.create(&opts).await,
            Err(AdminError::NameTaken(_))
        ));

        let ring = crate::Keyring::default();
        ring.refresh(&store).await.expect("load");
        let now = crate::now_ms();
        assert!(ring.authenticate(&issued.secret.text, now).is_ok());

        let rotated = admin.rotate("search-team", 60_000).await.expect("rotate");
        assert_eq!(rotated.key.id, issued.key.id);
        ring.refresh(&store).await.expect("load");
        assert!(ring.authenticate(&rotated.secret.text, now).is_ok());
        assert!(
            ring.authenticate(&issued.secret.text, now).is_ok(),
            "in grace"
        );
        assert!(
            ring.authenticate(&issued.secret.text, now + 61_000)
                .is_err(),
            "after grace"
        );

        admin.revoke(&issued.key.id).await.expect("revoke");
        ring.refresh(&store).await.expect("load");
        let now = crate::now_ms();
        assert_eq!(
            ring.authenticate(&rotated.secret.text, now).err(),
            Some(crate::AuthError::Revoked)
        );
        // The name is free again.
        admin
            .create(&opts)
            .await
            .expect("name reusable after revoke");
    }

    #[test]
    fn options_are_validated() {
        for (opts, needle) in [
            (
                CreateOptions {
                    name: "a b".into(),
                    ..Default::default()
                },
                "name",
            ),
            (
                CreateOptions {
                    name: "a".into(),
                    budget_usd: Some(-1.0),
                    ..Default::default()
                },
                "budget_usd",
            ),
            (
                CreateOptions {
                    name: "a".into(),
                    budget_usd: Some(1.0),
                    window: Some("year".into()),
                    ..Default::default()
                },
                "window",
            ),
            (
                CreateOptions {
                    name: "a".into(),
                    rpm: Some(0),
                    ..Default::default()
                },
                "rpm",
            ),
            (
                CreateOptions {
                    name: "a".into(),
                    expires: Some("soon".into()),
                    ..Default::default()
                },
                "soon",
            ),
        ] {
            let e = opts.policy().expect_err(needle).to_string();
            assert!(e.contains(needle), "{e}");
        }
    }
}
