//! Budget scopes, windows and time zones from arbitrary text: never panics, and a parsed
//! window's bounds always contain the instant they were computed for.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tally_budgets::scope::Scope;
use tally_budgets::window::Window;

fuzz_target!(|data: &[u8]| {
    if data.len() < 8 {
        return;
    }
    // Any instant within ±200 years of the epoch.
    let ts = (i64::from_le_bytes(data[..8].try_into().expect("8 bytes")) % 6_300_000_000_000).abs();
    let text = String::from_utf8_lossy(&data[8..]);
    let mut parts = text.splitn(3, '|');
    let (window, tz, scope) = (
        parts.next().unwrap_or(""),
        parts.next().unwrap_or("UTC"),
        parts.next().unwrap_or(""),
    );
    let _ = Scope::parse(scope);
    let Ok(tz) = Window::parse_timezone(tz) else {
        return;
    };
    if let Ok(w) = Window::parse(window, tz) {
        let b = w.bounds(ts);
        assert!(
            b.start <= ts && ts < b.end,
            "{window} in {tz}: {ts} not in {b:?}"
        );
    }
});
