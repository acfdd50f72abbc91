//! Tally-issued keys: one per team or service, each with its own limits, swapped on the way
//! out for the provider credential Tally holds.
//!
//! - [`secret`]: what a key looks like (`tly-<id>_<64 hex>`), how it is hashed and hinted.
//!   The id travels inside the secret, so authentication is one map lookup by id and one
//!   constant-time comparison of SHA-256 digests; no key is ever compared as text.
//! - [`key`]: a key's stored document (hash, state, policy) and its checks (expiry, the model
//!   and provider allow-lists).
//! - [`store`]: the keys in the configured store (SQLite or ClickHouse), as versioned JSON
//!   documents; only hashes and hints are written.
//! - [`keyring`]: the in-memory copy the proxy authenticates against, reloaded from the store
//!   every interval, which bounds how long a new key or a revocation takes to reach a replica.
//! - [`admin`]: create, list, show, revoke and rotate, shared by `tally keys` and the admin
//!   API so both behave the same.
//!
//! SHA-256, not a password hash: a key is 256 random bits, so there is no dictionary to slow
//! down, and a slow hash would cost every request its latency.
#![deny(missing_docs)]

pub mod admin;
pub mod key;
pub mod keyring;
pub mod secret;
pub mod store;

pub use admin::{Admin, AdminError, CreateOptions};
pub use key::{Key, KeyPolicy, KeyState};
pub use keyring::{AuthError, Keyring};
pub use secret::Secret;
pub use store::{KeyStore, StoreError};

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
