//! What a budget or rule counts, and the key a request is counted under.

use std::fmt;

use tally_ingest::Record;

/// The requests a budget or rule counts.
///
/// Config syntax: `all`, `user:<id>`, `model:<name>`, `provider:<name>`,
/// `property:<key>=<value>`, `key:<name>` (a Tally key), and the keyed forms `per_user`,
/// `per_model`, `per_provider`, `per_property:<key>`, `per_key`, where each distinct value
/// gets its own counter and limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Every request.
    All,
    /// One user.
    User(String),
    /// One requested model.
    Model(String),
    /// One provider.
    Provider(String),
    /// One property value.
    Property(String, String),
    /// One Tally key, by name.
    Key(String),
    /// Each user separately (requests without a user are not counted).
    PerUser,
    /// Each model separately.
    PerModel,
    /// Each provider separately.
    PerProvider,
    /// Each value of a property key separately.
    PerProperty(String),
    /// Each Tally key separately (requests without one are not counted).
    PerKey,
}

/// The fields of a request a scope looks at, borrowed from a record or from the proxy's view
/// of a request that has not been sent yet.
#[derive(Debug, Clone, Copy)]
pub struct Subject<'a> {
    /// The provider's configured name.
    pub provider: &'a str,
    /// The requested model.
    pub model: Option<&'a str>,
    /// The user.
    pub user_id: Option<&'a str>,
    /// Looks up a property by key.
    pub properties: &'a std::collections::BTreeMap<String, String>,
    /// The Tally key's name.
    pub key_name: Option<&'a str>,
}

impl<'a> From<&'a Record> for Subject<'a> {
    fn from(r: &'a Record) -> Self {
        Subject {
            provider: &r.provider,
            model: r.model.as_deref(),
            user_id: r.user_id.as_deref(),
            properties: &r.properties,
            key_name: r.key_name.as_deref(),
        }
    }
}

/// The scope key of the un-keyed scopes (`all`, `user:x`, …): one counter per budget.
pub const SINGLE_KEY: &str = "*";

impl Scope {
    /// Parses the config syntax.
    pub fn parse(s: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "scope {s:?} is not one of all, user:<id>, model:<name>, provider:<name>, \
                 property:<key>=<value>, key:<name>, per_user, per_model, per_provider, \
                 per_property:<key>, per_key"
            )
        };
        let nonempty = |v: &str| {
            if v.is_empty() {
                Err(bad())
            } else {
                Ok(v.to_owned())
            }
        };
        Ok(match s.trim() {
            "all" => Scope::All,
            "per_user" => Scope::PerUser,
            "per_model" => Scope::PerModel,
            "per_provider" => Scope::PerProvider,
            "per_key" => Scope::PerKey,
            other => {
                let (kind, value) = other.split_once(':').ok_or_else(bad)?;
                match kind {
                    "user" => Scope::User(nonempty(value)?),
                    "model" => Scope::Model(nonempty(value)?),
                    "provider" => Scope::Provider(nonempty(value)?),
                    "key" => Scope::Key(nonempty(value)?),
                    "per_property" => Scope::PerProperty(property_key(value).ok_or_else(bad)?),
                    "property" => {
                        let (k, v) = value.split_once('=').ok_or_else(bad)?;
                        Scope::Property(property_key(k).ok_or_else(bad)?, v.to_owned())
                    }
                    _ => return Err(bad()),
                }
            }
        })
    }

    /// The key `subject` counts under, or `None` when the scope does not cover it. Borrowed,
    /// so the proxy's per-request check allocates nothing.
    pub fn key_of<'a>(&self, s: Subject<'a>) -> Option<&'a str> {
        match self {
            Scope::All => Some(SINGLE_KEY),
            Scope::User(u) => (s.user_id == Some(u.as_str())).then_some(SINGLE_KEY),
            Scope::Model(m) => (s.model == Some(m.as_str())).then_some(SINGLE_KEY),
            Scope::Provider(p) => (s.provider == p).then_some(SINGLE_KEY),
            Scope::Property(k, v) => (s.properties.get(k) == Some(v)).then_some(SINGLE_KEY),
            Scope::Key(k) => (s.key_name == Some(k.as_str())).then_some(SINGLE_KEY),
            Scope::PerUser => s.user_id,
            Scope::PerModel => s.model,
            Scope::PerProvider => Some(s.provider),
            Scope::PerProperty(k) => s.properties.get(k).map(String::as_str),
            Scope::PerKey => s.key_name,
        }
    }

    /// Whether each distinct value has its own counter.
    pub fn is_keyed(&self) -> bool {
        matches!(
            self,
            Scope::PerUser
                | Scope::PerModel
                | Scope::PerProvider
                | Scope::PerProperty(_)
                | Scope::PerKey
        )
    }

    /// Alert rules group by model or provider only.
    pub(crate) fn fits_rule(&self) -> bool {
        matches!(
            self,
            Scope::All
                | Scope::Model(_)
                | Scope::Provider(_)
                | Scope::PerModel
                | Scope::PerProvider
        )
    }

    /// A readable name for a key of this scope (`user alice`, `model gpt-4o`, `everything`).
    pub fn describe_key(&self, key: &str) -> String {
        match self {
            Scope::PerUser => format!("user {key}"),
            Scope::PerModel => format!("model {key}"),
            Scope::PerProvider => format!("provider {key}"),
            Scope::PerProperty(k) => format!("{k}={key}"),
            Scope::PerKey => format!("key {key}"),
            other => other.to_string(),
        }
    }
}

/// Property keys arrive as header-name suffixes, so only token characters can ever match.
fn property_key(k: &str) -> Option<String> {
    let ok = !k.is_empty()
        && k.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    ok.then(|| k.to_ascii_lowercase())
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::All => f.write_str("everything"),
            Scope::User(u) => write!(f, "user {u}"),
            Scope::Model(m) => write!(f, "model {m}"),
            Scope::Provider(p) => write!(f, "provider {p}"),
            Scope::Property(k, v) => write!(f, "{k}={v}"),
            Scope::Key(k) => write!(f, "key {k}"),
            Scope::PerUser => f.write_str("per user"),
            Scope::PerModel => f.write_str("per model"),
            Scope::PerProvider => f.write_str("per provider"),
            Scope::PerProperty(k) => write!(f, "per {k}"),
            Scope::PerKey => f.write_str("per key"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn parse_and_key() {
        let mut props = BTreeMap::new();
        props.insert("team".to_owned(), "search".to_owned());
        let s = Subject {
            provider: "openai",
            model: Some("gpt-4o"),
            user_id: Some("alice"),
            properties: &props,
            key_name: Some("search-team"),
        };
        let key = |text: &str| Scope::parse(text).expect(text).key_of(s).map(str::to_owned);
        assert_eq!(key("all").as_deref(), Some("*"));
        assert_eq!(key("user:alice").as_deref(), Some("*"));
        assert_eq!(key("user:bob"), None);
        assert_eq!(key("model:gpt-4o").as_deref(), Some("*"));
        assert_eq!(key("provider:anthropic"), None);
        assert_eq!(key("property:Team=search").as_deref(), Some("*"));
        assert_eq!(key("property:team=ads"), None);
        assert_eq!(key("per_user").as_deref(), Some("alice"));
        assert_eq!(key("per_model").as_deref(), Some("gpt-4o"));
        assert_eq!(key("per_provider").as_deref(), Some("openai"));
        assert_eq!(key("per_property:team").as_deref(), Some("search"));
        assert_eq!(key("per_property:other"), None);
        assert_eq!(key("key:search-team").as_deref(), Some("*"));
        assert_eq!(key("key:ads"), None);
        assert_eq!(key("per_key").as_deref(), Some("search-team"));
        for bad in [
            "",
            "team",
            "user:",
            "property:team",
            "per_property:a b",
            "x:y",
        ] {
            assert!(Scope::parse(bad).is_err(), "{bad:?}");
        }
    }
}
