//! The URL query every page and endpoint shares: a time range plus the request filters.
//!
//! A page's whole state is in its query string, so a link reproduces the view. Unknown
//! parameters are an error (a typo must not silently widen a view).

use std::collections::BTreeMap;

use crate::error::ApiError;
use crate::store::{Cursor, RequestFilter, StatusFilter};

/// Page size when `limit` is unset.
pub const DEFAULT_LIMIT: usize = 50;
/// Largest page a client may ask for.
pub const MAX_LIMIT: usize = 1000;

/// The preset ranges of the range selector, as (parameter value, label, milliseconds).
pub const PRESETS: [(&str, &str, i64); 4] = [
    ("1h", "Last hour", 3_600_000),
    ("24h", "Last day", 86_400_000),
    ("7d", "Last week", 7 * 86_400_000),
    ("30d", "Last month", 30 * 86_400_000),
];

/// Chart bucket widths, smallest first; the first that keeps a chart at most
/// [`MAX_POINTS`] points wide is used.
const BUCKETS: [i64; 9] = [
    60_000,
    5 * 60_000,
    15 * 60_000,
    3_600_000,
    3 * 3_600_000,
    6 * 3_600_000,
    12 * 3_600_000,
    86_400_000,
    7 * 86_400_000,
];
const MAX_POINTS: i64 = 120;

/// The time window of a view, `[from_ms, to_ms)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeRange {
    /// Start, ms since the epoch.
    pub from_ms: i64,
    /// End (exclusive), ms since the epoch.
    pub to_ms: i64,
    /// The preset it came from (`24h`…), or `None` when custom.
    pub preset: Option<&'static str>,
}

impl TimeRange {
    /// The chart bucket width for this range.
    pub fn bucket_ms(&self) -> i64 {
        let span = (self.to_ms - self.from_ms).max(1);
        BUCKETS
            .iter()
            .copied()
            .find(|b| span / b <= MAX_POINTS)
            .unwrap_or(BUCKETS[BUCKETS.len() - 1])
    }

    /// Starts of every bucket that overlaps the range, oldest first.
    pub fn bucket_starts(&self) -> Vec<i64> {
        let b = self.bucket_ms();
        let mut t = self.from_ms.div_euclid(b) * b;
        let mut out = Vec::new();
        while t < self.to_ms && out.len() <= MAX_POINTS as usize + 1 {
            out.push(t);
            t += b;
        }
        out
    }
}

/// A parsed query: range, filter, and any page-specific parameters.
#[derive(Debug, Clone)]
pub struct ViewQuery {
    /// The time window; also set on `filter`.
    pub range: TimeRange,
    /// Filters for the store, with `from_ms`/`to_ms` from `range`.
    pub filter: RequestFilter,
    /// Page-specific parameters that were allowed and present.
    pub extra: BTreeMap<String, String>,
    /// Every parameter as given, to rebuild links.
    pub params: BTreeMap<String, String>,
    /// Reload the page every this many seconds (a `<meta http-equiv="refresh">`, no script).
    pub refresh: Option<u32>,
}

impl ViewQuery {
    /// Parses a page's query. Without `from`/`to`/`range`, the range is the last day ending
    /// `now_ms`. `extra` names the page-specific parameters the page accepts.
    pub fn parse(
        q: &BTreeMap<String, String>,
        extra: &[&str],
        now_ms: i64,
    ) -> Result<Self, ApiError> {
        let mut f = parse_filter(q, &["range", "refresh"], extra)?;
        let refresh = match q.get("refresh").map(String::as_str) {
            None | Some("") | Some("off") => None,
            Some(v) => Some(
                v.parse::<u32>()
                    .ok()
                    .filter(|s| (5..=3600).contains(s))
                    .ok_or_else(|| {
                        ApiError::BadRequest(format!(
                            "refresh: expected seconds between 5 and 3600, got {v:?}"
                        ))
                    })?,
            ),
        };
        let range = match (q.get("range").map(String::as_str), f.from_ms, f.to_ms) {
            (Some(r), None, None) if r != "custom" => {
                let (name, _, ms) = PRESETS.iter().find(|p| p.0 == r).ok_or_else(|| {
                    ApiError::BadRequest(format!(
                        "range: expected one of 1h, 24h, 7d, 30d or custom, got {r:?}"
                    ))
                })?;
                TimeRange {
                    from_ms: now_ms - ms,
                    to_ms: now_ms,
                    preset: Some(name),
                }
            }
            (_, None, None) => TimeRange {
                from_ms: now_ms - PRESETS[1].2,
                to_ms: now_ms,
                preset: Some(PRESETS[1].0),
            },
            (_, from, to) => {
                let to = to.unwrap_or(now_ms);
                let from = from.unwrap_or(to - PRESETS[1].2);
                if from >= to {
                    return Err(ApiError::BadRequest(
                        "from: must be earlier than to".to_owned(),
                    ));
                }
                TimeRange {
                    from_ms: from,
                    to_ms: to,
                    preset: None,
                }
            }
        };
        f.from_ms = Some(range.from_ms);
        f.to_ms = Some(range.to_ms);
        let extra = q
            .iter()
            .filter(|(k, _)| extra.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        Ok(Self {
            range,
            filter: f,
            extra,
            params: q.clone(),
            refresh,
        })
    }

    /// This view's query string with `changes` applied (`None` removes a parameter).
    pub fn link(&self, path: &str, changes: &[(&str, Option<&str>)]) -> String {
        let mut p = self.params.clone();
        for (k, v) in changes {
            match v {
                Some(v) => p.insert((*k).to_owned(), (*v).to_owned()),
                None => p.remove(*k),
            };
        }
        p.retain(|_, v| !v.is_empty());
        if p.is_empty() {
            return path.to_owned();
        }
        let qs = serde_urlencoded::to_string(&p).unwrap_or_default();
        format!("{path}?{qs}")
    }
}

/// Accepts RFC 3339 (`2026-11-22T00:00:00Z`), a form's `datetime-local` value taken as UTC
/// (`2026-11-22T00:00`), or milliseconds since the epoch.
fn parse_time(name: &str, v: &str) -> Result<i64, ApiError> {
    if let Ok(ms) = v.parse::<i64>() {
        return Ok(ms);
    }
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(v) {
        return Ok(t.timestamp_millis());
    }
    for fmt in ["%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S"] {
        if let Ok(t) = chrono::NaiveDateTime::parse_from_str(v, fmt) {
            return Ok(t.and_utc().timestamp_millis());
        }
    }
    Err(ApiError::BadRequest(format!(
        "{name}: expected RFC 3339 time or epoch milliseconds, got {v:?}"
    )))
}

/// The request filter of a query. `ignore` names parameters handled elsewhere and `extra`
/// page-specific ones; anything else unknown is an error.
pub fn parse_filter(
    q: &BTreeMap<String, String>,
    ignore: &[&str],
    extra: &[&str],
) -> Result<RequestFilter, ApiError> {
    let mut f = RequestFilter {
        limit: DEFAULT_LIMIT,
        ..RequestFilter::default()
    };
    let text = |v: &String| (!v.is_empty()).then(|| v.clone());
    for (k, v) in q {
        match k.as_str() {
            "limit" => {
                f.limit = v
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=MAX_LIMIT).contains(n))
                    .ok_or_else(|| {
                        ApiError::BadRequest(format!("limit: expected 1..={MAX_LIMIT}, got {v:?}"))
                    })?
            }
            "cursor" if !v.is_empty() => {
                f.cursor = Some(Cursor::decode(v).ok_or_else(|| {
                    ApiError::BadRequest("cursor: not a cursor from next_cursor".into())
                })?)
            }
            "from" if !v.is_empty() => f.from_ms = Some(parse_time("from", v)?),
            "to" if !v.is_empty() => f.to_ms = Some(parse_time("to", v)?),
            "cursor" | "from" | "to" => {}
            "user_id" => f.user_id = text(v),
            "session_id" => f.session_id = text(v),
            "model" => f.model = text(v),
            "provider" => f.provider = text(v),
            "key_name" => f.key_name = text(v),
            "status" if v.is_empty() => {}
            "status" => {
                f.status = Some(StatusFilter::parse(v).ok_or_else(|| {
                    ApiError::BadRequest(format!(
                        "status: expected a code like 429 or a class like 5xx, got {v:?}"
                    ))
                })?)
            }
            other if ignore.contains(&other) || extra.contains(&other) => {}
            other => {
                if let Some(name) = other.strip_prefix("property.") {
                    if name.is_empty() {
                        return Err(ApiError::BadRequest("property.: name is empty".into()));
                    }
                    f.properties.push((name.to_ascii_lowercase(), v.clone()));
                } else {
                    return Err(ApiError::BadRequest(format!("unknown parameter {other:?}")));
                }
            }
        }
    }
    f.properties.sort();
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn filter_parsing() {
        let f = parse_filter(
            &q(&[
                ("limit", "10"),
                ("status", "5xx"),
                ("from", "2026-11-22T00:00:00Z"),
                ("property.Env", "prod"),
            ]),
            &[],
            &[],
        )
        .expect("valid");
        assert_eq!(f.limit, 10);
        assert_eq!(f.status, Some(StatusFilter::Class(5)));
        assert_eq!(f.from_ms, Some(1_795_305_600_000));
        assert_eq!(f.properties, vec![("env".into(), "prod".into())]);
        for bad in [
            ("limit", "0"),
            ("status", "abc"),
            ("from", "yesterday"),
            ("nope", "1"),
            ("cursor", "x"),
        ] {
            assert!(parse_filter(&q(&[bad]), &[], &[]).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn ranges_and_buckets() {
        let now = 1_795_305_600_000;
        let v = ViewQuery::parse(&q(&[("range", "1h")]), &[], now).expect("valid");
        assert_eq!(v.range.to_ms - v.range.from_ms, 3_600_000);
        assert_eq!(v.range.bucket_ms(), 60_000);
        assert_eq!(v.range.bucket_starts().len(), 60);
        let v = ViewQuery::parse(&q(&[]), &[], now).expect("valid");
        assert_eq!(v.range.preset, Some("24h"));
        assert_eq!(v.range.bucket_ms(), 15 * 60_000);
        let v = ViewQuery::parse(
            &q(&[("from", "2026-11-21T00:00"), ("to", "2026-11-22T00:00")]),
            &[],
            now,
        )
        .expect("valid");
        assert_eq!((v.range.from_ms, v.range.to_ms), (now - 86_400_000, now));
        assert!(ViewQuery::parse(&q(&[("range", "2y")]), &[], now).is_err());
        assert!(ViewQuery::parse(&q(&[("from", "2"), ("to", "1")]), &[], now).is_err());
        assert_eq!(
            v.link("/requests", &[("model", Some("gpt-4o")), ("from", None)]),
            "/requests?model=gpt-4o&to=2026-11-22T00%3A00"
        );
        let v = ViewQuery::parse(&q(&[("refresh", "30")]), &[], now).expect("valid");
        assert_eq!(v.refresh, Some(30));
        assert!(ViewQuery::parse(&q(&[("refresh", "1")]), &[], now).is_err());
    }
}
