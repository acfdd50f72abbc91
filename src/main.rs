//! `tally`: the command line. See README.md for the commands and the config reference.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use tally::{Config, Server, Store};
use tally_dashboard::store::clickhouse::ClickHouseReader;
use tally_dashboard::store::sqlite::SqliteReader;

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
    }
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

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
}
