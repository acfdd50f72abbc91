//! How numbers, times and ids are written on the dashboard: once, for every page and the API.

/// Milliseconds since the epoch as RFC 3339 UTC with milliseconds: `2026-11-22T02:31:10.123Z`.
pub fn format_ts(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
        .unwrap_or_default()
}

/// Now, in milliseconds since the epoch.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// A time as a `datetime-local` input's value (UTC, minutes).
pub fn input_time(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%dT%H:%M").to_string())
        .unwrap_or_default()
}

/// A count with thousands separators: `1,234,567`.
pub fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Dollars with enough digits for sub-cent requests.
pub fn usd(v: f64) -> String {
    if v == 0.0 {
        "$0".to_owned()
    } else if v.abs() >= 100.0 {
        format!("${v:.2}")
    } else if v.abs() >= 0.01 {
        format!("${v:.4}")
    } else {
        format!("${v:.6}")
    }
}

/// A ratio as a percentage with one decimal.
pub fn pct(v: f64) -> String {
    format!("{:.1}%", v * 100.0)
}

/// A duration in ms, or seconds from 10 s on; `–` when unknown.
pub fn ms(v: Option<u64>) -> String {
    match v {
        None => "–".to_owned(),
        Some(v) if v >= 10_000 => format!("{:.1} s", v as f64 / 1000.0),
        Some(v) => format!("{v} ms"),
    }
}

/// A path segment: every byte but `A-Za-z0-9-._~` percent-encoded (a `+` or `/` in an id must
/// survive the round trip through the router's `Path` extractor).
pub fn enc(s: &str) -> String {
    const SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'.')
        .remove(b'_')
        .remove(b'~');
    percent_encoding::utf8_percent_encode(s, SEGMENT).to_string()
}

/// Budgets are set in dollars and cents; sub-cent digits would be noise there.
pub fn usd_cents(v: f64) -> String {
    format!("${v:.2}")
}

/// An axis label for a count: one decimal below 10 when fractional.
pub fn fmt_count(v: f64) -> String {
    if v < 10.0 && v.fract() != 0.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.0}")
    }
}

/// An axis label in dollars.
pub fn fmt_usd(v: f64) -> String {
    usd(v)
}

/// An axis label in milliseconds.
pub fn fmt_ms(v: f64) -> String {
    format!("{v:.0} ms")
}

/// An axis label as a percentage.
pub fn fmt_pct(v: f64) -> String {
    pct(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(format_ts(1_795_305_600_123), "2026-11-22T00:00:00.123Z");
        assert_eq!(thousands(1234567), "1,234,567");
        assert_eq!(thousands(12), "12");
        assert_eq!(usd(0.0), "$0");
        assert_eq!(usd(0.00123), "$0.001230");
        assert_eq!(usd(1.5), "$1.5000");
        assert_eq!(ms(Some(12_345)), "12.3 s");
        assert_eq!(enc("a b/c+d"), "a%20b%2Fc%2Bd");
        assert_eq!(usd_cents(5.0123), "$5.01");
    }
}
