//! Budgets and alerts: how much a scope may spend in a window, who hears about it, and
//! optionally a hard stop.
//!
//! The pieces, one concern each:
//!
//! - [`config`]: `[[budgets]]` and `[alerts]` (with `[[alerts.rules]]` on error rate and p95
//!   latency), validated with errors that name the budget and the field.
//! - [`scope`] and [`window`]: which requests a budget counts and under which key, and when its
//!   spend resets (calendar periods in a time zone, or a rolling duration in 60 buckets).
//! - [`ledger`]: the live counters. [`engine::Engine`] feeds them from every record the ingest
//!   worker receives (through [`tally_ingest::RecordObserver`]; no store query per request),
//!   decides which events fire, and keeps the exhausted scopes the proxy checks.
//! - [`store`]: spend of the current windows (rebuild at startup, reconcile every interval so
//!   several replicas converge), the fired-event log that makes a restart fire nothing twice,
//!   and delivery outcomes.
//! - [`webhook`]: JSON or Slack bodies, `Tally-Signature` HMAC, retries with backoff.
//!
//! [`Alerts`] wires them: an engine, a dispatcher task that persists each event and then
//! delivers it, and a ticker for rollover, projections, rules and reconciliation.
#![deny(missing_docs)]

pub mod config;
pub mod engine;
pub mod event;
pub mod ledger;
mod metrics;
pub mod scope;
pub mod store;
pub mod webhook;
pub mod window;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus_client::registry::Registry;
use tally_ingest::{Record, RecordObserver};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

pub use config::{AlertsConfig, BudgetConfig, Settings};
pub use engine::{BudgetStatus, Engine, Rejection};
pub use event::{Event, EventKind};
pub use metrics::AlertMetrics;
pub use scope::Subject;
pub use store::{AlertStore, HistoryEntry};

/// How often rollover, projections and rules are evaluated.
const TICK: Duration = Duration::from_secs(1);
/// Longest shutdown waits for deliveries in progress.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The running budgets and alerts.
pub struct Alerts {
    engine: Arc<Engine>,
    store: AlertStore,
    metrics: AlertMetrics,
    stop: watch::Sender<bool>,
    tasks: tokio::sync::Mutex<JoinSet<()>>,
}

/// Starting failed: the store could not give the current spend or the fired state. Tally does
/// not start half-blind: without the fired state a restart would fire everything again.
#[derive(Debug, thiserror::Error)]
#[error("budgets: cannot read {what} from the store: {source}")]
pub struct StartError {
    what: &'static str,
    #[source]
    source: store::StoreError,
}

impl Alerts {
    /// Rebuilds the counters of the current windows and the fired state from `store`, then
    /// starts the dispatcher and the ticker.
    pub async fn start(settings: Settings, store: AlertStore) -> Result<Arc<Self>, StartError> {
        let (tx, rx) = mpsc::unbounded_channel();
        let engine = Arc::new(Engine::new(settings, tx));
        reconcile(&engine, &store)
            .await
            .map_err(|source| StartError {
                what: "fired alerts and the current windows' spend",
                source,
            })?;
        let metrics = AlertMetrics::default();
        let (stop, stop_rx) = watch::channel(false);
        let mut tasks = JoinSet::new();
        tasks.spawn(dispatch(
            engine.clone(),
            store.clone(),
            metrics.clone(),
            rx,
            stop_rx.clone(),
        ));
        tasks.spawn(tick(
            engine.clone(),
            store.clone(),
            metrics.clone(),
            stop_rx,
        ));
        let alerts = Arc::new(Self {
            engine,
            store,
            metrics,
            stop,
            tasks: tokio::sync::Mutex::new(tasks),
        });
        alerts.update_gauges();
        Ok(alerts)
    }

    /// The engine (for the proxy's check and the dashboard's status).
    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    /// What the ingest worker calls for every record.
    pub fn observer(&self) -> Arc<dyn RecordObserver> {
        Arc::new(Observer(self.engine.clone()))
    }

    /// Adds the alert metrics to `registry`.
    pub fn register_metrics(&self, registry: &mut Registry) {
        self.metrics.register(registry);
    }

    /// The newest fired events with their deliveries.
    pub async fn history(&self, limit: usize) -> Result<Vec<HistoryEntry>, store::StoreError> {
        self.store.history(limit).await
    }

    fn update_gauges(&self) {
        self.metrics.update(&self.engine.status(now_ms()));
    }

    /// Stops the ticker, persists and delivers the events already fired (within a grace
    /// period), and returns.
    pub async fn shutdown(&self) {
        let _ = self.stop.send(true);
        let mut tasks = self.tasks.lock().await;
        if tokio::time::timeout(SHUTDOWN_GRACE, async {
            while tasks.join_next().await.is_some() {}
        })
        .await
        .is_err()
        {
            tracing::warn!("alert deliveries still running at shutdown; abandoning them");
            tasks.abort_all();
        }
    }
}

struct Observer(Arc<Engine>);

impl RecordObserver for Observer {
    fn observe(&self, record: &Record) {
        self.0.observe(record, now_ms());
    }
}

/// Brings the engine up to what the store knows: events other replicas fired (so they are
/// not fired again here) and the current windows' spend.
async fn reconcile(engine: &Engine, store: &AlertStore) -> Result<(), store::StoreError> {
    let now = now_ms();
    engine.restore_fired(store.fired(now).await?);
    for (i, b) in engine.settings().budgets.iter().enumerate() {
        let rows = store.spend(b, b.window.bounds(now)).await?;
        engine.reconcile(i, rows, now);
    }
    Ok(())
}

async fn tick(
    engine: Arc<Engine>,
    store: AlertStore,
    metrics: AlertMetrics,
    mut stop: watch::Receiver<bool>,
) {
    let every = engine.settings().reconcile_interval;
    let mut ticker = tokio::time::interval(TICK);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_reconcile = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        engine.tick(now_ms());
        if last_reconcile.elapsed() >= every {
            last_reconcile = tokio::time::Instant::now();
            if let Err(e) = reconcile(&engine, &store).await {
                metrics.reconcile_failed.inc();
                tracing::warn!(error = %e, "budget reconciliation failed; live counters only");
            }
        }
        metrics.update(&engine.status(now_ms()));
    }
}

async fn dispatch(
    engine: Arc<Engine>,
    store: AlertStore,
    metrics: AlertMetrics,
    mut events: mpsc::UnboundedReceiver<Event>,
    mut stop: watch::Receiver<bool>,
) {
    let client = match webhook::client() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "webhook client setup failed; alerts are only logged");
            return;
        }
    };
    let settings = engine.settings();
    let retry = webhook::Retry {
        attempts: settings.webhook_attempts,
        backoff: settings.webhook_backoff,
        timeout: settings.webhook_timeout,
    };
    let mut deliveries = JoinSet::new();
    let mut stopping = false;
    loop {
        let event = if stopping {
            match events.try_recv() {
                Ok(e) => e,
                Err(_) => break,
            }
        } else {
            tokio::select! {
                e = events.recv() => match e { Some(e) => e, None => break },
                _ = stop.wait_for(|s| *s) => { stopping = true; continue; }
                Some(_) = deliveries.join_next(), if !deliveries.is_empty() => continue,
            }
        };
        let level = match event.event {
            EventKind::ThresholdCrossed | EventKind::BudgetExceeded => event.threshold,
            _ => 1.0,
        };
        // Another replica may have crossed the same threshold a moment earlier.
        match store.fired_elsewhere(&event, level).await {
            Ok(true) => {
                metrics.duplicates.inc();
                tracing::info!(event_id = %event.id, source = event.source(), "another replica fired this event; not sending it again");
                continue;
            }
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(error = %e, "cannot check for the event in the store; sending it")
            }
        }
        metrics.fired(&event);
        if let Err(e) = store.insert_event(&event, level).await {
            metrics.store_failed.inc();
            tracing::error!(error = %e, event_id = %event.id, "cannot record a fired alert; a restart may fire it again");
        }
        let hooks = settings
            .budgets
            .iter()
            .find(|b| event.budget.as_deref() == Some(b.name.as_str()))
            .map(|b| &b.webhooks)
            .or_else(|| {
                settings
                    .rules
                    .iter()
                    .find(|r| event.rule.as_deref() == Some(r.name.as_str()))
                    .map(|r| &r.webhooks)
            })
            .cloned()
            .unwrap_or_default();
        let event = Arc::new(event);
        for hook in hooks {
            let (client, store, metrics, event) = (
                client.clone(),
                store.clone(),
                metrics.clone(),
                event.clone(),
            );
            deliveries.spawn(async move {
                let o = webhook::deliver(&client, &hook, &event, retry).await;
                metrics.delivered(&o);
                if o.delivered {
                    tracing::info!(webhook = %o.webhook, event_id = %event.id, attempts = o.attempts, "alert delivered");
                } else {
                    tracing::warn!(webhook = %o.webhook, event_id = %event.id, attempts = o.attempts,
                        error = o.error.as_deref().unwrap_or_default(), "alert delivery failed");
                }
                if let Err(e) = store.insert_delivery(event.id, now_ms(), &o).await {
                    metrics.store_failed.inc();
                    tracing::error!(error = %e, "cannot record an alert delivery");
                }
            });
        }
    }
    while deliveries.join_next().await.is_some() {}
}
