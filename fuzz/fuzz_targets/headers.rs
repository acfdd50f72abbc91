//! Tally's header parsing and the key hint on arbitrary header names and values: never panics,
//! and a key hint never contains more than the last four characters of the key.
#![no_main]

use http::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut headers = HeaderMap::new();
    // Lines of `name:value`; whatever http accepts as a name and value goes in.
    for line in data.split(|b| *b == b'\n') {
        let Some(i) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        let (name, value) = (&line[..i], &line[i + 1..]);
        if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(name), HeaderValue::from_bytes(value)) {
            headers.append(n, v);
        }
    }
    let _ = tally_proxy::headers::parse(&headers);
    for name in headers.keys() {
        let _ = tally_proxy::headers::is_tally_header(name.as_str());
    }
    if let Some(hint) = tally_proxy::headers::key_hint(
        &headers,
        &["authorization", "x-api-key", "api-key", "x-goog-api-key"],
    ) {
        assert!(hint.chars().count() <= 10, "hint too long: {hint:?}");
    }
});
