//! `tally`: the command line. See README.md for the commands and the config reference.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use tally::{Config, Server, Store};
use tally_dashboard::store::clickhouse::ClickHouseReader;
use tally_dashboard::store::sqlite::SqliteReader;

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
    let config = Config::load(cli.config.as_deref())?.validate()?;
    let runtime = tokio::runtime::Runtime::new().context("cannot start the runtime")?;
    match cli.command.unwrap_or(Command::Serve) {
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
    }
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
