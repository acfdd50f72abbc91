//! `tally reconcile openai|anthropic`: the provider's own usage and cost reports against
//! Tally's records, per day and model.
//!
//! The reports are the organization APIs an admin key reads: OpenAI's Usage API
//! (`/v1/organization/usage/completions`) and Costs API (`/v1/organization/costs`),
//! Anthropic's Usage & Cost Admin API (`/v1/organizations/usage_report/messages`,
//! `/v1/organizations/cost_report`, amounts in cents as decimal strings). Both page with
//! `has_more` / `next_page`; every page is read. What a gap means:
//! - **not through Tally**: the provider counted more tokens than Tally recorded (traffic that
//!   bypassed the proxy, or a key shared with another tool);
//! - **mispriced**: the tokens agree but the cost does not (a price in Tally's table is wrong);
//! - **unpriced**: Tally recorded the model without a price;
//! - **not at the provider**: Tally recorded more than the provider reports (another
//!   organization's key, or the provider's report still lagging).

use std::collections::BTreeMap;

use anyhow::Context;
use serde_json::Value;

/// Tokens agreeing within this share are the same count; costs too.
const TOLERANCE: f64 = 0.01;

/// One side's numbers for a day and model.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct Side {
    /// Requests (OpenAI reports them; Anthropic's usage report does not).
    pub requests: Option<u64>,
    /// Input tokens, cache reads and writes included.
    pub input_tokens: u64,
    /// Output tokens.
    pub output_tokens: u64,
    /// Cache-read input tokens.
    pub cached_tokens: u64,
    /// Cost, USD.
    pub cost_usd: f64,
    /// Tally only: records without a price.
    pub unpriced: u64,
}

/// A day and model, both sides, and what differs.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Row {
    /// `YYYY-MM-DD`, UTC.
    pub day: String,
    /// The model, without its snapshot date (providers report some dated, some not).
    pub model: String,
    /// What the provider reports.
    pub provider: Side,
    /// What Tally recorded.
    pub tally: Side,
    /// `not through Tally`, `mispriced`, `unpriced`, `not at the provider`; empty when the
    /// two agree.
    pub gaps: Vec<&'static str>,
}

/// A reconciliation's result.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Report {
    /// `openai` or `anthropic`.
    pub provider: String,
    /// Range start, ms.
    pub from_ms: i64,
    /// Range end, ms.
    pub to_ms: i64,
    /// Day × model, sorted.
    pub rows: Vec<Row>,
}

impl Report {
    /// Rows with a gap.
    pub fn gaps(&self) -> impl Iterator<Item = &Row> {
        self.rows.iter().filter(|r| !r.gaps.is_empty())
    }
}

/// Which provider's reports, and how to reach them.
pub struct Source<'a> {
    /// `openai` or `anthropic`.
    pub kind: &'a str,
    /// The provider's base URL (the configured one, so a test can point it at a fake).
    pub base_url: &'a str,
    /// The admin key.
    pub admin_key: &'a str,
}

fn differs(a: f64, b: f64) -> bool {
    (a - b).abs() > TOLERANCE * a.abs().max(b.abs()).max(1e-9)
}

/// `claude-sonnet-4-20250514` and `claude-sonnet-4` are one row; so are `gpt-4o-2024-08-06`
/// and `gpt-4o`: the providers report some models dated and some not, and requests name them
/// either way.
pub fn undated(model: &str) -> String {
    let m = model.trim().to_ascii_lowercase();
    let b = m.as_bytes();
    // -YYYY-MM-DD
    if b.len() > 11 {
        let t = &b[b.len() - 11..];
        let d = |r: std::ops::Range<usize>| t[r].iter().all(u8::is_ascii_digit);
        if t[0] == b'-' && t[5] == b'-' && t[8] == b'-' && d(1..5) && d(6..8) && d(9..11) {
            return m[..m.len() - 11].to_owned();
        }
    }
    // -YYYYMMDD
    if let Some((head, tail)) = m.rsplit_once('-') {
        if tail.len() == 8 && tail.bytes().all(|c| c.is_ascii_digit()) {
            return head.to_owned();
        }
    }
    m
}

fn day_of(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%d").to_string())
        .unwrap_or_default()
}

/// Reads every page of `path` (a `has_more` / `next_page` report) and returns its buckets.
async fn pages(src: &Source<'_>, path: &str, query: &str) -> anyhow::Result<Vec<Value>> {
    let base = src.base_url.trim_end_matches('/');
    let auth = format!("Bearer {}", src.admin_key);
    let headers: Vec<(&str, &str)> = match src.kind {
        "anthropic" => vec![
            ("x-api-key", src.admin_key),
            ("anthropic-version", "2023-06-01"),
        ],
        _ => vec![("authorization", auth.as_str())],
    };
    let mut buckets = Vec::new();
    let mut page: Option<String> = None;
    for _ in 0..10_000 {
        let mut url = format!("{base}{path}?{query}");
        if let Some(p) = &page {
            url += &format!(
                "&page={}",
                percent_encoding::utf8_percent_encode(p, percent_encoding::NON_ALPHANUMERIC)
            );
        }
        let (status, body) = tally_proxy::pricing::get(&url, &headers)
            .await
            .map_err(|why| anyhow::anyhow!("{path}: {why}"))?;
        anyhow::ensure!(
            status.is_success(),
            "{path} answered HTTP {status}: {}",
            body.chars().take(300).collect::<String>()
        );
        let v: Value = serde_json::from_str(&body).with_context(|| format!("{path}: not JSON"))?;
        if let Some(d) = v.get("data").and_then(Value::as_array) {
            buckets.extend(d.iter().cloned());
        }
        match (
            v.get("has_more").and_then(Value::as_bool),
            v.get("next_page").and_then(Value::as_str),
        ) {
            (Some(true), Some(next)) => page = Some(next.to_owned()),
            _ => return Ok(buckets),
        }
    }
    anyhow::bail!("{path}: more than 10,000 pages")
}

fn u(v: &Value, key: &str) -> u64 {
    v.get(key).and_then(Value::as_u64).unwrap_or(0)
}

/// Every result of every page of a report, with the day of its bucket (a bucket starts at
/// `start_time` in seconds, OpenAI, or at `starting_at` in RFC 3339, Anthropic).
async fn results(
    src: &Source<'_>,
    path: &str,
    query: &str,
) -> anyhow::Result<Vec<(String, Value)>> {
    let mut out = Vec::new();
    for b in pages(src, path, query).await? {
        let day = match b.get("start_time").and_then(Value::as_i64) {
            Some(s) => day_of(s * 1000),
            None => b
                .get("starting_at")
                .and_then(Value::as_str)
                .map(|s| s.chars().take(10).collect())
                .unwrap_or_default(),
        };
        for r in b
            .get("results")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            out.push((day.clone(), r.clone()));
        }
    }
    Ok(out)
}

/// The provider's side, by (day, undated model).
async fn provider_side(
    src: &Source<'_>,
    from_ms: i64,
    to_ms: i64,
) -> anyhow::Result<BTreeMap<(String, String), Side>> {
    let mut out: BTreeMap<(String, String), Side> = BTreeMap::new();
    let model_of = |r: &Value| undated(r.get("model").and_then(Value::as_str).unwrap_or(""));
    match src.kind {
        "openai" => {
            let q = |group: &str| {
                format!(
                    "start_time={}&end_time={}&bucket_width=1d&group_by={group}&limit=31",
                    from_ms / 1000,
                    to_ms / 1000
                )
            };
            for (day, r) in results(src, "/v1/organization/usage/completions", &q("model")).await? {
                let s = out.entry((day, model_of(&r))).or_default();
                *s.requests.get_or_insert(0) += u(&r, "num_model_requests");
                s.input_tokens += u(&r, "input_tokens");
                s.output_tokens += u(&r, "output_tokens");
                s.cached_tokens += u(&r, "input_cached_tokens");
            }
            for (day, r) in results(src, "/v1/organization/costs", &q("line_item")).await? {
                // `gpt-4o-2024-08-06, input`: the model, then the token class.
                let item = r.get("line_item").and_then(Value::as_str).unwrap_or("");
                let model = undated(item.rsplit_once(", ").map_or(item, |(m, _)| m));
                let usd = r
                    .pointer("/amount/value")
                    .and_then(Value::as_f64)
                    .unwrap_or(0.0);
                out.entry((day, model)).or_default().cost_usd += usd;
            }
        }
        "anthropic" => {
            let at = |ms: i64| {
                chrono::DateTime::from_timestamp_millis(ms)
                    .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
                    .unwrap_or_default()
            };
            let q = |group: &str| {
                format!(
                    "starting_at={}&ending_at={}&bucket_width=1d&group_by[]={group}&limit=31",
                    at(from_ms),
                    at(to_ms)
                )
            };
            for (day, r) in
                results(src, "/v1/organizations/usage_report/messages", &q("model")).await?
            {
                let s = out.entry((day, model_of(&r))).or_default();
                let writes = r.get("cache_creation").map_or(0, |c| {
                    u(c, "ephemeral_5m_input_tokens") + u(c, "ephemeral_1h_input_tokens")
                });
                let read = u(&r, "cache_read_input_tokens");
                s.input_tokens += u(&r, "uncached_input_tokens") + read + writes;
                s.cached_tokens += read;
                s.output_tokens += u(&r, "output_tokens");
            }
            for (day, r) in results(src, "/v1/organizations/cost_report", &q("description")).await?
            {
                if r.get("model").and_then(Value::as_str).is_none() {
                    continue;
                }
                // Cents, as a decimal string.
                let cents: f64 = r
                    .get("amount")
                    .and_then(Value::as_str)
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0.0);
                out.entry((day, model_of(&r))).or_default().cost_usd += cents / 100.0;
            }
        }
        other => anyhow::bail!("cannot reconcile {other:?}: openai or anthropic"),
    }
    Ok(out)
}

/// Tally's side: requests the provider answered (2xx, not served from Tally's cache), by
/// (day, undated model as answered).
fn tally_side(rows: &[Vec<Value>]) -> BTreeMap<(String, String), Side> {
    let mut out: BTreeMap<(String, String), Side> = BTreeMap::new();
    for r in rows {
        let n = |i: usize| r.get(i).and_then(Value::as_u64).unwrap_or(0);
        let day = r.first().and_then(Value::as_str).unwrap_or("").to_owned();
        let model = undated(r.get(1).and_then(Value::as_str).unwrap_or(""));
        let s = out.entry((day, model)).or_default();
        *s.requests.get_or_insert(0) += n(2);
        s.input_tokens += n(3);
        s.output_tokens += n(4);
        s.cached_tokens += n(5);
        s.cost_usd += r.get(6).and_then(Value::as_f64).unwrap_or(0.0);
        s.unpriced += n(7);
    }
    out
}

/// The query for [`tally_side`] on each store; `?` are provider, from and to.
pub const SQLITE_QUERY: &str = "SELECT strftime('%Y-%m-%d', ts / 1000, 'unixepoch') AS day,
        coalesce(response_model, model, '') AS m, count(*), sum(coalesce(prompt_tokens, 0)),
        sum(coalesce(completion_tokens, 0)), sum(coalesce(cache_read_tokens, 0)),
        sum(coalesce(cost_usd, 0)), sum(cost_usd IS NULL AND prompt_tokens IS NOT NULL)
    FROM requests
    WHERE provider = ?1 AND ts >= ?2 AND ts < ?3 AND status BETWEEN 200 AND 299
      AND cache_status != 'hit'
    GROUP BY day, m";

/// The ClickHouse form of [`SQLITE_QUERY`].
pub const CLICKHOUSE_QUERY: &str = "SELECT toString(toDate(ts)) AS day,
        ifNull(response_model, ifNull(model, '')) AS m, count() AS requests,
        sum(ifNull(prompt_tokens, 0)) AS input, sum(ifNull(completion_tokens, 0)) AS output,
        sum(ifNull(cache_read_tokens, 0)) AS cached, sum(ifNull(cost_usd, 0)) AS cost,
        countIf(cost_usd IS NULL AND prompt_tokens IS NOT NULL) AS unpriced
    FROM requests
    WHERE provider = ? AND ts >= fromUnixTimestamp64Milli(?)
      AND ts < fromUnixTimestamp64Milli(?) AND status BETWEEN 200 AND 299
      AND cache_status != 'hit'
    GROUP BY day, m";

/// Compares the two sides.
pub fn compare(
    provider: &str,
    from_ms: i64,
    to_ms: i64,
    theirs: BTreeMap<(String, String), Side>,
    ours: BTreeMap<(String, String), Side>,
) -> Report {
    let mut keys: Vec<_> = theirs.keys().chain(ours.keys()).cloned().collect();
    keys.sort();
    keys.dedup();
    let rows = keys
        .into_iter()
        .map(|k| {
            let p = theirs.get(&k).copied().unwrap_or_default();
            let t = ours.get(&k).copied().unwrap_or_default();
            let (pt, tt) = (
                (p.input_tokens + p.output_tokens) as f64,
                (t.input_tokens + t.output_tokens) as f64,
            );
            let mut gaps = Vec::new();
            if pt > tt && differs(pt, tt) {
                gaps.push("not through Tally");
            }
            if tt > pt && differs(pt, tt) {
                gaps.push("not at the provider");
            }
            if t.unpriced == 0 && !differs(pt, tt) && differs(p.cost_usd, t.cost_usd) {
                gaps.push("mispriced");
            }
            if t.unpriced > 0 {
                gaps.push("unpriced");
            }
            Row {
                day: k.0,
                model: k.1,
                provider: p,
                tally: t,
                gaps,
            }
        })
        .collect();
    Report {
        provider: provider.to_owned(),
        from_ms,
        to_ms,
        rows,
    }
}

/// Runs a reconciliation: the provider's reports, Tally's store, the comparison.
pub async fn run(
    src: &Source<'_>,
    tally_provider: &str,
    from_ms: i64,
    to_ms: i64,
    store: &tally::Store,
) -> anyhow::Result<Report> {
    let theirs = provider_side(src, from_ms, to_ms).await?;
    let rows: Vec<Vec<Value>> = match store {
        tally::Store::Sqlite(path) => {
            let conn = tally_ingest::sqlite::open_ro(path)?;
            let mut stmt = conn.prepare(SQLITE_QUERY)?;
            let rows = stmt.query_map(rusqlite::params![tally_provider, from_ms, to_ms], |r| {
                Ok(vec![
                    Value::from(r.get::<_, String>(0)?),
                    Value::from(r.get::<_, String>(1)?),
                    Value::from(r.get::<_, i64>(2)?.max(0) as u64),
                    Value::from(r.get::<_, i64>(3)?.max(0) as u64),
                    Value::from(r.get::<_, i64>(4)?.max(0) as u64),
                    Value::from(r.get::<_, i64>(5)?.max(0) as u64),
                    Value::from(r.get::<_, f64>(6)?),
                    Value::from(r.get::<_, i64>(7)?.max(0) as u64),
                ])
            })?;
            rows.collect::<Result<_, _>>()?
        }
        tally::Store::ClickHouse(s) => {
            #[derive(serde::Deserialize, clickhouse::Row)]
            struct R {
                day: String,
                m: String,
                requests: u64,
                input: u64,
                output: u64,
                cached: u64,
                cost: f64,
                unpriced: u64,
            }
            let rows: Vec<R> = s
                .client()
                .query(CLICKHOUSE_QUERY)
                .bind(tally_provider)
                .bind(from_ms)
                .bind(to_ms)
                .fetch_all()
                .await?;
            rows.into_iter()
                .map(|r| {
                    vec![
                        r.day.into(),
                        r.m.into(),
                        r.requests.into(),
                        r.input.into(),
                        r.output.into(),
                        r.cached.into(),
                        r.cost.into(),
                        r.unpriced.into(),
                    ]
                })
                .collect()
        }
    };
    Ok(compare(src.kind, from_ms, to_ms, theirs, tally_side(&rows)))
}

/// The report as a table, gaps first.
pub fn render(report: &Report) -> String {
    let mut out = format!(
        "{} from {} to {}: {} day × model rows, {} with gaps\n",
        report.provider,
        day_of(report.from_ms),
        day_of(report.to_ms),
        report.rows.len(),
        report.gaps().count()
    );
    out += "day\tmodel\tprovider tokens\tTally tokens\tprovider $\tTally $\tgaps\n";
    let mut rows: Vec<&Row> = report.rows.iter().collect();
    rows.sort_by_key(|r| r.gaps.is_empty());
    for r in rows {
        out += &format!(
            "{}\t{}\t{}\t{}\t{:.6}\t{:.6}\t{}\n",
            r.day,
            r.model,
            r.provider.input_tokens + r.provider.output_tokens,
            r.tally.input_tokens + r.tally.output_tokens,
            r.provider.cost_usd,
            r.tally.cost_usd,
            if r.gaps.is_empty() {
                "-".to_owned()
            } else {
                r.gaps.join(", ")
            }
        );
    }
    out
}

/// Keeps the report in the store, where the dashboard's reconcile page reads it.
pub async fn keep(report: &Report, store: &tally::Store) -> anyhow::Result<()> {
    let json = serde_json::to_string(report)?;
    let now = tally_keys::now_ms();
    match store {
        tally::Store::Sqlite(path) => {
            let mut conn = tally_ingest::sqlite::open_rw(path)?;
            tally_ingest::sqlite::migrate(&mut conn)?;
            conn.execute(
                "INSERT INTO reconciliations (at_ms, provider, from_ms, to_ms, report) VALUES (?1, ?2, ?3, ?4, ?5)",
                rusqlite::params![now, report.provider, report.from_ms, report.to_ms, json],
            )?;
        }
        tally::Store::ClickHouse(s) => {
            #[derive(serde::Serialize, clickhouse::Row)]
            struct R<'a> {
                at: i64,
                provider: &'a str,
                from_ts: i64,
                to_ts: i64,
                report: &'a str,
            }
            tally_ingest::clickhouse::migrate(s).await?;
            let mut insert = s.client().insert::<R>("reconciliations").await?;
            insert
                .write(&R {
                    at: now,
                    provider: &report.provider,
                    from_ts: report.from_ms,
                    to_ts: report.to_ms,
                    report: &json,
                })
                .await?;
            insert.end().await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_dates_are_one_model() {
        assert_eq!(undated("gpt-4o-2024-08-06"), "gpt-4o");
        assert_eq!(undated("claude-sonnet-4-20250514"), "claude-sonnet-4");
        assert_eq!(undated("gpt-4o"), "gpt-4o");
        assert_eq!(undated("é-2024"), "é-2024");
    }

    #[test]
    fn gaps_are_named() {
        let side = |tokens: u64, usd: f64| Side {
            input_tokens: tokens,
            cost_usd: usd,
            ..Side::default()
        };
        let k = |m: &str| ("2026-12-01".to_owned(), m.to_owned());
        let theirs = BTreeMap::from([
            (k("a"), side(1000, 1.0)),
            (k("b"), side(1000, 2.0)),
            (k("c"), side(5000, 5.0)),
        ]);
        let ours = BTreeMap::from([
            (k("a"), side(1000, 1.004)),
            (k("b"), side(1000, 1.0)),
            (k("c"), side(1000, 1.0)),
            (k("d"), side(10, 0.0)),
        ]);
        let r = compare("openai", 0, 1, theirs, ours);
        let gaps: Vec<_> = r
            .rows
            .iter()
            .map(|r| (r.model.as_str(), r.gaps.clone()))
            .collect();
        assert_eq!(
            gaps,
            [
                ("a", vec![]),
                ("b", vec!["mispriced"]),
                ("c", vec!["not through Tally"]),
                ("d", vec!["not at the provider"]),
            ]
        );
    }
}
