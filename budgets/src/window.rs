//! Budget windows: calendar periods in a time zone, or a rolling duration kept as buckets.

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Datelike, Duration as ChronoDuration, NaiveDate, TimeZone, Timelike, Utc};
use chrono_tz::Tz;

/// Buckets a rolling window is cut into: its spend is exact to 1/60 of its length.
pub const ROLLING_BUCKETS: i64 = 60;
/// The longest rolling window.
pub const MAX_ROLLING: Duration = Duration::from_secs(366 * 86_400);

/// A calendar period.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Period {
    /// From :00 to :00.
    Hour,
    /// From local midnight to midnight.
    Day,
    /// From Monday 00:00 local (ISO weeks).
    Week,
    /// From the 1st, 00:00 local.
    Month,
}

/// When a budget's spend resets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    /// A calendar period in a time zone: the counter restarts at each boundary.
    Calendar(Period, Tz),
    /// The last `duration`: spend older than that stops counting, bucket by bucket.
    Rolling(Duration),
}

/// One window instance, in milliseconds since the epoch, `[start, end)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    /// First millisecond in the window.
    pub start: i64,
    /// First millisecond after it.
    pub end: i64,
}

impl Bounds {
    /// Share of the window that has passed at `now`, in 0..=1.
    pub fn elapsed(&self, now: i64) -> f64 {
        ((now - self.start) as f64 / (self.end - self.start).max(1) as f64).clamp(0.0, 1.0)
    }
}

impl Window {
    /// Parses `hour`, `day`, `week`, `month` or `rolling:<duration>` (e.g. `rolling:24h`).
    pub fn parse(s: &str, tz: Tz) -> Result<Self, String> {
        let period = match s.trim() {
            "hour" => Period::Hour,
            "day" => Period::Day,
            "week" => Period::Week,
            "month" => Period::Month,
            other => {
                let Some(d) = other.strip_prefix("rolling:") else {
                    return Err(format!(
                        "window {s:?} is not hour, day, week, month or rolling:<duration>"
                    ));
                };
                let d = humantime::parse_duration(d.trim())
                    .map_err(|e| format!("window {s:?}: rolling duration: {e} (e.g. 24h)"))?;
                if d < Duration::from_secs(60) {
                    return Err(format!("window {s:?}: a rolling window is at least 1m"));
                }
                // Found by the `budget_config` fuzz target: durations near i64::MAX
                // milliseconds overflowed the bounds arithmetic.
                if d > MAX_ROLLING {
                    return Err(format!(
                        "window {s:?}: a rolling window is at most 366d (use a calendar window)"
                    ));
                }
                return Ok(Window::Rolling(d));
            }
        };
        Ok(Window::Calendar(period, tz))
    }

    /// Parses an IANA time zone name.
    pub fn parse_timezone(s: &str) -> Result<Tz, String> {
        s.parse::<Tz>()
            .map_err(|_| format!("{s:?} is not an IANA time zone (e.g. UTC, Europe/Berlin)"))
    }

    /// The calendar window holding `ts`, or for a rolling window the `duration` ending at `ts`.
    pub fn bounds(&self, ts: i64) -> Bounds {
        match *self {
            Window::Rolling(d) => {
                let len = d.as_millis() as i64;
                let b = self.bucket_ms();
                // Whole buckets, so that the store's per-bucket sums line up with the ledger.
                let end = (ts.div_euclid(b) + 1) * b;
                Bounds {
                    start: end - len.div_euclid(b) * b,
                    end,
                }
            }
            Window::Calendar(period, tz) => calendar(period, tz, ts),
        }
    }

    /// Bucket length of a rolling window (calendar windows are one bucket).
    pub fn bucket_ms(&self) -> i64 {
        match self {
            Window::Rolling(d) => ((d.as_millis() as i64) / ROLLING_BUCKETS).max(1000),
            Window::Calendar(..) => i64::MAX,
        }
    }
}

fn local_midnight(tz: Tz, date: NaiveDate) -> i64 {
    let naive = date.and_hms_opt(0, 0, 0).unwrap_or_default();
    // A zone may skip midnight (DST at 00:00): take the earliest instant that exists.
    match tz.from_local_datetime(&naive) {
        chrono::LocalResult::Single(t) => t.timestamp_millis(),
        chrono::LocalResult::Ambiguous(a, _) => a.timestamp_millis(),
        chrono::LocalResult::None => tz
            .from_local_datetime(&(naive + ChronoDuration::hours(1)))
            .earliest()
            .map_or(0, |t| t.timestamp_millis()),
    }
}

fn calendar(period: Period, tz: Tz, ts: i64) -> Bounds {
    let utc: DateTime<Utc> = DateTime::from_timestamp_millis(ts).unwrap_or_default();
    let local = utc.with_timezone(&tz);
    match period {
        Period::Hour => {
            // Local hours start at the local :00, which in a few zones (India, Nepal, …) is not
            // a UTC hour boundary.
            let into_hour = i64::from(local.minute()) * 60_000
                + i64::from(local.second()) * 1000
                + ts.rem_euclid(1000);
            let start = ts - into_hour;
            Bounds {
                start,
                end: start + 3_600_000,
            }
        }
        Period::Day => {
            let d = local.date_naive();
            Bounds {
                start: local_midnight(tz, d),
                end: local_midnight(tz, d + ChronoDuration::days(1)),
            }
        }
        Period::Week => {
            let d = local.date_naive()
                - ChronoDuration::days(i64::from(local.weekday().num_days_from_monday()));
            Bounds {
                start: local_midnight(tz, d),
                end: local_midnight(tz, d + ChronoDuration::days(7)),
            }
        }
        Period::Month => {
            let first = NaiveDate::from_ymd_opt(local.year(), local.month(), 1).unwrap_or_default();
            let next = if local.month() == 12 {
                NaiveDate::from_ymd_opt(local.year() + 1, 1, 1)
            } else {
                NaiveDate::from_ymd_opt(local.year(), local.month() + 1, 1)
            }
            .unwrap_or_default();
            Bounds {
                start: local_midnight(tz, first),
                end: local_midnight(tz, next),
            }
        }
    }
}

impl fmt::Display for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Window::Calendar(p, tz) => {
                let p = match p {
                    Period::Hour => "hour",
                    Period::Day => "day",
                    Period::Week => "week",
                    Period::Month => "month",
                };
                write!(f, "{p} ({tz})")
            }
            Window::Rolling(d) => write!(f, "rolling {}", humantime::format_duration(*d)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(s: &str) -> i64 {
        DateTime::parse_from_rfc3339(s)
            .expect("test time")
            .timestamp_millis()
    }

    fn w(s: &str, tz: &str) -> Window {
        Window::parse(s, Window::parse_timezone(tz).expect("tz")).expect("window")
    }

    #[test]
    fn calendar_windows_follow_the_zone() {
        let t = ms("2026-03-15T23:30:12.345Z"); // a Sunday; Monday 00:30 in Berlin
        let day_utc = w("day", "UTC").bounds(t);
        assert_eq!(day_utc.start, ms("2026-03-15T00:00:00Z"));
        assert_eq!(day_utc.end, ms("2026-03-16T00:00:00Z"));
        let day_berlin = w("day", "Europe/Berlin").bounds(t);
        assert_eq!(day_berlin.start, ms("2026-03-15T23:00:00Z"));
        let week_utc = w("week", "UTC").bounds(t);
        assert_eq!(week_utc.start, ms("2026-03-09T00:00:00Z"));
        assert_eq!(week_utc.end, ms("2026-03-16T00:00:00Z"));
        let week_berlin = w("week", "Europe/Berlin").bounds(t);
        assert_eq!(week_berlin.start, ms("2026-03-15T23:00:00Z"));
        let month = w("month", "UTC").bounds(ms("2026-12-31T12:00:00Z"));
        assert_eq!(month.start, ms("2026-12-01T00:00:00Z"));
        assert_eq!(month.end, ms("2027-01-01T00:00:00Z"));
        let hour = w("hour", "UTC").bounds(t);
        assert_eq!(hour.start, ms("2026-03-15T23:00:00Z"));
        assert_eq!(hour.end, ms("2026-03-16T00:00:00Z"));
        let hour_kolkata = w("hour", "Asia/Kolkata").bounds(t); // +05:30
        assert_eq!(hour_kolkata.start, ms("2026-03-15T23:30:00Z"));
    }

    #[test]
    fn a_dst_day_is_23_hours_long() {
        // Berlin springs forward on 2026-03-29.
        let b = w("day", "Europe/Berlin").bounds(ms("2026-03-29T12:00:00Z"));
        assert_eq!(b.end - b.start, 23 * 3_600_000);
    }

    #[test]
    fn rolling_windows_are_whole_buckets() {
        let r = w("rolling:1h", "UTC");
        assert_eq!(r.bucket_ms(), 60_000);
        let b = r.bounds(ms("2026-03-15T10:30:30Z"));
        assert_eq!(b.end, ms("2026-03-15T10:31:00Z"));
        assert_eq!(b.start, ms("2026-03-15T09:31:00Z"));
        assert!(Window::parse("rolling:5s", Tz::UTC).is_err());
        assert!(Window::parse("rolling:4222222222222222h", Tz::UTC).is_err());
        assert!(Window::parse("rolling:366d", Tz::UTC).is_ok());
        assert!(Window::parse("fortnight", Tz::UTC).is_err());
    }
}
