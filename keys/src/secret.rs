//! The shape of a Tally key.
//!
//! `tly-` + a 12-hex-digit id + `_` + 64 hex digits (256 random bits from the OS). The prefix
//! lets Tally tell its keys from a provider's in any header, and lets secret scanners find a
//! leaked one; the id lets the keyring find the key without searching. Only the SHA-256 of
//! the whole string is stored.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Every Tally key starts so.
pub const PREFIX: &str = "tly-";
const ID_HEX: usize = 12;
const SECRET_HEX: usize = 64;
/// The length of a well-formed key.
pub const LEN: usize = PREFIX.len() + ID_HEX + 1 + SECRET_HEX;

/// A freshly made key: shown once, then only its hash and hint are kept.
pub struct Secret {
    /// The whole key, as the client will send it.
    pub text: String,
    /// Its id (also inside `text`).
    pub id: String,
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secret({})", hint(&self.text))
    }
}

fn random_hex(bytes: usize) -> Result<String, getrandom::Error> {
    let mut buf = vec![0u8; bytes];
    getrandom::getrandom(&mut buf)?;
    Ok(hex::encode(buf))
}

/// A new random id.
pub fn new_id() -> Result<String, getrandom::Error> {
    random_hex(ID_HEX / 2)
}

impl Secret {
    /// A new key with a new id.
    pub fn generate() -> Result<Self, getrandom::Error> {
        Self::for_id(&new_id()?)
    }

    /// A new key for an existing id (rotation keeps the id, so records and limits carry on).
    pub fn for_id(id: &str) -> Result<Self, getrandom::Error> {
        Ok(Self {
            text: format!("{PREFIX}{id}_{}", random_hex(SECRET_HEX / 2)?),
            id: id.to_owned(),
        })
    }
}

/// Whether `presented` claims to be a Tally key (it may still be malformed).
pub fn is_tally_key(presented: &str) -> bool {
    presented.starts_with(PREFIX)
}

/// The id inside a well-formed key, or `None`.
pub fn parse(presented: &str) -> Option<&str> {
    // ASCII first: splitting inside a multi-byte character would panic.
    if presented.len() != LEN || !presented.is_ascii() {
        return None;
    }
    let rest = presented.strip_prefix(PREFIX)?;
    let (id, secret) = rest.split_at(ID_HEX);
    let secret = secret.strip_prefix('_')?;
    let hexy = |s: &str| s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    (hexy(id) && hexy(secret)).then_some(id)
}

/// The stored digest of a key, hex.
pub fn hash(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// Whether `presented` hashes to `stored_hex`, compared in constant time.
pub fn matches(presented: &str, stored_hex: &str) -> bool {
    let Ok(stored) = hex::decode(stored_hex) else {
        return false;
    };
    let digest = Sha256::digest(presented.as_bytes());
    digest.as_slice().ct_eq(&stored).into()
}

/// What may be shown of a key: its prefix and id, and the last four digits.
pub fn hint(text: &str) -> String {
    match parse(text) {
        Some(id) => format!("{PREFIX}{id}…{}", &text[text.len() - 4..]),
        None => "tly-…".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_key_parses_hashes_and_hints() {
        let s = Secret::generate().expect("random");
        assert_eq!(s.text.len(), LEN);
        assert_eq!(parse(&s.text), Some(s.id.as_str()));
        let h = hash(&s.text);
        assert!(matches(&s.text, &h));
        let mut other = s.text.clone().into_bytes();
        let last = other.len() - 1;
        other[last] = if other[last] == b'0' { b'1' } else { b'0' };
        let other = String::from_utf8(other).expect("ascii");
        assert!(!matches(&other, &h), "one character differs");
        assert_eq!(parse(&other), Some(s.id.as_str()));
        let hint = hint(&s.text);
        assert!(hint.starts_with(&format!("tly-{}…", s.id)) && hint.len() < 25);
        assert!(!hint.contains(&s.text[20..60]));
    }

    #[test]
    fn malformed_keys_do_not_parse() {
        let good = Secret::generate().expect("random").text;
        for bad in [
            "",
            "tly-",
            "sk-abc",
            &good[..good.len() - 1],
            &format!("{good}0"),
            &good.replace('_', "-"),
            &good.to_uppercase().replace("TLY-", "tly-"),
            &format!("tly-{}x", "é".repeat(38)),
        ] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
        assert!(!matches(&good, "not hex"));
    }
}
