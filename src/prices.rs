//! `tally prices`: show how a model's cost is computed, and refresh the catalog.

use std::io::Write;
use std::path::Path;

use anyhow::Context;
use clap::{Args, Subcommand};
use serde_json::json;
use tally_ingest::Tokens;
use tally_proxy::pricing::{Class, Usage};
use tally_proxy::PricingTable;

#[derive(Subcommand)]
pub enum PricesCommand {
    /// Explain a model's price: the entry it resolves to, its rates and tiers, and with
    /// --usage the cost of that usage, class by class.
    Show {
        /// One or more model names, as a request or a response names them.
        #[arg(required = true)]
        models: Vec<String>,
        /// The provider serving it (provider-specific entries win).
        #[arg(long, default_value = "openai")]
        provider: String,
        /// Usage to price: prompt=N,completion=N,cache_read=N,cache_write=N,cache_write_1h=N,
        /// reasoning=N,web_search=N (prompt counts every input token, cache included).
        #[arg(long)]
        usage: Option<String>,
        /// The service tier the response reported (flex, priority, batch).
        #[arg(long)]
        tier: Option<String>,
        /// One JSON object per model instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Fetch a catalog in LiteLLM's format, check it, and make it the one Tally prices with
    /// from its next start (written to pricing.catalog_file, ./tally-prices.json by default).
    /// A file that does not parse is refused and the current catalog kept.
    Update {
        /// A file or an http(s) URL; LiteLLM's published file by default.
        #[arg(long)]
        from: Option<String>,
    },
}

pub fn run(
    command: PricesCommand,
    config: &tally::Config,
    runtime: &tokio::runtime::Runtime,
) -> anyhow::Result<()> {
    match command {
        PricesCommand::Update { from } => update(from, &config.pricing.catalog_path(), runtime),
        PricesCommand::Show {
            models,
            provider,
            usage,
            tier,
            json,
        } => {
            let validated = config.validate()?;
            let usage = usage.as_deref().map(parse_usage).transpose()?;
            let mut out = std::io::stdout().lock();
            for model in &models {
                let text = show(
                    &validated.pricing,
                    &provider,
                    model,
                    usage,
                    tier.as_deref(),
                    json,
                );
                writeln!(out, "{text}")?;
            }
            Ok(())
        }
    }
}

fn update(
    from: Option<String>,
    to: &Path,
    runtime: &tokio::runtime::Runtime,
) -> anyhow::Result<()> {
    let from = from.unwrap_or_else(|| tally_proxy::pricing::LITELLM_URL.to_owned());
    let text = if from.starts_with("http://") || from.starts_with("https://") {
        runtime.block_on(tally_proxy::pricing::download(&from))?
    } else {
        std::fs::read_to_string(&from).with_context(|| format!("cannot read {from}"))?
    };
    let models = PricingTable::check_catalog(&text)
        .with_context(|| format!("{from} was refused; the current catalog is kept"))?;
    anyhow::ensure!(
        models > 0,
        "{from} prices no model Tally can use; the current catalog is kept"
    );
    // Next to the target, then renamed: a reader never sees half a file.
    let tmp = to.with_extension("json.tmp");
    std::fs::write(&tmp, &text).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, to).with_context(|| format!("cannot write {}", to.display()))?;
    tracing::info!(models, from = %from, catalog = %to.display(), "price catalog updated; Tally uses it from its next start");
    Ok(())
}

fn parse_usage(text: &str) -> anyhow::Result<(Tokens, u64)> {
    let mut t = Tokens::default();
    let mut searches = 0;
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = part
            .split_once('=')
            .with_context(|| format!("--usage {part:?}: expected class=count"))?;
        let n: u64 = v
            .trim()
            .parse()
            .with_context(|| format!("--usage {part:?}: {v:?} is not a count"))?;
        match k.trim() {
            "prompt" => t.prompt = n,
            "completion" => t.completion = n,
            "cache_read" => t.cache_read = n,
            "cache_write" => t.cache_write = n,
            "cache_write_1h" => t.cache_write_1h = n,
            "reasoning" => t.reasoning = n,
            "web_search" => searches = n,
            other => anyhow::bail!(
                "--usage: unknown class {other:?} (prompt, completion, cache_read, cache_write, cache_write_1h, reasoning, web_search)"
            ),
        }
    }
    Ok((t, searches))
}

fn usd(v: f64) -> String {
    format!("${}", (v * 1e9).round() / 1e9)
}

fn show(
    table: &PricingTable,
    provider: &str,
    model: &str,
    usage: Option<(Tokens, u64)>,
    tier: Option<&str>,
    as_json: bool,
) -> String {
    let Some((key, price)) = table.lookup_entry(provider, model) else {
        let hint = format!(
            "[pricing.models.\"{model}\"]\ninput = 0.0   # USD per 1M input tokens\noutput = 0.0  # USD per 1M output tokens"
        );
        return if as_json {
            json!({"model": model, "provider": provider, "entry": null, "cost_usd": null})
                .to_string()
        } else {
            format!("{model} via {provider}: not priced; its cost is recorded as null.\nTo price it, add to tally.toml:\n{hint}")
        };
    };
    let origin = table.origin(key).map_or("?", |o| o.describe());
    let mut lines = Vec::new();
    let mut cost = None;
    let mut chosen = None;
    if let Some((tokens, searches)) = usage {
        let u = Usage {
            tokens,
            service_tier: tier,
            web_search_calls: searches,
            // Priced as if made now: off-peak rates depend on the hour.
            at_ms: Some(tally_keys::now_ms()),
        };
        let (total, c) = price.bill(&u, |class, n, rate| {
            let unit = if class == Class::WebSearch {
                "call"
            } else {
                "1M"
            };
            lines.push((class.name(), n, rate, unit));
        });
        cost = Some(total);
        chosen = Some(c);
    }
    if as_json {
        return json!({
            "model": model, "provider": provider, "entry": key, "origin": origin,
            "cost_usd": cost,
            "service_tier": chosen.as_ref().and_then(|c| c.service_tier.clone()),
            "above_tokens": chosen.as_ref().and_then(|c| c.above),
            "lines": lines.iter().map(|(c, n, r, _)| json!({"class": c, "count": n, "rate": r})).collect::<Vec<_>>(),
        })
        .to_string();
    }
    let mut out = format!("{model} via {provider}: entry {key:?}, from {origin}");
    if origin == "the catalog" {
        if let Some(src) = table.source() {
            out += &format!(" ({src})");
        }
    }
    let rate = |name: &str, v: Option<f64>| v.map(|v| format!("{name} ${v}")).unwrap_or_default();
    let base = [
        rate("input", Some(price.input)),
        rate("cached_input", price.cached_input),
        rate("cache_write", price.cache_write),
        rate("cache_write_1h", price.cache_write_1h),
        rate("output", Some(price.output)),
        rate("reasoning", price.reasoning),
    ]
    .into_iter()
    .filter(|s| !s.is_empty())
    .collect::<Vec<_>>()
    .join(", ");
    out += &format!("\n  rates per 1M tokens: {base}");
    for l in &price.above {
        let parts = [
            rate("input", l.input),
            rate("cached_input", l.cached_input),
            rate("cache_write", l.cache_write),
            rate("output", l.output),
        ]
        .into_iter()
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join(", ");
        out += &format!("\n  prompt above {} tokens: {parts}", l.tokens);
    }
    if !price.service_tier.is_empty() {
        let tiers = price
            .service_tier
            .keys()
            .cloned()
            .collect::<Vec<_>>()
            .join(", ");
        out += &format!("\n  service tiers: {tiers} (others are billed at the rates above)");
    }
    if let Some(fee) = price.web_search {
        out += &format!("\n  web search: ${fee} per call");
    }
    if let (Some(total), Some(c)) = (cost, chosen) {
        if c.off_peak {
            out += "\n  now is off-peak for this model: its off-peak rates apply";
        }
        let tier = match (&c.service_tier, tier) {
            (Some(t), _) => format!("service tier {t}"),
            (None, Some(t)) => format!("service tier {t} unknown to this entry: base rates"),
            (None, None) => "base rates".to_owned(),
        };
        let above = c
            .above
            .map(|a| format!(", long-context rates (prompt above {a})"))
            .unwrap_or_default();
        out += &format!("\n  billed at: {tier}{above}");
        for (class, n, rate, unit) in lines {
            out += &format!("\n    {class:<15} {n:>10} × ${rate}/{unit}");
        }
        out += &format!("\n  total: {}", usd(total));
    }
    out
}

#[derive(Args)]
pub struct RepriceArgs {
    /// Start of the range: an RFC 3339 time (2026-12-01T00:00:00Z) or a date (2026-12-01,
    /// midnight UTC).
    #[arg(long)]
    from: String,
    /// End of the range, exclusive; now when unset.
    #[arg(long)]
    to: Option<String>,
    /// Only this model (as requested or as answered).
    #[arg(long)]
    model: Option<String>,
    /// Only this provider.
    #[arg(long)]
    provider: Option<String>,
}

pub fn parse_time(text: &str, what: &str) -> anyhow::Result<i64> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(text) {
        return Ok(t.timestamp_millis());
    }
    chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc().timestamp_millis())
        .with_context(|| {
            format!("--{what} {text:?}: expected a date (2026-12-01) or an RFC 3339 time (2026-12-01T08:00:00Z)")
        })
}

#[allow(clippy::print_stdout)]
pub fn reprice(
    args: &RepriceArgs,
    config: &tally::Validated,
    runtime: &tokio::runtime::Runtime,
) -> anyhow::Result<()> {
    use tally_ingest::reprice;
    let scope = reprice::Scope {
        from_ms: parse_time(&args.from, "from")?,
        to_ms: match &args.to {
            Some(t) => parse_time(t, "to")?,
            None => tally_keys::now_ms(),
        },
        model: args.model.clone(),
        provider: args.provider.clone(),
    };
    anyhow::ensure!(scope.from_ms < scope.to_ms, "--from must be before --to");
    let table = &config.pricing;
    let price = |r: &tally_ingest::Record| {
        let units = tally_proxy::formats::Units::from_properties(&r.properties);
        table.price_record(r, units.as_ref())
    };
    let catalog = table.source();
    let out = match &config.store {
        tally::Store::Sqlite(path) => {
            anyhow::ensure!(path.exists(), "no store at {}", path.display());
            reprice::sqlite(path, &scope, catalog, &price)?
        }
        tally::Store::ClickHouse(s) => {
            runtime.block_on(reprice::clickhouse(s, &scope, catalog, &price))?
        }
    };
    tracing::info!(
        examined = out.examined,
        changed = out.changed,
        delta_usd = out.delta_usd,
        "reprice done"
    );
    println!(
        "{} records with usage examined, {} repriced, total cost changed by ${:.6} ({} newly priced, {} no longer priced).",
        out.examined, out.changed, out.delta_usd, out.now_priced, out.now_unpriced
    );
    if out.changed > 0 {
        println!("A running Tally's budgets count the corrected spend from their next start.");
    }
    Ok(())
}
