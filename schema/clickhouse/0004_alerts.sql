-- Budget and alert-rule events, and what became of their webhook deliveries.
-- alert_events is also the "already fired" state: at startup Tally reloads the rows whose
-- episode (until_ms) has not ended, so a restart never fires the same event twice. Replicas
-- re-read it when they reconcile and check it before sending; see README "Budgets and alerts".
CREATE TABLE IF NOT EXISTS {db}.alert_events{local}{on_cluster}
(
    event_id     UUID,
    fired_at     DateTime64(3, 'UTC'),
    event        LowCardinality(String),
    source       String,
    scope_key    String,
    level        Float64,
    window_start DateTime64(3, 'UTC'),
    window_end   DateTime64(3, 'UTC'),
    until_ms     Int64,
    payload      String
)
ENGINE = {engine}
ORDER BY (fired_at, event_id);

-- webhook is scheme://host:port only; the path of a Slack-style URL is its secret.
CREATE TABLE IF NOT EXISTS {db}.alert_deliveries{local}{on_cluster}
(
    event_id     UUID,
    webhook      String,
    at           DateTime64(3, 'UTC'),
    delivered    Bool,
    attempts     UInt32,
    status       Nullable(UInt16),
    error        Nullable(String)
)
ENGINE = {engine}
ORDER BY (event_id, at);
