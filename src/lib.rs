//! The `tally` binary's glue, as a library so the integration tests can run a whole Tally
//! in-process: configuration ([`config`]), and [`Server`], which binds the two ports, wires the
//! proxy to the ingest worker and the dashboard to the store, and shuts everything down in the
//! order that loses nothing.

pub mod config;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use prometheus_client::registry::Registry;
use tally_budgets::{AlertStore, Alerts};
use tally_dashboard::store::clickhouse::ClickHouseReader;
use tally_dashboard::store::sqlite::SqliteReader;
use tally_dashboard::store::Reader;
use tally_ingest::clickhouse::ClickHouseWriter;
use tally_ingest::journal::Journal;
use tally_ingest::spool::Spool;
use tally_ingest::{sqlite, Hooks, IngestMetrics, IngestWorker, RecordFilter};
use tally_proxy::{Proxy, Stages};
use tokio::net::TcpListener;

pub use config::{Config, Store, Validated};

/// A bound, not yet running Tally.
pub struct Server {
    config: Validated,
    proxy_listener: TcpListener,
    dashboard_listener: TcpListener,
}

/// Applies pending migrations to the configured store.
pub async fn migrate(config: &Validated) -> anyhow::Result<usize> {
    match &config.store {
        Store::Sqlite(path) => {
            let mut conn = sqlite::open_rw(path)?;
            Ok(sqlite::migrate(&mut conn)?)
        }
        Store::ClickHouse(s) => Ok(tally_ingest::clickhouse::migrate(s).await?),
    }
}

/// Where the Tally keys live: the store the records go to.
pub fn key_store(store: &Store) -> tally_keys::KeyStore {
    match store {
        Store::Sqlite(path) => tally_keys::KeyStore::Sqlite(path.clone()),
        Store::ClickHouse(s) => tally_keys::KeyStore::clickhouse(s),
    }
}

/// The first load of the keys, before the budgets (whose per-key limits read them) and before
/// listening (a key that exists must work from the first request).
async fn load_keys(
    keyring: &tally_keys::Keyring,
    store: &tally_keys::KeyStore,
    config: &Validated,
) -> anyhow::Result<()> {
    let n = keyring
        .refresh(store)
        .await
        .context("cannot read the Tally keys from the store")?;
    tracing::info!(
        keys = n,
        require_key = config.auth.require_key,
        "Tally keys loaded"
    );
    Ok(())
}

/// Starts the budgets and alert rules, when any are configured.
async fn start_alerts(
    config: &Validated,
    store: AlertStore,
    registry: &mut Registry,
) -> anyhow::Result<Option<Arc<Alerts>>> {
    if config.alerts.is_empty() {
        return Ok(None);
    }
    let a = Alerts::start(config.alerts.clone(), store).await?;
    a.register_metrics(registry);
    tracing::info!(
        budgets = config.alerts.budgets.len(),
        rules = config.alerts.rules.len(),
        "budgets and alerts running"
    );
    Ok(Some(a))
}

impl Server {
    /// Binds both ports (port 0 picks a free one; see [`Server::proxy_addr`]).
    pub async fn bind(config: Validated) -> anyhow::Result<Self> {
        // The connection caps, not `accept` failing for lack of descriptors, should bound how
        // many clients Tally holds: take every descriptor the hard limit allows.
        match tally_net::raise_fd_limit() {
            Ok(limit) => tracing::debug!(limit, "open-file limit"),
            Err(e) => tracing::warn!(error = %e, "could not raise the open-file limit"),
        }
        let proxy_listener = TcpListener::bind(config.proxy.listen)
            .await
            .with_context(|| format!("cannot listen on {} (proxy)", config.proxy.listen))?;
        let dashboard_listener = TcpListener::bind(config.dashboard_listen)
            .await
            .with_context(|| format!("cannot listen on {} (dashboard)", config.dashboard_listen))?;
        Ok(Self {
            config,
            proxy_listener,
            dashboard_listener,
        })
    }

    /// The proxy's bound address.
    pub fn proxy_addr(&self) -> std::io::Result<SocketAddr> {
        self.proxy_listener.local_addr()
    }

    /// The dashboard's bound address.
    pub fn dashboard_addr(&self) -> std::io::Result<SocketAddr> {
        self.dashboard_listener.local_addr()
    }

    /// Runs until `shutdown` resolves, then: stop accepting, let in-flight requests finish
    /// (within the grace period), write every queued record, and return.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let Server {
            config,
            proxy_listener,
            dashboard_listener,
        } = self;

        let mut config = config;
        let key_store = key_store(&config.store);
        let keyring = Arc::new(tally_keys::Keyring::default());
        for b in &mut config.alerts.budgets {
            let Some((_, window)) = config::KEY_BUDGETS.iter().find(|(n, _)| *n == b.name) else {
                continue;
            };
            let ring = keyring.clone();
            b.key_limits = Some(tally_budgets::config::KeyLimits(Arc::new(move |name| {
                let k = ring.by_name(name)?;
                (k.policy.budget_window.as_deref() == Some(*window))
                    .then_some(k.policy.budget_usd)
                    .flatten()
            })));
        }
        let mut registry = Registry::with_prefix("tally");
        let ingest_metrics = IngestMetrics::default();
        ingest_metrics.register(&mut registry);
        config.redactor.register(&mut registry);
        if let Some(g) = &config.guard {
            g.register(&mut registry);
        }
        let redactor: Option<Arc<dyn RecordFilter>> = Some(config.redactor.clone());
        let (tx, rx) = tally_ingest::channel(config.channel_capacity, ingest_metrics.clone());
        let (spool_dir, spool_max) = &config.spool;
        let spool = Spool::open(spool_dir, *spool_max)
            .with_context(|| format!("cannot open the spool at {}", spool_dir.display()))?;
        if !spool.is_empty() {
            tracing::warn!(
                segments = spool.len(),
                bytes = spool.bytes(),
                "spool holds batches from an earlier run; replaying"
            );
        }
        let spool = Some(spool);
        // After the spool, whose lock keeps a second process out of its directory (the
        // journal lives inside it).
        let journal = config
            .journal
            .as_ref()
            .map(|(dir, max)| {
                Journal::open(dir, *max, ingest_metrics.clone())
                    .with_context(|| format!("cannot open the record journal at {}", dir.display()))
            })
            .transpose()?;
        let tx = match &journal {
            Some((j, _)) => tx.with_journal(j.clone()),
            None => tx,
        };
        let journal_handle = journal.as_ref().map(|(j, _)| j.clone());
        // In each arm: migrations first (the budgets read their tables and the current
        // windows' spend), then the budgets, then the ingest worker that feeds them.
        let mut retention = None;
        let (worker, reader, alerts) = match &config.store {
            Store::Sqlite(path) => {
                let mut conn = sqlite::open_writer(path)?;
                let applied = sqlite::migrate(&mut conn)?;
                tracing::info!(path = %path.display(), applied, "SQLite store ready");
                load_keys(&keyring, &key_store, &config).await?;
                let alerts =
                    start_alerts(&config, AlertStore::Sqlite(path.clone()), &mut registry).await?;
                let worker = IngestWorker::spawn_journaled(
                    rx,
                    sqlite::SqliteWriter::watching(
                        conn,
                        path,
                        ingest_metrics.store_reopened.clone(),
                    ),
                    config.batch.clone(),
                    ingest_metrics.clone(),
                    spool,
                    Hooks {
                        filter: redactor.clone(),
                        observer: alerts.as_ref().map(|a| a.observer()),
                    },
                    journal,
                )?;
                // SQLite has no TTL: a sweep applies `[store]`'s retention (ClickHouse's
                // migrations set it as TTLs instead).
                if !config.retention.keeps_everything() {
                    let metrics = sqlite::retention::RetentionMetrics::default();
                    registry.register(
                        "retention_records_deleted",
                        "Records deleted by the SQLite retention sweep",
                        metrics.records.clone(),
                    );
                    registry.register(
                        "retention_bodies_cleared",
                        "Records whose bodies the SQLite retention sweep cleared",
                        metrics.bodies.clone(),
                    );
                    retention = Some(sqlite::retention::RetentionTask::spawn(
                        path,
                        config.retention.clone(),
                        sqlite::retention::INTERVAL,
                        metrics,
                    )?);
                }
                (worker, Reader::Sqlite(SqliteReader::new(path)), alerts)
            }
            Store::ClickHouse(s) => {
                let applied = tally_ingest::clickhouse::migrate(s)
                    .await
                    .with_context(|| format!("ClickHouse at {} is not usable", s.url))?;
                tracing::info!(url = %s.url, database = %s.database, applied, "ClickHouse store ready");
                load_keys(&keyring, &key_store, &config).await?;
                let alerts =
                    start_alerts(&config, AlertStore::clickhouse(s), &mut registry).await?;
                let worker = IngestWorker::spawn_journaled(
                    rx,
                    ClickHouseWriter::new(s)?,
                    config.batch.clone(),
                    ingest_metrics.clone(),
                    spool,
                    Hooks {
                        filter: redactor.clone(),
                        observer: alerts.as_ref().map(|a| a.observer()),
                    },
                    journal,
                )?;
                (
                    worker,
                    Reader::ClickHouse(Box::new(ClickHouseReader::new(s))),
                    alerts,
                )
            }
        };

        let refresher = keyring.spawn_refresh(key_store.clone(), config.auth.refresh);
        // Spans carry what the store would: the same redaction runs over them.
        let (tracer, exporter) = if config.otel.enabled() {
            let (t, e) = tally_otel::Tracer::start(&config.otel, redactor.clone())?;
            tracing::info!(
                endpoint = config.otel.endpoint.as_deref().unwrap_or_default(),
                sample_ratio = config.otel.sample_ratio,
                "exporting spans over OTLP"
            );
            (Some(t), Some(e))
        } else {
            (None, None)
        };
        let stages = Stages {
            tracing: tracer,
            budgets: alerts.as_ref().map(|a| a.engine().clone()),
            guard: config.guard.clone(),
            auth: Some(Arc::new(tally_proxy::Auth::new(
                keyring.clone(),
                config.auth.require_key,
                config.auth.max_failures_per_minute,
            ))),
            ..Stages::build(&config.stages, &config.providers)?
        };
        let proxy = Proxy::with_stages(
            config.proxy.clone(),
            config.providers,
            config.pricing,
            tx,
            stages,
        )?;
        proxy.register_metrics(&mut registry);

        let state = tally_dashboard::AppState {
            reader,
            registry: Arc::new(registry),
            ingest: Some(ingest_metrics),
            auth: config.dashboard_auth.clone().map(Arc::new),
            alerts: alerts.clone(),
            keys: Some(Arc::new(tally_dashboard::admin::KeysAdmin {
                admin: tally_keys::Admin::new(key_store.clone()),
                keyring: keyring.clone(),
                token: config.auth.admin_token.clone(),
                loopback: config.dashboard_listen.ip().is_loopback(),
                default_grace_ms: config.auth.rotate_grace.as_millis() as i64,
            })),
        };
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|s| *s).await;
        };

        tracing::info!(
            proxy = %proxy_listener.local_addr()?,
            dashboard = %dashboard_listener.local_addr()?,
            "tally is listening"
        );
        let dashboard = tally_net::serve(
            dashboard_listener,
            hyper_util::service::TowerToHyperService::new(tally_dashboard::app(state)),
            config.dashboard_limits,
            config.dashboard_grace,
            "dashboard",
            proxy.metrics().conns.clone(),
            stopped(stop_rx.clone()),
        );
        let proxy_run = proxy.serve(proxy_listener, stopped(stop_rx));

        let signal = async move {
            shutdown.await;
            tracing::info!("shutting down");
            let _ = stop_tx.send(true);
        };
        let (proxy_result, (), ()) = tokio::join!(proxy_run, dashboard, signal);
        refresher.abort();
        proxy_result.context("proxy server failed")?;
        // Every request's span is queued; the collector gets one export timeout for them.
        if let Some(e) = exporter {
            let _ = tokio::task::spawn_blocking(move || e.shutdown()).await;
        }

        // Every connection task has ended, so no new record can be produced except by token
        // estimates still running on blocking threads; give those a moment.
        tokio::task::spawn_blocking(move || worker.shutdown())
            .await
            .context("ingest worker join failed")?;
        if let Some(r) = retention {
            // Waits for the chunk under way (short: see `sqlite::retention::CHUNK`).
            let _ = tokio::task::spawn_blocking(move || r.stop()).await;
        }
        // Everything queued is stored or spooled: the journal's segments can go.
        if let Some(j) = journal_handle {
            j.close();
        }
        // Events fired by the last records are persisted and delivered (within a grace period).
        if let Some(a) = alerts {
            a.shutdown().await;
        }
        tracing::info!("all records written; bye");
        Ok(())
    }
}
