//! A key as stored: its hash, its state and its policy. One JSON document per key, so both
//! stores keep the same shape and a new policy field needs no migration.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// What a key may do. Every limit is optional; an empty list allows everything.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct KeyPolicy {
    /// Model patterns the key may request (`gpt-4o-mini`, `claude-*`); any model when empty.
    pub models: Vec<String>,
    /// Providers (or routers) the key may reach; any when empty.
    pub providers: Vec<String>,
    /// Spend allowed per budget window, USD.
    pub budget_usd: Option<f64>,
    /// `day`, `week` or `month` (calendar, UTC); `month` when a budget is set without one.
    pub budget_window: Option<String>,
    /// Requests per minute.
    pub rpm: Option<u64>,
    /// Tokens (input + output) per minute, counted from usage after each response.
    pub tpm: Option<u64>,
    /// Free-form labels, e.g. `team=search`.
    pub metadata: BTreeMap<String, String>,
}

/// A key's document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Key {
    /// Stable id (inside the secret too); records carry it.
    pub id: String,
    /// Unique among keys not revoked; records and budget scopes carry it.
    pub name: String,
    /// SHA-256 of the current secret, hex.
    pub hash: String,
    /// The secret replaced by the last rotation, valid until `previous_until`.
    #[serde(default)]
    pub previous_hash: Option<String>,
    /// End of the rotation's grace period, ms.
    #[serde(default)]
    pub previous_until: Option<i64>,
    /// What may be shown of the current secret.
    pub hint: String,
    /// ms since the epoch.
    pub created_at: i64,
    /// ms since the epoch; the newest version of a key wins.
    pub updated_at: i64,
    /// After this (ms) the key is refused.
    #[serde(default)]
    pub expires_at: Option<i64>,
    /// When it was revoked (ms); refused from then on.
    #[serde(default)]
    pub revoked_at: Option<i64>,
    /// Its limits.
    #[serde(default)]
    pub policy: KeyPolicy,
}

/// Whether a key can be used now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyState {
    /// Usable.
    Active,
    /// Revoked.
    Revoked,
    /// Past its expiry.
    Expired,
}

impl KeyState {
    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyState::Active => "active",
            KeyState::Revoked => "revoked",
            KeyState::Expired => "expired",
        }
    }
}

impl Key {
    /// The key's state at `now` (ms).
    pub fn state(&self, now: i64) -> KeyState {
        if self.revoked_at.is_some_and(|t| t <= now) {
            KeyState::Revoked
        } else if self.expires_at.is_some_and(|t| t <= now) {
            KeyState::Expired
        } else {
            KeyState::Active
        }
    }

    /// Whether `presented` is this key's current secret, or the previous one in its grace
    /// period. Both comparisons always run, so timing does not say which matched.
    pub fn accepts(&self, presented: &str, now: i64) -> bool {
        let current = crate::secret::matches(presented, &self.hash);
        let previous = match (&self.previous_hash, self.previous_until) {
            (Some(h), Some(until)) => crate::secret::matches(presented, h) && now < until,
            _ => false,
        };
        current | previous
    }

    /// Whether the key may request `model`. A key with a model list refuses a request whose
    /// model cannot be read.
    pub fn allows_model(&self, model: Option<&str>) -> bool {
        if self.policy.models.is_empty() {
            return true;
        }
        model.is_some_and(|m| self.policy.models.iter().any(|p| glob(p, m)))
    }

    /// Whether the key may reach `provider` (a provider's or router's name).
    pub fn allows_provider(&self, provider: &str) -> bool {
        self.policy.providers.is_empty() || self.policy.providers.iter().any(|p| p == provider)
    }
}

/// `*` matches any run of characters; everything else matches itself. Written here because
/// model patterns need nothing more, and a glob crate would bring path semantics (`/`) that
/// model names (`meta-llama/Llama-3`) must not have.
pub fn glob(pattern: &str, text: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or("");
    let Some(mut rest) = text.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        return rest.is_empty();
    };
    for part in middle {
        match rest.find(part) {
            Some(i) => rest = &rest[i + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_model_names() {
        for (p, t, want) in [
            ("gpt-4o-mini", "gpt-4o-mini", true),
            ("gpt-4o-mini", "gpt-4o", false),
            ("claude-*", "claude-sonnet-4-5", true),
            ("claude-*", "gpt-4o", false),
            ("*", "anything", true),
            ("*mini", "gpt-4o-mini", true),
            ("gpt-*-mini", "gpt-4o-mini", true),
            ("gpt-*-mini", "gpt-4o", false),
            ("a*a", "a", false),
            ("meta-llama/*", "meta-llama/Llama-3", true),
        ] {
            assert_eq!(glob(p, t), want, "{p} vs {t}");
        }
    }
}
