//! `tally`: the command line. See README.md for the commands and the config reference.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use tally::{Config, Server, Store};
use tally_dashboard::store::clickhouse::ClickHouseReader;
use tally_dashboard::store::sqlite::SqliteReader;

mod prices;
mod reconcile;

/// jemalloc rather than glibc's allocator: after a burst of 2,000 connections glibc kept
/// ~60 MiB more resident, freed but fragmented across its arenas, and never returned it.
/// jemalloc, configured in `.cargo/config.toml` to purge freed pages within a second, came
/// back to within ~20 MiB of idle plus the SQLite page cache (BENCHMARKS.md, "Memory after a
/// burst").
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(
    name = "tally",
    version,
    about = "An observability-first logging proxy for LLM APIs"
)]
struct Cli {
    /// Config file (TOML). Optional: without it, defaults and TALLY_* variables apply.
    #[arg(long, global = true, env = "TALLY_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy and the dashboard (the default).
    Serve,
    /// Apply pending store migrations and exit.
    Migrate,
    /// Run one read-only SQL query against the store and print the result.
    Sql {
        /// The query, e.g. "SELECT model, count(*) FROM requests GROUP BY model".
        query: String,
        /// Output format.
        #[arg(long, value_enum, default_value_t = SqlFormat::Tsv)]
        format: SqlFormat,
    },
    /// Inspect the spool, or put quarantined segments back to be replayed.
    #[command(subcommand)]
    Spool(SpoolCommand),
    /// Tally-issued keys: create, list, show, revoke, rotate.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Prices: explain a model's cost, refresh the catalog.
    #[command(subcommand)]
    Prices(prices::PricesCommand),
    /// Recompute the stored costs of a range with the current prices (after a price fix or
    /// `tally prices update`). Only records whose cost changes are written, so a rerun
    /// changes nothing; each run is listed on the dashboard.
    Reprice(prices::RepriceArgs),
    /// Compare the provider's own usage and cost reports (read with an admin key) with
    /// Tally's records, per day and model, and name the gaps: traffic that bypassed Tally,
    /// mispriced and unpriced models. The report is kept for the dashboard's reconcile page.
    Reconcile {
        /// `openai` or `anthropic`.
        provider: String,
        /// Start: a date (2026-12-01) or an RFC 3339 time.
        #[arg(long)]
        from: String,
        /// End, exclusive; now when unset.
        #[arg(long)]
        to: Option<String>,
        /// The environment variable holding the admin key (OPENAI_ADMIN_KEY,
        /// ANTHROPIC_ADMIN_KEY by default). Never a command-line value: it would be in the
        /// shell's history and the process list.
        #[arg(long)]
        admin_key_env: Option<String>,
        /// Tally's name for the provider, when not the same (`[providers.NAME]`).
        #[arg(long)]
        tally_provider: Option<String>,
        /// Where the reports are read: the provider's API by default
        /// (https://api.openai.com, https://api.anthropic.com), even when Tally's
        /// `base_url` for it points elsewhere (another gateway, a regional endpoint).
        #[arg(long)]
        admin_base_url: Option<String>,
        /// The report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Erase a user's, a session's or a property value's records: from the store, from the
    /// spool, and from whatever reaches the store later (each purge is kept in `purges`,
    /// which the store checks every insert against). Records that start after the purge are
    /// kept.
    Purge(PurgeArgs),
}

#[derive(clap::Args)]
#[group(required = true, multiple = false)]
struct PurgeArgs {
    /// Every record with this user id (`Tally-User-Id`).
    #[arg(long)]
    user: Option<String>,
    /// Every record with this session id (`Tally-Session-Id`).
    #[arg(long)]
    session: Option<String>,
    /// Every record whose property KEY is VALUE, as `--property tenant=acme`.
    #[arg(long, value_name = "KEY=VALUE")]
    property: Option<String>,
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Create a key and print its secret (alone, on stdout; it is not shown again).
    Create {
        /// Unique name, e.g. search-team.
        #[arg(long)]
        name: String,
        /// Spend allowed per window, USD (enforced; refused with 429 once spent).
        #[arg(long)]
        budget_usd: Option<f64>,
        /// Budget window: day, week or month (calendar, UTC); month when unset.
        #[arg(long)]
        window: Option<String>,
        /// Allowed models, comma-separated; `*` matches any run (claude-*).
        #[arg(long)]
        models: Option<String>,
        /// Allowed providers or routers, comma-separated.
        #[arg(long)]
        providers: Option<String>,
        /// Requests per minute.
        #[arg(long)]
        rpm: Option<u64>,
        /// Tokens (input + output) per minute.
        #[arg(long)]
        tpm: Option<u64>,
        /// Expiry: 2027-01-01 (midnight UTC) or an RFC 3339 time.
        #[arg(long)]
        expires: Option<String>,
        /// A label, key=value; repeatable.
        #[arg(long = "metadata", value_name = "KEY=VALUE")]
        metadata: Vec<String>,
    },
    /// List every key (state, hint, limits; never a secret).
    List {
        /// One JSON object per key instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show one key, by id or name, as JSON.
    Show {
        /// Id or name.
        key: String,
    },
    /// Revoke a key; every replica refuses it within `auth.refresh_ms`.
    Revoke {
        /// Id or name.
        key: String,
    },
    /// Give a key a new secret (printed alone on stdout); the old one works for the grace period.
    Rotate {
        /// Id or name.
        key: String,
        /// How long the old secret keeps working, seconds (auth.rotate_grace_secs when unset).
        #[arg(long)]
        grace_secs: Option<u64>,
    },
}

#[derive(Subcommand)]
enum SpoolCommand {
    /// Print the segments waiting, their bytes, and those in quarantine.
    Status,
    /// Move quarantined segments back into the spool; the next `tally serve` replays them.
    /// Refused while a Tally process holds the spool.
    Requeue {
        /// Also requeue segments whose checksum fails but whose records still parse
        /// (rewritten with a fresh checksum).
        #[arg(long)]
        ignore_checksum: bool,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum SqlFormat {
    /// Tab-separated with a header line.
    Tsv,
    /// One JSON object per row.
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("TALLY_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let raw = Config::load(cli.config.as_deref())?;
    let runtime = tokio::runtime::Runtime::new().context("cannot start the runtime")?;
    let command = cli.command.unwrap_or(Command::Serve);
    // Not validated first: a catalog file that no longer parses must not stop its own update.
    if let Command::Prices(command) = command {
        return prices::run(command, &raw, &runtime);
    }
    let config = raw.validate()?;
    match command {
        Command::Prices(command) => prices::run(command, &raw, &runtime),
        Command::Reprice(args) => prices::reprice(&args, &config, &runtime),
        Command::Reconcile {
            provider,
            from,
            to,
            admin_key_env,
            tally_provider,
            admin_base_url,
            json,
        } => {
            let var = admin_key_env.unwrap_or_else(|| match provider.as_str() {
                "anthropic" => "ANTHROPIC_ADMIN_KEY".into(),
                _ => "OPENAI_ADMIN_KEY".into(),
            });
            let key = std::env::var(&var)
                .ok()
                .filter(|k| !k.trim().is_empty())
                .with_context(|| {
                    format!("set {var} to an admin key of your {provider} organization")
                })?;
            let name = tally_provider.unwrap_or_else(|| provider.clone());
            let base = admin_base_url.unwrap_or_else(|| match provider.as_str() {
                "anthropic" => "https://api.anthropic.com".into(),
                _ => "https://api.openai.com".into(),
            });
            let from = prices::parse_time(&from, "from")?;
            let to = match to {
                Some(t) => prices::parse_time(&t, "to")?,
                None => tally_keys::now_ms(),
            };
            let src = reconcile::Source {
                kind: &provider,
                base_url: &base,
                admin_key: key.trim(),
            };
            let report = runtime.block_on(async {
                let report = reconcile::run(&src, &name, from, to, &config.store).await?;
                reconcile::keep(&report, &config.store).await?;
                anyhow::Ok(report)
            })?;
            let text = if json {
                serde_json::to_string_pretty(&report)?
            } else {
                reconcile::render(&report)
            };
            let mut out = std::io::stdout().lock();
            out.write_all(text.as_bytes())?;
            out.flush()?;
            Ok(())
        }
        Command::Serve => runtime.block_on(async {
            let server = Server::bind(config).await?;
            server.run(shutdown_signal()).await
        }),
        Command::Migrate => {
            let n = runtime.block_on(tally::migrate(&config))?;
            tracing::info!(applied = n, "migrations done");
            Ok(())
        }
        Command::Sql { query, format } => match &config.store {
            Store::Sqlite(path) => {
                if !path.exists() {
                    anyhow::bail!(
                        "no store at {} yet; run `tally` (or `tally migrate`) first",
                        path.display()
                    );
                }
                let result = SqliteReader::new(path).query(&query)?;
                print_result(&result, format)
            }
            Store::ClickHouse(s) => {
                let format = match format {
                    SqlFormat::Tsv => "TabSeparatedWithNames",
                    SqlFormat::Json => "JSONEachRow",
                };
                let bytes = runtime.block_on(ClickHouseReader::new(s).query_raw(&query, format))?;
                let mut out = std::io::stdout().lock();
                out.write_all(&bytes)?;
                out.flush()?;
                Ok(())
            }
        },
        Command::Spool(command) => spool(&config, command),
        Command::Purge(args) => purge(&config, &args, &runtime),
        Command::Keys(command) => runtime.block_on(keys(&config, command)),
    }
}

#[allow(clippy::print_stdout)]
async fn keys(config: &tally::Validated, command: KeysCommand) -> anyhow::Result<()> {
    // The keys live in the store: make sure its tables exist (a no-op when they do).
    tally::migrate(config).await?;
    let admin = tally_keys::Admin::new(tally::key_store(&config.store));
    let now = tally_keys::now_ms();
    let view = |k: &tally_keys::Key| tally_keys::admin::KeyView::of(k, now);
    match command {
        KeysCommand::Create {
            name,
            budget_usd,
            window,
            models,
            providers,
            rpm,
            tpm,
            expires,
            metadata,
        } => {
            let metadata = metadata
                .iter()
                .map(|kv| {
                    kv.split_once('=')
                        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
                        .filter(|(k, _)| !k.is_empty())
                        .with_context(|| format!("--metadata {kv:?}: expected key=value"))
                })
                .collect::<anyhow::Result<_>>()?;
            let opts = tally_keys::CreateOptions {
                name,
                budget_usd,
                window,
                models: models.into_iter().collect(),
                providers: providers.into_iter().collect(),
                rpm,
                tpm,
                expires,
                metadata,
            };
            let issued = admin.create(&opts).await?;
            tracing::info!(key_id = %issued.key.id, name = %issued.key.name, "key created");
            println!("{}", issued.secret.text);
        }
        KeysCommand::List { json } => {
            let keys = admin.list().await?;
            if json {
                for k in &keys {
                    println!("{}", serde_json::to_string(&view(k))?);
                }
            } else {
                println!("id\tname\tstate\thint\tcreated\texpires\tmodels\tbudget");
                for k in &keys {
                    let v = view(k);
                    let budget = match (k.policy.budget_usd, &k.policy.budget_window) {
                        (Some(b), Some(w)) => format!("${b}/{w}"),
                        _ => "-".into(),
                    };
                    let models = if k.policy.models.is_empty() {
                        "*".to_owned()
                    } else {
                        k.policy.models.join(",")
                    };
                    println!(
                        "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
                        v.id,
                        v.name,
                        v.state,
                        v.hint,
                        v.created_at,
                        v.expires_at.as_deref().unwrap_or("-"),
                        models,
                        budget
                    );
                }
            }
        }
        KeysCommand::Show { key } => {
            let k = admin.show(&key).await?;
            println!("{}", serde_json::to_string_pretty(&view(&k))?);
        }
        KeysCommand::Revoke { key } => {
            let k = admin.revoke(&key).await?;
            tracing::info!(key_id = %k.id, name = %k.name, "key revoked");
        }
        KeysCommand::Rotate { key, grace_secs } => {
            let grace = grace_secs
                .map(std::time::Duration::from_secs)
                .unwrap_or(config.auth.rotate_grace);
            let issued = admin.rotate(&key, grace.as_millis() as i64).await?;
            tracing::info!(
                key_id = %issued.key.id,
                name = %issued.key.name,
                grace_secs = grace.as_secs(),
                "key rotated; the old secret works until the grace period ends"
            );
            println!("{}", issued.secret.text);
        }
    }
    Ok(())
}

#[allow(clippy::print_stdout)]
fn spool(config: &tally::Validated, command: SpoolCommand) -> anyhow::Result<()> {
    let (dir, max_bytes) = &config.spool;
    let mut spool = tally_ingest::spool::Spool::open(dir, *max_bytes)?;
    match command {
        SpoolCommand::Status => {
            println!("spool\t{}", dir.display());
            println!("segments\t{}", spool.len());
            println!("bytes\t{}", spool.bytes());
            println!("quarantined\t{}", spool.quarantined());
        }
        SpoolCommand::Requeue { ignore_checksum } => {
            let done = spool.requeue(ignore_checksum)?;
            println!(
                "requeued {} segments ({} records)",
                done.segments, done.records
            );
            for path in &done.left {
                println!("left in quarantine (unreadable): {path}");
            }
        }
    }
    Ok(())
}

#[allow(clippy::print_stdout)]
fn purge(
    config: &tally::Validated,
    args: &PurgeArgs,
    runtime: &tokio::runtime::Runtime,
) -> anyhow::Result<()> {
    use tally_ingest::purge::{self, Scope};
    let nonempty = |what: &str, v: &str| -> anyhow::Result<String> {
        anyhow::ensure!(!v.is_empty(), "--{what} needs a value");
        Ok(v.to_owned())
    };
    let scope = match (&args.user, &args.session, &args.property) {
        (Some(u), _, _) => Scope::User(nonempty("user", u)?),
        (_, Some(s), _) => Scope::Session(nonempty("session", s)?),
        (_, _, Some(p)) => {
            let (k, v) = p.split_once('=').with_context(|| {
                format!("--property {p:?}: expected KEY=VALUE, e.g. tenant=acme")
            })?;
            Scope::Property(nonempty("property", k)?, nonempty("property", v)?)
        }
        _ => anyhow::bail!("name what to purge: --user, --session or --property"),
    };
    // The value as the client sent it, and as redaction may have stored it.
    let scopes: Vec<Scope> = match &scope {
        Scope::User(v) => config
            .redactor
            .stored_forms(v, true)
            .into_iter()
            .map(Scope::User)
            .collect(),
        Scope::Property(k, v) => config
            .redactor
            .stored_forms(v, false)
            .into_iter()
            .map(|v| Scope::Property(k.clone(), v))
            .collect(),
        Scope::Session(_) => vec![scope.clone()],
    };
    let (dir, max_bytes) = &config.spool;
    let spool = (dir.as_path(), *max_bytes);
    let (mut records, mut spooled, mut scrubbed) = (0, 0, true);
    for form in &scopes {
        let out = match &config.store {
            tally::Store::Sqlite(path) => {
                anyhow::ensure!(path.exists(), "no store at {}", path.display());
                purge::sqlite(path, form, spool)?
            }
            tally::Store::ClickHouse(s) => runtime.block_on(purge::clickhouse(s, form, spool))?,
        };
        tracing::info!(
            purge_id = %out.purge_id,
            kind = form.kind(),
            records = out.records,
            spooled = out.spooled,
            "purge done"
        );
        records += out.records;
        spooled += out.spooled;
        scrubbed &= out.spool_scrubbed;
    }
    let forms = match scopes.len() {
        1 => String::new(),
        n => format!(" (as sent and in {} redacted forms)", n - 1),
    };
    println!(
        "Purged {scope}{forms}: {records} records deleted from the store, {spooled} from the spool."
    );
    if !scrubbed {
        println!(
            "The spool is in use by a running Tally: its records of {scope} are dropped when it replays them."
        );
    }
    Ok(())
}

#[allow(clippy::print_stdout)]
fn print_result(
    result: &tally_dashboard::store::sqlite::QueryResult,
    format: SqlFormat,
) -> anyhow::Result<()> {
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    match format {
        SqlFormat::Tsv => {
            writeln!(out, "{}", result.columns.join("\t"))?;
            for row in &result.rows {
                let cells: Vec<String> = row
                    .iter()
                    .map(|v| match v {
                        serde_json::Value::Null => "NULL".to_owned(),
                        serde_json::Value::String(s) => s
                            .replace('\\', "\\\\")
                            .replace('\t', "\\t")
                            .replace('\n', "\\n"),
                        other => other.to_string(),
                    })
                    .collect();
                writeln!(out, "{}", cells.join("\t"))?;
            }
        }
        SqlFormat::Json => {
            for row in &result.rows {
                let obj: serde_json::Map<String, serde_json::Value> = result
                    .columns
                    .iter()
                    .cloned()
                    .zip(row.iter().cloned())
                    .collect();
                writeln!(out, "{}", serde_json::Value::Object(obj))?;
            }
        }
    }
    out.flush()?;
    Ok(())
}

/// Resolves on Ctrl-C, SIGTERM or SIGHUP. SIGHUP drains like SIGTERM: left unhandled it
/// would kill the process at once and lose the records in flight (a closed terminal or an
/// init system's reload sends it). Tally has no config reload; restart it to apply changes.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        use tokio::signal::unix::{signal, SignalKind};
        let listen = |kind: SignalKind, name: &'static str| match signal(kind) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::error!(error = %e, signal = name, "cannot listen for the signal");
                None
            }
        };
        let (mut term, mut hup) = (
            listen(SignalKind::terminate(), "SIGTERM"),
            listen(SignalKind::hangup(), "SIGHUP"),
        );
        tokio::select! {
            () = wait(&mut term) => tracing::info!("SIGTERM: draining"),
            () = wait(&mut hup) => tracing::info!("SIGHUP: draining, as for SIGTERM"),
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
}

/// The next delivery of a signal, or never when it could not be listened for.
#[cfg(unix)]
async fn wait(s: &mut Option<tokio::signal::unix::Signal>) {
    match s {
        Some(s) => {
            s.recv().await;
        }
        None => std::future::pending::<()>().await,
    }
}
