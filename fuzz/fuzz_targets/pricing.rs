//! The pricing matcher on arbitrary provider and model names and token counts: never panics,
//! and a cost, when known, is finite and not negative.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use tally_ingest::Tokens;
use tally_proxy::PricingTable;

fn table() -> &'static PricingTable {
    static T: OnceLock<PricingTable> = OnceLock::new();
    T.get_or_init(|| PricingTable::builtin().expect("the built-in table parses"))
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 40 {
        return;
    }
    let n = |i: usize| u64::from_le_bytes(data[i..i + 8].try_into().expect("8 bytes")) >> 20;
    let tokens = Tokens {
        prompt: n(0),
        completion: n(8),
        cache_read: n(16),
        cache_write: n(24),
        reasoning: n(32),
    };
    let text = String::from_utf8_lossy(&data[40..]);
    let (provider, model) = text.split_once('|').unwrap_or(("openai", &text));
    let _ = table().lookup(provider, model);
    if let Some(c) = table().cost(provider, model, &tokens) {
        assert!(
            c.is_finite() && c >= 0.0,
            "{provider} {model} {tokens:?} -> {c}"
        );
    }
});
