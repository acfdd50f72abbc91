//! Keeping the caller's key out of what Tally stores.
//!
//! Tally forwards the provider key and records only its hint, but an upstream may echo the key
//! back: a 401 body quoting it, an error about a `?key=` URL, an error event inside a stream.
//! Those land in `error` and `response_body`. Tally knows the key it forwarded, so it masks
//! that exact value everywhere it stores text, and also anything shaped like a provider key
//! (`sk-…`, `sk-ant-…`, `AIza…`), since an upstream may quote a different one.

use http::{HeaderMap, HeaderValue};

/// Shortest secret worth searching for: shorter values would match ordinary text.
const MIN_SECRET_LEN: usize = 8;

/// The keys a request presented: header values (as forwarded) and a `key=` query parameter.
#[derive(Debug, Default)]
pub(crate) struct Presented {
    /// Reference-counted header values: keeping them costs no copy.
    headers: smallvec::SmallVec<[HeaderValue; 2]>,
    /// `?key=` (Gemini's API keys travel there).
    query_key: Option<String>,
    /// The Tally key the request authenticated with: removed from the request, but masked
    /// like the others should an upstream or a body ever quote it.
    tally_key: Option<String>,
}

impl Presented {
    /// What `key_headers` (the wire format's list) and the query hold.
    pub(crate) fn from_request(
        headers: &HeaderMap,
        key_headers: &[&str],
        query: Option<&str>,
    ) -> Self {
        let mut p = Self::default();
        for h in key_headers {
            p.headers.extend(headers.get_all(*h).iter().cloned());
        }
        p.query_key = query.and_then(|q| {
            q.split('&')
                .filter_map(|kv| kv.split_once('='))
                .find(|(k, _)| *k == "key")
                .map(|(_, v)| {
                    percent_encoding::percent_decode_str(v)
                        .decode_utf8_lossy()
                        .into_owned()
                })
        });
        p
    }

    /// The hint of a `?key=` query parameter, for requests that carry their key only there.
    pub(crate) fn query_hint(&self) -> Option<String> {
        self.query_key.as_deref().and_then(crate::headers::hint_of)
    }

    /// Whether the request carried no key at all.
    pub(crate) fn is_empty(&self) -> bool {
        self.headers.is_empty() && self.query_key.is_none()
    }

    /// Takes the Tally key out of the keys forwarded (the held credential replaces it) but
    /// keeps masking it.
    pub(crate) fn forget_tally_key(&mut self, text: &str) {
        self.headers
            .retain(|v| crate::headers::tally_key(v).is_none());
        self.tally_key = Some(text.to_owned());
    }

    /// Adds a key Tally sends on the request's behalf, so an echo of it is masked too.
    pub(crate) fn hold(&mut self, value: HeaderValue) {
        self.headers.push(value);
    }

    /// Each secret as text: a header's value without its `Bearer ` scheme, and the query key.
    fn secrets(&self) -> impl Iterator<Item = &str> {
        self.headers
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(crate::headers::bare_key)
            .chain(self.query_key.as_deref())
            .chain(self.tally_key.as_deref())
            .filter(|s| s.len() >= MIN_SECRET_LEN)
    }

    /// `text` with every presented key and every key-shaped token masked; `None` when there
    /// was nothing to mask (the common case costs a few substring searches and no copy).
    pub(crate) fn masked(&self, text: &str) -> Option<String> {
        let mut out: Option<String> = None;
        for secret in self.secrets() {
            let current = out.as_deref().unwrap_or(text);
            if current.contains(secret) {
                out = Some(current.replace(secret, &hint(secret)));
            }
        }
        let current = out.as_deref().unwrap_or(text);
        match mask_key_shapes(current) {
            Some(m) => Some(m),
            None => out,
        }
    }

    /// Masks `field` in place.
    pub(crate) fn mask(&self, field: &mut Option<String>) {
        if let Some(m) = field.as_deref().and_then(|t| self.masked(t)) {
            *field = Some(m);
        }
    }
}

/// The shown form of a secret: its first three and last four characters at most.
fn hint(secret: &str) -> String {
    let chars: Vec<char> = secret.chars().collect();
    if chars.len() < 12 {
        return "…".to_owned();
    }
    let head: String = chars[..3].iter().collect();
    let tail: String = chars[chars.len() - 4..].iter().collect();
    format!("{head}…{tail}")
}

/// Prefixes of provider keys, and the shortest run of key characters after them that is a key
/// rather than prose (`sk-` alone starts ordinary words in some languages).
const SHAPES: &[(&str, usize)] = &[("sk-", 20), ("AIza", 30), ("tly-", 20)];

fn key_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

/// `text` with every key-shaped token (`sk-` or `AIza` followed by enough key characters, not
/// inside a longer word) replaced by its hint; `None` when there is none.
pub(crate) fn mask_key_shapes(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut cuts: Vec<(usize, usize)> = Vec::new();
    for (prefix, min) in SHAPES {
        for start in memchr::memmem::find_iter(bytes, prefix.as_bytes()) {
            if start > 0 && key_char(bytes[start - 1]) {
                continue;
            }
            let body = start + prefix.len();
            let end = body + bytes[body..].iter().take_while(|b| key_char(**b)).count();
            if end - body >= *min && !cuts.iter().any(|(s, e)| start < *e && *s < end) {
                cuts.push((start, end));
            }
        }
    }
    if cuts.is_empty() {
        return None;
    }
    cuts.sort_unstable();
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    for (s, e) in cuts {
        out.push_str(&text[at..s]);
        out.push_str(&hint(&text[s..e]));
        at = e;
    }
    out.push_str(&text[at..]);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn presented(pairs: &[(&str, &str)], query: Option<&str>) -> Presented {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).expect("name"),
                HeaderValue::from_str(v).expect("value"),
            );
        }
        Presented::from_request(&h, &["authorization", "x-goog-api-key"], query)
    }

    #[test]
    fn the_presented_key_is_masked_wherever_it_is_echoed() {
        let p = presented(
            &[("authorization", "Bearer my-own-gateway-secret-1234")],
            None,
        );
        let body = r#"{"error":{"message":"invalid key my-own-gateway-secret-1234"}}"#;
        let m = p.masked(body).expect("masked");
        assert!(!m.contains("gateway-secret"), "{m}");
        assert!(m.contains("my-…1234"));
        assert_eq!(p.masked("nothing to see"), None);
    }

    #[test]
    fn a_query_key_is_masked_too() {
        let p = presented(
            &[],
            Some("alt=sse&key=AIzaSyA-query-key-0123456789abcdefghij"),
        );
        let m = p
            .masked("API key AIzaSyA-query-key-0123456789abcdefghij not valid")
            .expect("masked");
        assert!(!m.contains("query-key"), "{m}");
    }

    #[test]
    fn key_shapes_are_masked_but_prose_is_not() {
        let t = "got sk-proj-AbCdEfGhIjKlMnOpQrStUvWx and AIzaSyD0123456789abcdefghijklmnopqrs.";
        let m = mask_key_shapes(t).expect("masked");
        assert!(
            !m.contains("AbCdEfGh") && !m.contains("0123456789abc"),
            "{m}"
        );
        assert!(m.starts_with("got sk-…UvWx and AIz…pqrs"), "{m}");
        for prose in [
            "desk-top",
            "a task-list",
            "sk-short",
            "risk-free-investment",
        ] {
            assert_eq!(mask_key_shapes(prose), None, "{prose}");
        }
    }
}
