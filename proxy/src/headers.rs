//! Tally's request headers (and their `Helicone-*` aliases): parsing, validation, stripping, and
//! the provider-key hint.

use std::collections::BTreeMap;

use http::HeaderMap;

/// Longest accepted value of a tagging header; longer values are refused rather than cut, so a
/// user never sees a silently shortened session id.
pub const MAX_HEADER_VALUE_LEN: usize = 1024;
/// Most `Tally-Property-*` headers on one request.
pub const MAX_PROPERTIES: usize = 64;

/// Who and what a request is for, from the tagging headers.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Attribution {
    /// `Tally-User-Id` / `Helicone-User-Id`.
    pub user_id: Option<String>,
    /// `Tally-Session-Id` / `Helicone-Session-Id`.
    pub session_id: Option<String>,
    /// `Tally-Session-Path` / `Helicone-Session-Path`, always starting with `/`.
    pub session_path: Option<String>,
    /// `Tally-Session-Name` / `Helicone-Session-Name`.
    pub session_name: Option<String>,
    /// `Tally-Property-<name>` / `Helicone-Property-<name>`, names lower-cased.
    pub properties: BTreeMap<String, String>,
    /// `Tally-Cache` / `Helicone-Cache-Enabled`, when sent.
    pub cache: Option<bool>,
    /// `Tally-Cache-Ttl` in seconds.
    pub cache_ttl_secs: Option<u64>,
    /// `Tally-Cache-Namespace` / `Tally-Cache-Seed` / `Helicone-Cache-Seed`: requests in
    /// different namespaces never share cached answers.
    pub cache_namespace: Option<String>,
    /// `Tally-Router`: send the request through this router.
    pub router: Option<String>,
    /// `Tally-RateLimit-Policy` / `Helicone-RateLimit-Policy`, e.g. `100;w=60;s=user`.
    pub rate_limit: Option<crate::stages::ratelimit::Policy>,
    /// Do not log the request body (`Tally-Omit-Bodies`, `Helicone-Omit-Request`).
    pub omit_request_body: bool,
    /// Do not log the response body (`Tally-Omit-Bodies`, `Helicone-Omit-Response`).
    pub omit_response_body: bool,
}

/// A tagging header that cannot be used; the client gets a 400 naming it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid header {header}: {reason}")]
pub struct HeaderError {
    /// The header as the client sent it (lower-case, as HTTP/2 and hyper normalise names).
    pub header: String,
    /// Why it was refused.
    pub reason: String,
}

fn err(header: &str, reason: impl Into<String>) -> HeaderError {
    HeaderError {
        header: header.to_owned(),
        reason: reason.into(),
    }
}

/// True for headers Tally consumes and never forwards.
pub fn is_tally_header(name: &str) -> bool {
    let n = name.as_bytes();
    let starts = |p: &[u8]| n.len() >= p.len() && n[..p.len()].eq_ignore_ascii_case(p);
    starts(b"tally-") || starts(b"helicone-")
}

fn parse_bool(name: &str, value: &str) -> Result<bool, HeaderError> {
    match value.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" => Ok(true),
        "false" | "0" | "no" => Ok(false),
        _ => Err(err(name, format!("expected true or false, got {value:?}"))),
    }
}

/// Reads the tagging headers. Unknown `Tally-*` headers are ignored (and still stripped), so a
/// newer client does not break an older Tally.
pub fn parse(headers: &HeaderMap) -> Result<Attribution, HeaderError> {
    let mut a = Attribution::default();
    for (name, value) in headers {
        let name = name.as_str();
        if !is_tally_header(name) {
            continue;
        }
        // UTF-8 is accepted (a property value may well be "café"); other bytes are refused.
        let value = std::str::from_utf8(value.as_bytes())
            .map_err(|_| err(name, "value is not valid UTF-8"))?
            .trim();
        if value.len() > MAX_HEADER_VALUE_LEN {
            return Err(err(
                name,
                format!("value is longer than {MAX_HEADER_VALUE_LEN} bytes"),
            ));
        }
        let lower = name.to_ascii_lowercase();
        let key = lower
            .strip_prefix("tally-")
            .or_else(|| lower.strip_prefix("helicone-"))
            .unwrap_or(&lower);
        // A tag sent twice (or as a Tally and a Helicone header) with two values has no one
        // meaning: which one wins would be an accident of header order.
        let set = |slot: &mut Option<String>| -> Result<(), HeaderError> {
            if value.is_empty() {
                return Err(err(name, "value is empty"));
            }
            match slot {
                Some(old) if old != value => Err(err(
                    name,
                    format!("sent twice with different values ({old:?} and {value:?})"),
                )),
                _ => {
                    *slot = Some(value.to_owned());
                    Ok(())
                }
            }
        };
        match key {
            "user-id" => set(&mut a.user_id)?,
            "session-id" => set(&mut a.session_id)?,
            "session-name" => set(&mut a.session_name)?,
            "session-path" => {
                if !value.starts_with('/') {
                    return Err(err(name, "must start with '/', e.g. /plan/step-1"));
                }
                set(&mut a.session_path)?;
            }
            "cache" | "cache-enabled" => a.cache = Some(parse_bool(name, value)?),
            "cache-namespace" | "cache-seed" => set(&mut a.cache_namespace)?,
            "router" => set(&mut a.router)?,
            "ratelimit-policy" | "rate-limit-policy" => {
                a.rate_limit = Some(
                    crate::stages::ratelimit::Policy::parse_header(value)
                        .map_err(|reason| err(name, reason))?,
                );
            }
            "cache-ttl" => {
                let ttl = value
                    .parse::<u64>()
                    .map_err(|_| err(name, format!("expected whole seconds, got {value:?}")))?;
                a.cache_ttl_secs = Some(ttl);
            }
            "omit-bodies" => {
                let omit = parse_bool(name, value)?;
                a.omit_request_body = omit;
                a.omit_response_body = omit;
            }
            "omit-request" => a.omit_request_body = parse_bool(name, value)?,
            "omit-response" => a.omit_response_body = parse_bool(name, value)?,
            _ => {
                if let Some(prop) = key.strip_prefix("property-") {
                    if prop.is_empty() {
                        return Err(err(name, "property name is empty"));
                    }
                    if let Some(old) = a.properties.get(prop).filter(|old| *old != value) {
                        return Err(err(
                            name,
                            format!("sent twice with different values ({old:?} and {value:?})"),
                        ));
                    }
                    if a.properties.len() >= MAX_PROPERTIES && !a.properties.contains_key(prop) {
                        return Err(err(name, format!("more than {MAX_PROPERTIES} properties")));
                    }
                    a.properties.insert(prop.to_owned(), value.to_owned());
                }
            }
        }
    }
    Ok(a)
}

/// A recognisable but useless fragment of the provider key, from the first of `key_headers`
/// the request has (the wire format's list): `sk-…abcd` (a short vendor prefix and the last four
/// characters). Keys shorter than 12 characters, where four characters would be a real share of
/// the secret, show only `…`.
pub fn key_hint(headers: &HeaderMap, key_headers: &[&str]) -> Option<String> {
    let raw = key_headers
        .iter()
        .find_map(|h| headers.get(*h).and_then(|v| v.to_str().ok()))
        .map(bare_key)?;
    hint_of(raw)
}

/// The headers SDKs send their key in, across every wire format.
pub(crate) const SDK_KEY_HEADERS: [&str; 4] =
    ["authorization", "x-api-key", "api-key", "x-goog-api-key"];

/// The Tally key (`tly-…`) a key header's value carries, if it carries one.
pub(crate) fn tally_key(value: &http::HeaderValue) -> Option<&str> {
    let bare = bare_key(value.to_str().ok()?);
    tally_keys::secret::is_tally_key(bare).then_some(bare)
}

/// A key header's value without its `Bearer ` scheme: the key itself. For an AWS SigV4
/// `Authorization`, the access key id it names (the signature changes with every request and
/// says nothing about whose it is).
pub(crate) fn bare_key(value: &str) -> &str {
    let v = value.trim();
    if let Some(sigv4) = v.strip_prefix("AWS4-HMAC-SHA256") {
        let credential = sigv4
            .split(',')
            .find_map(|p| p.trim().strip_prefix("Credential="));
        if let Some(c) = credential {
            return c.split('/').next().unwrap_or(c).trim();
        }
    }
    v.strip_prefix("Bearer ")
        .or_else(|| v.strip_prefix("bearer "))
        .unwrap_or(v)
        .trim()
}

/// The hint of one key: its short prefix (`sk-`) and last four characters; `None` when empty.
pub fn hint_of(raw: &str) -> Option<String> {
    if raw.is_empty() {
        return None;
    }
    if raw.len() < 12 || !raw.is_ascii() {
        return Some("…".to_owned());
    }
    let prefix = match raw.find('-') {
        Some(i) if i <= 4 => &raw[..=i],
        _ => "",
    };
    Some(format!("{prefix}…{}", &raw[raw.len() - 4..]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).expect("name"),
                HeaderValue::from_str(v).expect("value"),
            );
        }
        h
    }

    #[test]
    fn a_sigv4_authorization_is_hinted_by_its_access_key() {
        let v = "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20261202/us-east-1/bedrock/aws4_request, SignedHeaders=host;x-amz-date, Signature=fe5f80f77d5fa3beca038a248ff027d0445342fe2855ddc963176630326f1024";
        assert_eq!(bare_key(v), "AKIAIOSFODNN7EXAMPLE");
        assert_eq!(bare_key("Bearer sk-abc"), "sk-abc");
        assert_eq!(
            bare_key("AWS4-HMAC-SHA256 nonsense"),
            "AWS4-HMAC-SHA256 nonsense"
        );
    }

    #[test]
    fn reads_tally_headers_case_insensitively() {
        let a = parse(&headers(&[
            ("Tally-User-Id", "alice"),
            ("TALLY-SESSION-ID", "s-1"),
            ("tally-session-path", "/plan/step-1"),
            ("Tally-Session-Name", "Trip planner"),
            ("Tally-Property-Env", "prod"),
            ("Tally-Property-App-Version", "1.2"),
            ("Tally-Cache", "true"),
            ("Tally-Cache-Ttl", "60"),
            ("Tally-Omit-Bodies", "true"),
            ("Authorization", "Bearer sk-should-not-matter"),
        ]))
        .expect("valid");
        assert_eq!(a.user_id.as_deref(), Some("alice"));
        assert_eq!(a.session_id.as_deref(), Some("s-1"));
        assert_eq!(a.session_path.as_deref(), Some("/plan/step-1"));
        assert_eq!(a.session_name.as_deref(), Some("Trip planner"));
        assert_eq!(a.properties.get("env").map(String::as_str), Some("prod"));
        assert_eq!(
            a.properties.get("app-version").map(String::as_str),
            Some("1.2")
        );
        assert!(a.cache == Some(true) && a.omit_request_body && a.omit_response_body);
        assert_eq!(a.cache_ttl_secs, Some(60));
    }

    #[test]
    fn accepts_helicone_aliases() {
        let a = parse(&headers(&[
            ("Helicone-User-Id", "bob"),
            ("Helicone-Session-Id", "s-2"),
            ("Helicone-Property-Team", "search"),
            ("Helicone-Cache-Enabled", "true"),
            ("Helicone-Omit-Response", "true"),
            ("Helicone-Auth", "Bearer sk-helicone-xyz"),
        ]))
        .expect("valid");
        assert_eq!(a.user_id.as_deref(), Some("bob"));
        assert_eq!(a.session_id.as_deref(), Some("s-2"));
        assert_eq!(a.properties.get("team").map(String::as_str), Some("search"));
        assert!(a.cache == Some(true) && a.omit_response_body && !a.omit_request_body);
        assert!(is_tally_header("Helicone-Auth"));
    }

    #[test]
    fn invalid_values_name_the_header() {
        for (h, v, needle) in [
            ("Tally-Cache", "maybe", "true or false"),
            ("Tally-Cache-Ttl", "-5", "whole seconds"),
            ("Tally-Session-Path", "plan/step", "start with '/'"),
            ("Tally-User-Id", "", "empty"),
            ("Tally-Property-", "x", "property name is empty"),
        ] {
            let e = parse(&headers(&[(h, v)])).expect_err(h);
            assert_eq!(e.header, h.to_ascii_lowercase());
            assert!(e.reason.contains(needle), "{h}: {}", e.reason);
        }
        let mut h = HeaderMap::new();
        h.insert(
            "tally-property-city",
            HeaderValue::from_bytes(b"caf\xc3\xa9").expect("obs-text"),
        );
        assert_eq!(parse(&h).expect("utf-8 is fine").properties["city"], "café");
        h.insert(
            "tally-user-id",
            HeaderValue::from_bytes(b"caf\xe9").expect("obs-text"),
        );
        assert!(parse(&h).expect_err("latin-1").reason.contains("UTF-8"));
        let long = "x".repeat(MAX_HEADER_VALUE_LEN + 1);
        assert!(parse(&headers(&[("Tally-User-Id", &long)])).is_err());
    }

    #[test]
    fn a_tag_with_two_values_is_refused_naming_it() {
        for pairs in [
            &[("Tally-User-Id", "alice"), ("Tally-User-Id", "bob")][..],
            &[("Tally-User-Id", "alice"), ("Helicone-User-Id", "bob")],
            &[
                ("Tally-Property-Env", "prod"),
                ("tally-property-env", "dev"),
            ],
            &[("Tally-Session-Id", "a"), ("Helicone-Session-Id", "b")],
        ] {
            let e = parse(&headers(pairs)).expect_err("two values");
            assert!(e.reason.contains("different values"), "{e}");
        }
        // The same value twice is one value.
        let a = parse(&headers(&[
            ("Tally-User-Id", "alice"),
            ("Helicone-User-Id", "alice"),
        ]))
        .expect("same value");
        assert_eq!(a.user_id.as_deref(), Some("alice"));
    }

    #[test]
    fn key_hint_never_reveals_the_key() {
        const KEYS: &[&str] = &["authorization", "x-api-key"];
        let key_hint = |h: &HeaderMap| super::key_hint(h, KEYS);
        let h = headers(&[("authorization", "Bearer sk-proj-abcdefghijklmnop1234")]);
        assert_eq!(key_hint(&h).as_deref(), Some("sk-…1234"));
        let h = headers(&[("x-api-key", "sk-ant-api03-secretsecret-wxyz")]);
        assert_eq!(key_hint(&h).as_deref(), Some("sk-…wxyz"));
        let h = headers(&[("authorization", "Bearer gsk_0123456789abcdef")]);
        assert_eq!(key_hint(&h).as_deref(), Some("…cdef"));
        let h = headers(&[("authorization", "Bearer short")]);
        assert_eq!(key_hint(&h).as_deref(), Some("…"));
        assert_eq!(key_hint(&HeaderMap::new()), None);
        // Only the format's headers are read, in its order.
        let h = headers(&[
            ("x-api-key", "sk-ant-api03-secretsecret-wxyz"),
            ("authorization", "Bearer sk-proj-abcdefghijklmnop1234"),
        ]);
        assert_eq!(
            super::key_hint(&h, &["x-api-key", "authorization"]).as_deref(),
            Some("sk-…wxyz")
        );
        assert_eq!(super::key_hint(&h, &["api-key"]), None);
    }
}
