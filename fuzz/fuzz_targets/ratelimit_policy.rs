//! `Tally-RateLimit-Policy` values (Helicone's `100;w=60;u=cents;s=user` syntax) from arbitrary
//! text: parsing never panics, whatever the client sends.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tally_proxy::stages::ratelimit::Policy;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = Policy::parse_header(&text);
});
