//! The pricing matcher on arbitrary provider and model names and token counts, with the bill's
//! service tier, web searches and time: never panics, and a cost, when known, is finite and
//! not negative. Input that starts with `{` is also read as a price file (the format `tally
//! prices update` accepts from anywhere): refused or accepted, never a panic.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use tally_ingest::Tokens;
use tally_proxy::pricing::Usage;
use tally_proxy::PricingTable;

fn table() -> &'static PricingTable {
    static T: OnceLock<PricingTable> = OnceLock::new();
    T.get_or_init(|| PricingTable::builtin().expect("the built-in table parses"))
}

fuzz_target!(|data: &[u8]| {
    if data.first() == Some(&b'{') {
        let _ = PricingTable::check_catalog(&String::from_utf8_lossy(data));
    }
    if data.len() < 40 {
        return;
    }
    let n = |i: usize| u64::from_le_bytes(data[i..i + 8].try_into().expect("8 bytes")) >> 20;
    let tokens = Tokens {
        prompt: n(0),
        completion: n(8),
        cache_read: n(16),
        cache_write: n(24),
        cache_write_1h: n(24) / 2,
        reasoning: n(32),
    };
    let text = String::from_utf8_lossy(&data[40..]);
    let (provider, model) = text.split_once('|').unwrap_or(("openai", &text));
    let _ = table().lookup(provider, model);
    let tiers = [None, Some("flex"), Some("priority"), Some("batch")];
    let usage = Usage {
        tokens,
        service_tier: tiers[data[0] as usize % tiers.len()],
        web_search_calls: u64::from(data[1]),
        at_ms: Some(n(2) as i64 * 1000),
    };
    if let Some(c) = table().bill(provider, model, &usage) {
        assert!(
            c.is_finite() && c >= 0.0,
            "{provider} {model} {usage:?} -> {c}"
        );
    }
});
