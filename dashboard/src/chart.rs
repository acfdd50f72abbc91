//! Server-rendered SVG charts: a time-series line chart and a session waterfall.
//!
//! Written here rather than with plotters: plotters lays out text with font metrics, which
//! needs system fonts (font-kit) or an embedded TTF, while these charts are two fixed shapes
//! whose only text is numbers and times. The output is plain SVG, readable without
//! JavaScript, and every piece of text in it is escaped.

use std::fmt::Write;

const W: f64 = 560.0;
const H: f64 = 170.0;
const LEFT: f64 = 56.0;
const RIGHT: f64 = 8.0;
const TOP: f64 = 22.0;
const BOTTOM: f64 = 20.0;

/// One line of a chart. A `None` value leaves a gap (no data in that bucket).
pub struct Line<'a> {
    /// Legend text.
    pub name: &'a str,
    /// CSS class giving its colour (`s1`…`s3` in the stylesheet).
    pub class: &'a str,
    /// Values, one per point of the chart's `times`.
    pub values: Vec<Option<f64>>,
}

/// Escapes text for SVG/HTML.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn time_label(ms: i64, span_ms: i64) -> String {
    let Some(t) = chrono::DateTime::from_timestamp_millis(ms) else {
        return String::new();
    };
    if span_ms <= 86_400_000 {
        t.format("%H:%M").to_string()
    } else {
        t.format("%m-%d %H:%M").to_string()
    }
}

/// A line chart over bucket start times `times`, with `fmt` formatting the y axis.
pub fn line_chart(
    title: &str,
    times: &[i64],
    lines: &[Line<'_>],
    fmt: fn(f64) -> String,
) -> String {
    capped_line_chart(title, times, lines, fmt, f64::INFINITY)
}

/// [`line_chart`] whose y axis stops at `cap` once the data reaches it (a rate's axis ends at
/// 100%, not at "110%").
pub fn capped_line_chart(
    title: &str,
    times: &[i64],
    lines: &[Line<'_>],
    fmt: fn(f64) -> String,
    cap: f64,
) -> String {
    let max = lines
        .iter()
        .flat_map(|l| l.values.iter().flatten())
        .fold(0.0_f64, |a, &b| a.max(b));
    let top = if max > 0.0 {
        (max * 1.1).min(cap.max(max))
    } else {
        1.0
    };
    let n = times.len().max(1);
    let plot_w = W - LEFT - RIGHT;
    let plot_h = H - TOP - BOTTOM;
    let x = |i: usize| LEFT + plot_w * (i as f64 + 0.5) / n as f64;
    let y = |v: f64| TOP + plot_h * (1.0 - v / top);
    let mut s = String::with_capacity(2048);
    let _ = write!(
        s,
        r#"<svg class="chart" viewBox="0 0 {W} {H}" role="img" aria-label="{t}" xmlns="http://www.w3.org/2000/svg"><title>{t}</title><text class="title" x="{LEFT}" y="14">{t}</text>"#,
        t = escape(title)
    );
    for (i, l) in lines.iter().enumerate() {
        let _ = write!(
            s,
            r#"<text class="legend {c}" x="{x}" y="14">{name}</text>"#,
            c = escape(l.class),
            x = W - RIGHT - 70.0 * (lines.len() - i) as f64,
            name = escape(l.name)
        );
    }
    for frac in [0.0, 0.5, 1.0] {
        let v = top * frac;
        let _ = write!(
            s,
            r#"<line class="grid" x1="{LEFT}" x2="{x2}" y1="{yy:.1}" y2="{yy:.1}"/><text class="axis" x="{lx}" y="{ty:.1}" text-anchor="end">{label}</text>"#,
            x2 = W - RIGHT,
            yy = y(v),
            lx = LEFT - 4.0,
            ty = y(v) + 4.0,
            label = escape(&fmt(v))
        );
    }
    if let (Some(first), Some(last)) = (times.first(), times.last()) {
        let span = last - first;
        for (i, anchor) in [(0, "start"), (n / 2, "middle"), (n - 1, "end")] {
            if let Some(t) = times.get(i) {
                let _ = write!(
                    s,
                    r#"<text class="axis" x="{:.1}" y="{}" text-anchor="{anchor}">{}</text>"#,
                    x(i),
                    H - 4.0,
                    escape(&time_label(*t, span))
                );
            }
        }
    }
    for l in lines {
        // Consecutive points with values form one polyline; a gap starts a new one.
        let mut run: Vec<(f64, f64)> = Vec::new();
        let flush = |run: &mut Vec<(f64, f64)>, s: &mut String| {
            match run.len() {
                0 => {}
                1 => {
                    let _ = write!(
                        s,
                        r#"<circle class="{}" cx="{:.1}" cy="{:.1}" r="2"/>"#,
                        escape(l.class),
                        run[0].0,
                        run[0].1
                    );
                }
                _ => {
                    let _ = write!(s, r#"<polyline class="{}" points=""#, escape(l.class));
                    for (px, py) in run.iter() {
                        let _ = write!(s, "{px:.1},{py:.1} ");
                    }
                    s.push_str(r#""/>"#);
                }
            }
            run.clear();
        };
        for (i, v) in l.values.iter().enumerate() {
            match v {
                Some(v) => run.push((x(i), y(*v))),
                None => flush(&mut run, &mut s),
            }
        }
        flush(&mut run, &mut s);
    }
    s.push_str("</svg>");
    s
}

/// One bar of a waterfall: a request's offset and duration within its session.
pub struct Bar {
    /// Label at the left.
    pub label: String,
    /// Link target of the bar.
    pub href: String,
    /// Start relative to the session's start, ms.
    pub offset_ms: i64,
    /// Duration, ms.
    pub duration_ms: i64,
    /// Whether the request failed.
    pub error: bool,
}

/// A waterfall of requests over a session's span.
pub fn waterfall(bars: &[Bar]) -> String {
    const ROW: f64 = 18.0;
    const LABEL: f64 = 170.0;
    let span = bars
        .iter()
        .map(|b| b.offset_ms + b.duration_ms)
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let h = ROW * bars.len() as f64 + 24.0;
    let plot = W - LABEL - RIGHT;
    let mut s = String::with_capacity(256 + 200 * bars.len());
    let _ = write!(
        s,
        r#"<svg class="chart waterfall" viewBox="0 0 {W} {h}" role="img" aria-label="Session timeline" xmlns="http://www.w3.org/2000/svg"><title>Session timeline</title>"#
    );
    for (i, b) in bars.iter().enumerate() {
        let top = ROW * i as f64 + 4.0;
        let x = LABEL + plot * b.offset_ms as f64 / span;
        let w = (plot * b.duration_ms as f64 / span).max(1.5);
        let _ = write!(
            s,
            r#"<a href="{href}"><text class="axis" x="0" y="{ty:.1}">{label}</text><rect class="{class}" x="{x:.1}" y="{top:.1}" width="{w:.1}" height="{bh}"><title>{label}: +{off} ms, {dur} ms</title></rect></a>"#,
            href = escape(&b.href),
            ty = top + 11.0,
            label = escape(&b.label),
            class = if b.error { "bar err" } else { "bar" },
            bh = ROW - 5.0,
            off = b.offset_ms,
            dur = b.duration_ms,
        );
    }
    let _ = write!(
        s,
        r#"<text class="axis" x="{LABEL}" y="{y:.1}">0 ms</text><text class="axis" x="{x}" y="{y:.1}" text-anchor="end">{span} ms</text></svg>"#,
        y = h - 4.0,
        x = W - RIGHT,
        span = span as i64
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chart_escapes_text_and_breaks_lines_at_gaps() {
        let svg = line_chart(
            "<b>cost</b>",
            &[0, 60_000, 120_000, 180_000],
            &[Line {
                name: "a&b",
                class: "s1",
                values: vec![Some(1.0), Some(2.0), None, Some(3.0)],
            }],
            |v| format!("{v:.1}"),
        );
        assert!(svg.contains("&lt;b&gt;cost&lt;/b&gt;"));
        assert!(svg.contains("a&amp;b"));
        assert!(!svg.contains("<b>"));
        assert_eq!(svg.matches("<polyline").count(), 1);
        assert_eq!(svg.matches("<circle").count(), 1);
    }

    #[test]
    fn a_rate_axis_stops_at_its_cap() {
        let line = || Line {
            name: "errors",
            class: "s1",
            values: vec![Some(1.0), Some(0.0)],
        };
        let pct = |v: f64| format!("{:.0}%", v * 100.0);
        assert!(capped_line_chart("e", &[0, 1], &[line()], pct, 1.0).contains(">100%<"));
        assert!(line_chart("e", &[0, 1], &[line()], pct).contains(">110%<"));
    }

    #[test]
    fn waterfall_scales_bars_to_the_span() {
        let svg = waterfall(&[
            Bar {
                label: "a".into(),
                href: "/requests/1".into(),
                offset_ms: 0,
                duration_ms: 500,
                error: false,
            },
            Bar {
                label: "<x>".into(),
                href: "/requests/2".into(),
                offset_ms: 500,
                duration_ms: 500,
                error: true,
            },
        ]);
        assert!(svg.contains("1000 ms"));
        assert!(svg.contains("&lt;x&gt;"));
        assert!(svg.contains(r#"class="bar err""#));
    }
}
