//! `tally.toml`: the file, environment overrides, defaults, and validation into the types the
//! crates use.
//!
//! Layering (later wins): built-in defaults, the config file (`--config` / `TALLY_CONFIG`,
//! optional), then `TALLY_<SECTION>__<KEY>` environment variables (e.g.
//! `TALLY_PROXY__LISTEN=0.0.0.0:8787`), then `TALLY_CLICKHOUSE_URL`.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use figment::providers::{Env, Format, Toml};
use figment::Figment;
use serde::Deserialize;
use tally_ingest::clickhouse::{ClickHouseConfig, ClickHouseSettings};
use tally_ingest::{
    BatchConfig, DEFAULT_CHANNEL_CAPACITY, DEFAULT_FLUSH_INTERVAL, DEFAULT_MAX_ATTEMPTS,
    DEFAULT_MAX_BYTES, DEFAULT_MAX_ROWS,
};
use tally_proxy::{
    Price, PricingTable, ProviderConfig, Providers, ProxyConfig, Settings, UnitPrice,
};

/// Where the dashboard listens when unset.
pub const DEFAULT_DASHBOARD_LISTEN: &str = "127.0.0.1:8788";
/// The SQLite store file when unset.
pub const DEFAULT_SQLITE_PATH: &str = "./tally.db";
/// The spool directory when unset.
pub const DEFAULT_SPOOL_DIR: &str = "./tally-spool";

/// The whole config file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// `[proxy]`: listen address, body capture limit, timeouts.
    pub proxy: ProxyConfig,
    /// `[dashboard]`: listen address and exposure.
    pub dashboard: DashboardConfig,
    /// `[store]`: which store and where.
    pub store: StoreConfig,
    /// `[ingest]`: channel and batching limits.
    pub ingest: IngestConfig,
    /// `[providers.<name>]`: overrides of built-in providers and new ones.
    pub providers: BTreeMap<String, ProviderConfig>,
    /// `[pricing]`: extra and overriding prices.
    pub pricing: PricingConfig,
    /// `[[budgets]]`: spend limits per scope and window.
    pub budgets: Vec<tally_budgets::BudgetConfig>,
    /// `[alerts]`: time zone, webhook delivery, reconciliation, and `[[alerts.rules]]`.
    pub alerts: tally_budgets::AlertsConfig,
    /// `[cache]`: the response cache's backend, limits and always-cached providers.
    pub cache: tally_proxy::stages::CacheConfig,
    /// `[rate_limits]`: backend and `[[rate_limits.policies]]`.
    pub rate_limits: tally_proxy::stages::RateLimitsConfig,
    /// `[routers.<name>]`: targets, strategy, retries and fallbacks.
    pub routers: BTreeMap<String, tally_proxy::stages::RouterConfig>,
    /// `[[guardrails]]`: external checks before forwarding.
    pub guardrails: Vec<tally_proxy::stages::GuardrailConfig>,
    /// `[auth]`: Tally keys.
    pub auth: AuthConfig,
    /// `[privacy]`: redaction before storage.
    pub privacy: PrivacySection,
    /// `[otel]`: OpenTelemetry spans over OTLP.
    pub otel: tally_otel::OtelConfig,
}

/// `[privacy]`: the redaction rules, and the key their `hash` mode uses.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(try_from = "figment::value::Dict")]
pub struct PrivacySection {
    /// The HMAC key of `hash` mode, `{ env = "VAR" }` or `{ file = "path" }`, read at start;
    /// required when a detector hashes. Like provider keys, never stored or logged.
    pub hmac_key: Option<tally_proxy::SecretSource>,
    /// Detectors, modes and scopes.
    pub rules: tally_privacy::PrivacyConfig,
}

/// The key is taken out by hand and the rest read as the privacy crate's config, because
/// `#[serde(flatten)]` would silently accept unknown keys, and a misspelt detector setting must
/// stop the start like any other typo.
impl TryFrom<figment::value::Dict> for PrivacySection {
    type Error = String;

    fn try_from(mut dict: figment::value::Dict) -> Result<Self, Self::Error> {
        let hmac_key = dict
            .remove("hmac_key")
            .map(|v| v.deserialize().map_err(|e| format!("hmac_key: {e}")))
            .transpose()?;
        let rules = figment::value::Value::from(dict)
            .deserialize()
            .map_err(|e| e.to_string())?;
        Ok(Self { hmac_key, rules })
    }
}

impl PrivacySection {
    fn redactor(&self) -> anyhow::Result<tally_privacy::Redactor> {
        let key = match &self.hmac_key {
            None => None,
            Some(tally_proxy::SecretSource::Env(var)) => Some(
                std::env::var(var)
                    .with_context(|| {
                        format!("privacy.hmac_key: environment variable {var} is not set")
                    })?
                    .trim()
                    .as_bytes()
                    .to_vec(),
            ),
            Some(tally_proxy::SecretSource::File(path)) => Some(
                std::fs::read_to_string(path)
                    .with_context(|| format!("privacy.hmac_key: cannot read {}", path.display()))?
                    .trim()
                    .as_bytes()
                    .to_vec(),
            ),
        };
        Ok(tally_privacy::Redactor::new(&self.rules, key)?)
    }
}

/// `[auth]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Refuse every proxied request without a valid Tally key; false when unset.
    pub require_key: bool,
    /// How often each replica reloads the keys from the store, milliseconds; 1,000 when
    /// unset. A new key or a revocation reaches every replica within about this long.
    pub refresh_ms: u64,
    /// Failed Tally-key attempts allowed per client address per minute; 20 when unset.
    pub max_failures_per_minute: u32,
    /// Bearer token of the admin API (`/api/admin/keys`). Without it, the admin API answers
    /// only on a loopback dashboard listen.
    pub admin_token: Option<String>,
    /// How long a rotated key's old secret keeps working when the rotation names no grace,
    /// seconds; 86,400 when unset.
    pub rotate_grace_secs: u64,
    /// Where the events of Tally keys' own budgets (`tally keys create --budget-usd`) go.
    pub budget_webhooks: Vec<tally_budgets::config::WebhookConfig>,
}

/// The budgets that hold Tally keys' own limits, one per window a key can choose; each key's
/// `budget_usd` is its limit there (see `Server::run`).
pub const KEY_BUDGETS: [(&str, &str); 3] = [
    ("keys-day", "day"),
    ("keys-week", "week"),
    ("keys-month", "month"),
];

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            require_key: false,
            refresh_ms: 1000,
            max_failures_per_minute: 20,
            admin_token: None,
            rotate_grace_secs: 86_400,
            budget_webhooks: Vec::new(),
        }
    }
}

/// `[auth]`, checked.
#[derive(Debug, Clone)]
pub struct AuthSettings {
    /// See [`AuthConfig::require_key`].
    pub require_key: bool,
    /// See [`AuthConfig::refresh_ms`].
    pub refresh: Duration,
    /// See [`AuthConfig::max_failures_per_minute`].
    pub max_failures_per_minute: u32,
    /// See [`AuthConfig::admin_token`].
    pub admin_token: Option<String>,
    /// See [`AuthConfig::rotate_grace_secs`].
    pub rotate_grace: Duration,
}

/// `[dashboard]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DashboardConfig {
    /// Address for the dashboard, `/metrics` and the API; `127.0.0.1:8788` when unset.
    pub listen: String,
    /// Allow a non-loopback `listen` without authentication; false when unset. Logged bodies
    /// contain prompts: set `auth_token` or `auth_username`/`auth_password` instead.
    pub allow_public: bool,
    /// Require `Authorization: Bearer <token>` (or basic auth with this as the password).
    pub auth_token: Option<String>,
    /// Require basic auth with this user name (and `auth_password`).
    pub auth_username: Option<String>,
    /// The basic-auth password for `auth_username`.
    pub auth_password: Option<String>,
    /// A connection that has sent no complete request this long after connecting is closed,
    /// milliseconds; 10,000 when unset.
    pub header_read_timeout_ms: u64,
    /// A connection idle this long after its last request is closed, milliseconds; 60,000
    /// when unset.
    pub keep_alive_timeout_ms: u64,
    /// Most connections open at once; past it a new one gets a 503 and is closed. 1,024 when
    /// unset.
    pub max_connections: usize,
    /// Time in-flight dashboard requests get to finish at shutdown, milliseconds; 5,000 when
    /// unset. Connections left after it are closed, so shutdown never waits on a client.
    pub shutdown_grace_ms: u64,
}

/// The dashboard's header timeout when unset.
pub const DEFAULT_DASHBOARD_HEADER_READ_TIMEOUT_MS: u64 = 10_000;
/// The dashboard's connection cap when unset.
pub const DEFAULT_DASHBOARD_MAX_CONNECTIONS: usize = 1024;

impl Default for DashboardConfig {
    fn default() -> Self {
        Self {
            listen: DEFAULT_DASHBOARD_LISTEN.to_owned(),
            allow_public: false,
            auth_token: None,
            auth_username: None,
            auth_password: None,
            header_read_timeout_ms: DEFAULT_DASHBOARD_HEADER_READ_TIMEOUT_MS,
            keep_alive_timeout_ms: 60_000,
            max_connections: DEFAULT_DASHBOARD_MAX_CONNECTIONS,
            shutdown_grace_ms: 5_000,
        }
    }
}

/// Which store records go to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// The embedded default: one SQLite file.
    #[default]
    Sqlite,
    /// A ClickHouse server.
    Clickhouse,
}

/// `[store]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// `sqlite` (default) or `clickhouse`.
    pub kind: StoreKind,
    /// SQLite file; `./tally.db` when unset.
    pub path: PathBuf,
    /// ClickHouse HTTP URL, e.g. `http://127.0.0.1:8123`.
    pub url: Option<String>,
    /// ClickHouse database; `tally` when unset.
    pub database: Option<String>,
    /// ClickHouse user.
    pub user: Option<String>,
    /// ClickHouse password.
    pub password: Option<String>,
    /// ClickHouse cluster for `ON CLUSTER` migrations, replicated engines and Distributed
    /// tables; unset for a single server.
    pub cluster: Option<String>,
    /// Days rows are kept (both stores); 0 (default) keeps them forever.
    pub retention_days: u32,
    /// Days request and response bodies are kept (both stores); 0 (default) as long as the row.
    pub body_ttl_days: u32,
    /// `[[store.retention]]`: property values with days of their own, first match wins.
    pub retention: Vec<RetentionRuleConfig>,
    /// ClickHouse wire compression: `lz4` (default) or `none`.
    pub compression: tally_ingest::clickhouse::Compression,
    /// ClickHouse per-request timeout, milliseconds; 30000 when unset.
    pub timeout_ms: Option<u64>,
    /// Where batches the store cannot take wait on disk; `./tally-spool` when unset.
    pub spool_dir: PathBuf,
    /// Spool size limit in bytes; 1 GiB when unset. At the limit new batches are dropped
    /// (counted as `spool_full`), never older ones.
    pub spool_max_bytes: u64,
    /// Write each record to a crash journal (`<spool_dir>/journal`) before its response
    /// completes, so `kill -9` loses no record of an answered request; on when unset.
    pub journal: bool,
    /// The journal's disk bound in bytes; 256 MiB when unset. Past it records are still
    /// stored, but not journaled (counted in `tally_journal_refused_total{reason="full"}`).
    pub journal_max_bytes: u64,
}

/// `[[store.retention]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionRuleConfig {
    /// `key=value`: the records whose property `key` is `value`, e.g. `tenant=acme`.
    pub property: String,
    /// Days their records are kept (0 forever); `store.retention_days` when unset.
    pub retention_days: Option<u32>,
    /// Days their bodies are kept (0 as long as the record); `store.body_ttl_days` when unset.
    pub body_ttl_days: Option<u32>,
}

impl StoreConfig {
    /// The retention policy, checked: each rule names a property value, and keeps no bodies
    /// longer than its records.
    fn retention_policy(&self) -> anyhow::Result<tally_ingest::retention::Policy> {
        let check = |what: &str, records: u32, bodies: u32| {
            anyhow::ensure!(
                records == 0 || bodies <= records,
                "{what}: body_ttl_days ({bodies}) must not exceed retention_days ({records})"
            );
            Ok(())
        };
        check("store", self.retention_days, self.body_ttl_days)?;
        let mut rules = Vec::new();
        for (i, r) in self.retention.iter().enumerate() {
            let (k, v) = r
                .property
                .split_once('=')
                .filter(|(k, v)| !k.is_empty() && !v.is_empty())
                .with_context(|| {
                    format!(
                        "store.retention[{i}].property {:?} must be key=value, like \"tenant=acme\"",
                        r.property
                    )
                })?;
            let rule = tally_ingest::retention::Rule {
                property: (k.to_owned(), v.to_owned()),
                records_days: r.retention_days.unwrap_or(self.retention_days),
                bodies_days: r.body_ttl_days.unwrap_or(self.body_ttl_days),
            };
            check(
                &format!("store.retention[{i}]"),
                rule.records_days,
                rule.bodies_days,
            )?;
            rules.push(rule);
        }
        Ok(tally_ingest::retention::Policy {
            records_days: self.retention_days,
            bodies_days: self.body_ttl_days,
            rules,
        })
    }
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            kind: StoreKind::Sqlite,
            path: PathBuf::from(DEFAULT_SQLITE_PATH),
            url: None,
            database: None,
            user: None,
            password: None,
            cluster: None,
            retention_days: 0,
            body_ttl_days: 0,
            retention: Vec::new(),
            compression: tally_ingest::clickhouse::Compression::Lz4,
            timeout_ms: None,
            spool_dir: PathBuf::from(DEFAULT_SPOOL_DIR),
            spool_max_bytes: tally_ingest::spool::DEFAULT_MAX_BYTES,
            journal: true,
            journal_max_bytes: tally_ingest::journal::DEFAULT_MAX_BYTES,
        }
    }
}

/// `[ingest]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngestConfig {
    /// Records the channel holds before new ones are dropped (and counted); 65536 when unset.
    pub channel_capacity: usize,
    /// Records per batch; 10000 when unset.
    pub batch_max_rows: Option<usize>,
    /// Approximate bytes per batch; 16 MiB when unset.
    pub batch_max_bytes: usize,
    /// Longest a record waits in a partial batch, milliseconds; 200 for SQLite and 1000 for
    /// ClickHouse (about one insert per second, as ClickHouse recommends) when unset.
    pub flush_interval_ms: Option<u64>,
    /// Write attempts per batch before it goes to the spool; 5 when unset.
    pub max_attempts: u32,
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self {
            channel_capacity: DEFAULT_CHANNEL_CAPACITY,
            batch_max_rows: None,
            batch_max_bytes: DEFAULT_MAX_BYTES,
            flush_interval_ms: None,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
        }
    }
}

/// ClickHouse flush interval when `ingest.flush_interval_ms` is unset.
pub const CLICKHOUSE_FLUSH_INTERVAL_MS: u64 = 1_000;

/// `[pricing]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PricingConfig {
    /// The catalog `tally prices update` writes; when it exists it replaces the built-in
    /// one. Default `./tally-prices.json`.
    pub catalog_file: Option<PathBuf>,
    /// A price file in LiteLLM's `model_prices_and_context_window.json` format, loaded over
    /// the catalog and Tally's corrections.
    pub litellm_file: Option<PathBuf>,
    /// `[pricing.models."name"]` entries (USD per 1M tokens), applied last.
    pub models: HashMap<String, Price>,
    /// `[pricing.units."name"]` entries: per image, per minute, per million characters.
    pub units: HashMap<String, UnitPrice>,
}

impl PricingConfig {
    /// Where `tally prices update` writes the catalog.
    pub fn catalog_path(&self) -> PathBuf {
        self.catalog_file
            .clone()
            .unwrap_or_else(|| PathBuf::from("tally-prices.json"))
    }

    /// The catalog (the updated one when there is one, else the built-in) with Tally's
    /// corrections. An updated catalog that does not parse stops the start: running on the
    /// built-in prices instead would be a silent change of every cost.
    fn table(&self) -> anyhow::Result<PricingTable> {
        let path = self.catalog_path();
        let table = match std::fs::read_to_string(&path) {
            Ok(text) => PricingTable::with_catalog(&text).with_context(|| {
                format!(
                    "pricing.catalog_file {} (written by `tally prices update`; run it again, or remove the file to use the built-in prices)",
                    path.display()
                )
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => PricingTable::builtin()?,
            Err(e) => {
                return Err(e).with_context(|| format!("pricing.catalog_file {}", path.display()))
            }
        };
        tracing::info!(models = table.len(), source = table.source().unwrap_or("?"), catalog = %path.display(), "prices loaded");
        Ok(table)
    }
}

/// The store records go to, validated.
#[derive(Debug, Clone)]
pub enum Store {
    /// The SQLite file at this path.
    Sqlite(PathBuf),
    /// A ClickHouse server.
    ClickHouse(ClickHouseSettings),
}

/// The config after validation, in the types the crates take.
pub struct Validated {
    /// Proxy settings.
    pub proxy: Settings,
    /// Providers with overrides applied.
    pub providers: Providers,
    /// Prices with overrides applied.
    pub pricing: PricingTable,
    /// Dashboard address.
    pub dashboard_listen: SocketAddr,
    /// The dashboard's credential, when one is configured.
    pub dashboard_auth: Option<tally_dashboard::Auth>,
    /// The dashboard port's connection limits.
    pub dashboard_limits: tally_net::Limits,
    /// Time dashboard requests get to finish at shutdown.
    pub dashboard_grace: Duration,
    /// The store.
    pub store: Store,
    /// How long records and bodies are kept (applied by the SQLite sweep; ClickHouse's
    /// settings carry the same policy as TTLs).
    pub retention: tally_ingest::retention::Policy,
    /// The spool directory and its limit in bytes.
    pub spool: (PathBuf, u64),
    /// The crash journal's directory and its limit in bytes, when it is on.
    pub journal: Option<(PathBuf, u64)>,
    /// Channel capacity.
    pub channel_capacity: usize,
    /// Flush loop limits.
    pub batch: BatchConfig,
    /// Budgets and alert rules (empty when none are configured).
    pub alerts: tally_budgets::Settings,
    /// Cache, rate limit and router tables; built into stages by the server (Redis backends
    /// need its runtime). Routers are already checked against the providers.
    pub stages: tally_proxy::StagesConfig,
    /// Tally keys.
    pub auth: AuthSettings,
    /// Redaction before storage.
    pub redactor: std::sync::Arc<tally_privacy::Redactor>,
    /// The request-path guard, when `[privacy.request]` names a detector.
    pub guard: Option<std::sync::Arc<tally_privacy::RequestGuard>>,
    /// `[otel]`, checked; its exporter is built by the server (it needs a thread and a
    /// runtime).
    pub otel: tally_otel::OtelConfig,
}

impl Config {
    /// Loads defaults, the optional file, and environment overrides.
    pub fn load(file: Option<&Path>) -> anyhow::Result<Self> {
        let mut fig = Figment::new();
        if let Some(path) = file {
            if !path.exists() {
                bail!("config file {} does not exist", path.display());
            }
            fig = fig.merge(Toml::file(path));
        }
        // Only `TALLY_<SECTION>__<KEY>` variables are config; other TALLY_* variables
        // (TALLY_CONFIG, TALLY_LOG, test settings) must not be read as unknown keys.
        fig = fig.merge(
            Env::prefixed("TALLY_")
                .filter(|k| k.as_str().contains("__"))
                .split("__"),
        );
        let mut config: Config = fig.extract().context("invalid configuration")?;
        if let Ok(url) = std::env::var("TALLY_CLICKHOUSE_URL") {
            if !url.is_empty() {
                config.store.kind = StoreKind::Clickhouse;
                config.store.url = Some(url);
            }
        }
        Ok(config)
    }

    /// Checks everything that can be checked before binding a socket.
    pub fn validate(&self) -> anyhow::Result<Validated> {
        let proxy = self.proxy.validate()?;
        let providers = Providers::new(&self.providers)?;
        let mut pricing = self.pricing.table()?;
        if let Some(path) = &self.pricing.litellm_file {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("pricing.litellm_file {}", path.display()))?;
            let n = pricing
                .extend_litellm(&text)
                .with_context(|| format!("pricing.litellm_file {}", path.display()))?;
            tracing::info!(models = n, file = %path.display(), "loaded LiteLLM prices");
        }
        for (model, price) in &self.pricing.models {
            pricing.insert(model, price.clone());
        }
        for (model, price) in &self.pricing.units {
            pricing.insert_units(model, price.clone());
        }
        let dashboard_listen: SocketAddr = self.dashboard.listen.parse().with_context(|| {
            format!(
                "dashboard.listen {:?} is not an address like 127.0.0.1:8788",
                self.dashboard.listen
            )
        })?;
        let d = &self.dashboard;
        let nonempty = |v: &Option<String>| v.clone().filter(|v| !v.is_empty());
        let dashboard_auth = match (
            nonempty(&d.auth_token),
            nonempty(&d.auth_username),
            nonempty(&d.auth_password),
        ) {
            (None, None, None) => None,
            (Some(t), None, None) => Some(tally_dashboard::Auth::Token(t)),
            (None, Some(user), Some(password)) => {
                Some(tally_dashboard::Auth::Basic { user, password })
            }
            _ => bail!(
                "dashboard auth: set either auth_token, or both auth_username and auth_password"
            ),
        };
        if !dashboard_listen.ip().is_loopback() && dashboard_auth.is_none() && !d.allow_public {
            bail!(
                "dashboard.listen {dashboard_listen} is not a loopback address and the dashboard \
                 has no authentication; it would expose logged prompts to the network. Set \
                 dashboard.auth_token (or auth_username and auth_password), or \
                 dashboard.allow_public = true to do it anyway"
            );
        }
        let retention = self.store.retention_policy()?;
        let store = match self.store.kind {
            StoreKind::Sqlite => Store::Sqlite(self.store.path.clone()),
            StoreKind::Clickhouse => {
                let url = self.store.url.clone().context(
                    "store.kind = \"clickhouse\" needs store.url (or TALLY_CLICKHOUSE_URL)",
                )?;
                Store::ClickHouse(
                    ClickHouseConfig {
                        url,
                        database: self.store.database.clone(),
                        user: self.store.user.clone(),
                        password: self.store.password.clone(),
                        cluster: self.store.cluster.clone(),
                        retention_days: self.store.retention_days,
                        body_ttl_days: self.store.body_ttl_days,
                        retention_rules: retention.rules.clone(),
                        compression: self.store.compression,
                        timeout_ms: self.store.timeout_ms,
                    }
                    .validate()?,
                )
            }
        };
        let default_interval_ms = match store {
            Store::Sqlite(_) => DEFAULT_FLUSH_INTERVAL.as_millis() as u64,
            Store::ClickHouse(_) => CLICKHOUSE_FLUSH_INTERVAL_MS,
        };
        let max_rows = self.ingest.batch_max_rows.unwrap_or(DEFAULT_MAX_ROWS);
        if self.ingest.channel_capacity == 0 || max_rows == 0 {
            bail!("ingest.channel_capacity and ingest.batch_max_rows must be greater than zero");
        }
        // Tally keys' own budgets go through the same engine as configured ones: enforced,
        // with thresholds and webhooks. Their limit is per key (the placeholder is replaced).
        let budgets: Vec<tally_budgets::BudgetConfig> = self
            .budgets
            .iter()
            .cloned()
            .chain(
                KEY_BUDGETS
                    .iter()
                    .map(|(name, window)| tally_budgets::BudgetConfig {
                        name: (*name).to_owned(),
                        scope: Some("per_key".into()),
                        limit_usd: 1.0,
                        window: (*window).to_owned(),
                        thresholds: None,
                        webhooks: self.auth.budget_webhooks.clone(),
                        enforce: true,
                        timezone: Some("UTC".into()),
                    }),
            )
            .collect();
        let alerts = tally_budgets::config::validate(
            &budgets,
            &self.alerts,
            &format!("http://{dashboard_listen}"),
        )?;
        let stages = tally_proxy::StagesConfig {
            cache: self.cache.clone(),
            rate_limits: self.rate_limits.clone(),
            routers: self.routers.clone(),
            guardrails: self.guardrails.clone(),
        };
        // Everything but the Redis connections is checked now, so `tally serve` fails before
        // binding anything when a router names an unknown provider or a policy is malformed.
        stages.validate(&providers)?;
        let a = &self.auth;
        if a.refresh_ms == 0 || a.refresh_ms > 3_600_000 {
            bail!("auth.refresh_ms must be between 1 and 3600000");
        }
        if a.max_failures_per_minute == 0 {
            bail!("auth.max_failures_per_minute must be above 0");
        }
        let auth = AuthSettings {
            require_key: a.require_key,
            refresh: Duration::from_millis(a.refresh_ms),
            max_failures_per_minute: a.max_failures_per_minute,
            admin_token: nonempty(&a.admin_token),
            rotate_grace: Duration::from_secs(a.rotate_grace_secs),
        };
        let redactor = std::sync::Arc::new(self.privacy.redactor()?);
        let guard = tally_privacy::RequestGuard::new(&self.privacy.rules)?.map(std::sync::Arc::new);
        if let Some(g) = &guard {
            if let Some(p) = g
                .providers()
                .iter()
                .find(|p| !stages.is_destination(p, &providers))
            {
                bail!("privacy.request.providers: {p:?} is neither a provider nor a router");
            }
        }
        for s in &self.privacy.rules.scopes {
            if let Some(p) = &s.provider {
                if providers.get(p).is_none() {
                    bail!(
                        "privacy.scopes: provider {p:?} is not configured; the providers are {}",
                        providers.names().join(", ")
                    );
                }
            }
        }
        self.otel.validate()?;
        Ok(Validated {
            otel: self.otel.clone(),
            redactor,
            guard,
            auth,
            stages,
            alerts,
            proxy,
            providers,
            pricing,
            dashboard_listen,
            dashboard_auth,
            dashboard_limits: tally_net::Limits {
                header_read_timeout: Duration::from_millis(d.header_read_timeout_ms.max(1)),
                keep_alive_timeout: Duration::from_millis(d.keep_alive_timeout_ms.max(1)),
                max_connections: d.max_connections.max(1),
            },
            dashboard_grace: Duration::from_millis(d.shutdown_grace_ms),
            store,
            retention,
            spool: (self.store.spool_dir.clone(), self.store.spool_max_bytes),
            journal: self.store.journal.then(|| {
                (
                    self.store.spool_dir.join("journal"),
                    self.store.journal_max_bytes,
                )
            }),
            channel_capacity: self.ingest.channel_capacity,
            batch: BatchConfig {
                max_rows,
                max_bytes: self.ingest.batch_max_bytes.max(1),
                flush_interval: Duration::from_millis(
                    self.ingest
                        .flush_interval_ms
                        .unwrap_or(default_interval_ms)
                        .max(1),
                ),
                max_attempts: self.ingest.max_attempts.max(1),
                ..BatchConfig::default()
            },
        })
    }
}

#[cfg(test)]
// figment's Jail API returns its large error type by value; that is its choice, not ours.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;

    #[test]
    fn section_variables_override_and_other_tally_variables_are_ignored() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("TALLY_PROXY__LISTEN", "127.0.0.1:9999");
            jail.set_env("TALLY_INGEST__BATCH_MAX_ROWS", "7");
            jail.set_env("TALLY_LOG", "debug");
            jail.set_env("TALLY_SOMETHING_ELSE", "x");
            let c = Config::load(None).expect("loads");
            assert_eq!(c.proxy.listen, "127.0.0.1:9999");
            assert_eq!(c.ingest.batch_max_rows, Some(7));
            jail.set_env("TALLY_PROXY__LISEN", "x");
            let e = Config::load(None).expect_err("typo in a section key is an error");
            assert!(format!("{e:#}").contains("lisen"), "{e:#}");
            Ok(())
        });
    }

    #[test]
    fn a_public_dashboard_needs_auth_or_an_explicit_opt_in() {
        let public = |f: fn(&mut DashboardConfig)| {
            let mut c = Config::default();
            c.dashboard.listen = "0.0.0.0:8788".into();
            f(&mut c.dashboard);
            c.validate()
        };
        let Err(e) = public(|_| {}) else {
            panic!("an open public dashboard must be refused");
        };
        assert!(format!("{e:#}").contains("auth_token"), "{e:#}");
        let v = public(|d| d.auth_token = Some("t".into())).expect("token is enough");
        assert!(matches!(
            v.dashboard_auth,
            Some(tally_dashboard::Auth::Token(_))
        ));
        let v = public(|d| {
            d.auth_username = Some("ops".into());
            d.auth_password = Some("pw".into());
        })
        .expect("basic auth is enough");
        assert!(matches!(
            v.dashboard_auth,
            Some(tally_dashboard::Auth::Basic { .. })
        ));
        public(|d| d.allow_public = true).expect("explicit opt-in");
        let Err(e) = public(|d| d.auth_username = Some("ops".into())) else {
            panic!("half of basic auth must be refused");
        };
        assert!(format!("{e:#}").contains("auth_password"), "{e:#}");
    }

    #[test]
    fn file_values_and_clickhouse_url() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "t.toml",
                "[store]\npath = \"/tmp/x.db\"\n[providers.corp]\nbase_url = \"http://h\"\n",
            )?;
            let c = Config::load(Some(Path::new("t.toml"))).expect("loads");
            assert_eq!(c.store.path, PathBuf::from("/tmp/x.db"));
            assert!(c.validate().expect("valid").providers.get("corp").is_some());
            jail.set_env("TALLY_CLICKHOUSE_URL", "http://127.0.0.1:8123");
            let c = Config::load(Some(Path::new("t.toml"))).expect("loads");
            assert_eq!(c.store.kind, StoreKind::Clickhouse);
            let v = c.validate().expect("valid");
            assert_eq!(v.batch.max_rows, DEFAULT_MAX_ROWS, "batching defaults");
            assert_eq!(v.batch.flush_interval, Duration::from_secs(1));
            match v.store {
                Store::ClickHouse(s) => {
                    assert_eq!(
                        (s.url.as_str(), s.database.as_str()),
                        ("http://127.0.0.1:8123", "tally")
                    )
                }
                Store::Sqlite(_) => panic!("TALLY_CLICKHOUSE_URL must switch the store"),
            }
            Ok(())
        });
    }

    /// The README's budgets example is real config: it loads and validates.
    #[test]
    fn the_readme_budget_example_is_valid() {
        let readme = include_str!("../README.md");
        let section = readme
            .split("## Budgets and alerts")
            .nth(1)
            .expect("README has the section");
        let example = section
            .split("```toml\n")
            .nth(1)
            .and_then(|s| s.split("```").next())
            .expect("a toml block");
        figment::Jail::expect_with(|jail| {
            jail.create_file("b.toml", example)?;
            let c = Config::load(Some(Path::new("b.toml"))).expect("loads");
            let v = c.validate().expect("valid");
            // The two of the example, then the Tally keys' own three.
            assert_eq!(v.alerts.budgets.len(), 2 + KEY_BUDGETS.len());
            assert_eq!(v.alerts.rules.len(), 1);
            assert!(v.alerts.budgets[1].enforce);
            assert_eq!(v.alerts.budgets[0].thresholds, vec![0.5, 0.8, 1.0]);
            assert_eq!(v.alerts.budgets[0].webhooks.len(), 2);
            Ok(())
        });
    }

    /// The README's stages example is real config too, and a router naming an unknown
    /// provider or a malformed policy stops `validate` with the reason.
    #[test]
    fn the_readme_stages_example_is_valid_and_mistakes_are_named() {
        let readme = include_str!("../README.md");
        let example = readme
            .split("## Cache, routers and rate limits")
            .nth(1)
            .and_then(|s| s.split("```toml\n").nth(1))
            .and_then(|s| s.split("```").next())
            .expect("a toml block");
        figment::Jail::expect_with(|jail| {
            jail.create_file("s.toml", example)?;
            let v = Config::load(Some(Path::new("s.toml")))
                .expect("loads")
                .validate()
                .expect("valid");
            assert_eq!(v.stages.routers["smart"].targets.len(), 2);
            assert_eq!(v.stages.rate_limits.policies.len(), 1);
            assert_eq!(v.stages.cache.max_bytes, 256 * 1024 * 1024);

            jail.create_file(
                "bad.toml",
                "[routers.r]\ntargets = [{ provider = \"nope\" }]\n",
            )?;
            let e = Config::load(Some(Path::new("bad.toml")))
                .expect("loads")
                .validate()
                .err()
                .expect("unknown provider");
            assert!(e.to_string().contains("routers.r"), "{e}");
            jail.create_file(
                "bad2.toml",
                "[[rate_limits.policies]]\nname = \"p\"\nlimit = 1\nwindow_secs = 60\nscope = \"team\"\n",
            )?;
            let e = Config::load(Some(Path::new("bad2.toml")))
                .expect("loads")
                .validate()
                .err()
                .expect("bad scope");
            assert!(e.to_string().contains("property:<name>"), "{e}");
            jail.create_file("bad3.toml", "[cache]\nproviders = [\"opneai\"]\n")?;
            let e = Config::load(Some(Path::new("bad3.toml")))
                .expect("loads")
                .validate()
                .err()
                .expect("typo");
            assert!(e.to_string().contains("\"opneai\" is neither"), "{e}");
            Ok(())
        });
    }

    /// The README's retention example is valid config and becomes the policy it describes;
    /// a rule without a value, or keeping bodies longer than records, stops the start.
    #[test]
    fn the_readme_retention_example_is_valid_and_mistakes_are_named() {
        let readme = include_str!("../README.md");
        let example = readme
            .split("### Retention")
            .nth(1)
            .and_then(|s| s.split("```toml\n").nth(1))
            .and_then(|s| s.split("```").next())
            .expect("a toml block");
        figment::Jail::expect_with(|jail| {
            let load = |text: &str| {
                jail.create_file("r.toml", text).expect("write");
                Config::load(Some(Path::new("r.toml"))).and_then(|c| c.validate())
            };
            let v = load(example).expect("valid");
            assert_eq!(
                v.retention,
                tally_ingest::retention::Policy {
                    records_days: 365,
                    bodies_days: 30,
                    rules: vec![tally_ingest::retention::Rule {
                        property: ("tenant".into(), "acme".into()),
                        records_days: 90,
                        bodies_days: 7,
                    }],
                }
            );
            for (text, says) in [
                (
                    "[[store.retention]]\nproperty = \"tenant\"\n",
                    "store.retention[0].property \"tenant\" must be key=value",
                ),
                (
                    "[[store.retention]]\nproperty = \"tenant=\"\n",
                    "must be key=value",
                ),
                (
                    "[store]\nretention_days = 10\n[[store.retention]]\nproperty = \"t=a\"\nbody_ttl_days = 11\n",
                    "store.retention[0]: body_ttl_days (11) must not exceed retention_days (10)",
                ),
                (
                    "[store]\nretention_days = 10\nbody_ttl_days = 30\n",
                    "store: body_ttl_days (30) must not exceed retention_days (10)",
                ),
            ] {
                let e = match load(text) {
                    Ok(_) => panic!("accepted {text}"),
                    Err(e) => format!("{e:#}"),
                };
                assert!(e.contains(says), "{text}: {e}");
            }
            Ok(())
        });
    }

    /// The README's privacy example loads, redacts with the key from the environment, and
    /// mistakes in `[privacy]` stop the start with the reason.
    #[test]
    fn the_readme_privacy_example_is_valid_and_mistakes_are_named() {
        let readme = include_str!("../README.md");
        let example = readme
            .split("## Privacy")
            .nth(1)
            .and_then(|s| s.split("```toml\n").nth(1))
            .and_then(|s| s.split("```").next())
            .expect("a toml block");
        let invalid = |jail: &mut figment::Jail, text: &str| -> String {
            jail.create_file("p.toml", text).expect("write");
            match Config::load(Some(Path::new("p.toml"))).and_then(|c| c.validate()) {
                Ok(_) => panic!("accepted:\n{text}"),
                Err(e) => format!("{e:#}"),
            }
        };
        figment::Jail::expect_with(|jail| {
            let with_provider = format!(
                "[providers.my-vllm]\nkind = \"openai\"\nbase_url = \"http://h\"\n{example}"
            );
            let e = invalid(jail, &with_provider);
            assert!(e.contains("TALLY_PRIVACY_KEY is not set"), "{e}");
            jail.set_env("TALLY_PRIVACY_KEY", "k3y");
            jail.create_file("p.toml", &with_provider)?;
            let v = Config::load(Some(Path::new("p.toml")))
                .expect("loads")
                .validate()
                .expect("valid");
            let mut r = tally_ingest::Record::new(uuid::Uuid::now_v7(), 0);
            r.request_body = Some("mail bob@example.com about TCK-123456".into());
            tally_ingest::RecordFilter::filter(&*v.redactor, &mut r);
            let body = r.request_body.expect("kept");
            assert!(body.starts_with("mail [EMAIL:"), "{body}");
            assert!(body.ends_with(" about [TICKET]"), "{body}");

            assert!(v.guard.is_none(), "the guard is opt-in");
            // The request-path example, with the first one's word list.
            let request = readme
                .split("### Before forwarding")
                .nth(1)
                .and_then(|s| s.split("```toml\n").nth(1))
                .and_then(|s| s.split("```").next())
                .expect("a toml block");
            jail.create_file("p.toml", &format!("{with_provider}\n{request}"))?;
            let v = Config::load(Some(Path::new("p.toml")))
                .expect("loads")
                .validate()
                .expect("valid");
            let guard = v.guard.expect("a guard");
            assert_eq!(
                guard.check(r#"{"content":"about Bluebird"}"#, true),
                tally_privacy::Verdict::Blocked {
                    detector: "codename",
                    masked: r#"{"content":"about [CODENAME]"}"#.into()
                }
            );
            let e = invalid(jail, "[privacy.request]\nblock = [\"emial\"]\n");
            assert!(e.contains("unknown detector \"emial\""), "{e}");
            let e = invalid(
                jail,
                "[privacy.request]\nblock = [\"email\"]\nunchecked = \"ignore\"\n",
            );
            assert!(e.contains("ignore"), "{e}");
            let e = invalid(
                jail,
                "[privacy.request]\nblock = [\"email\"]\nproviders = [\"nope\"]\n",
            );
            assert!(e.contains("\"nope\" is neither a provider"), "{e}");

            let e = invalid(jail, example);
            assert!(e.contains("provider \"my-vllm\" is not configured"), "{e}");
            let e = invalid(jail, "[privacy]\nredact_user_id = true\n");
            assert!(e.contains("redact_user_id"), "{e}");
            let e = invalid(jail, "[privacy.detectors]\nemail = \"hash\"\n");
            assert!(e.contains("hmac_key"), "{e}");
            let e = invalid(jail, "[privacy.detectors]\nemail = \"scramble\"\n");
            assert!(e.contains("scramble"), "{e}");
            Ok(())
        });
    }
}
