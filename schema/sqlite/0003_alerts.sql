-- Budget and alert-rule events, and what became of their webhook deliveries.
-- alert_events is also the "already fired" state: at startup Tally reloads the rows whose
-- episode (until_ms) has not ended, so a restart never fires the same event twice.
-- Times are milliseconds since the Unix epoch (UTC).
CREATE TABLE IF NOT EXISTS alert_events (
    event_id     TEXT NOT NULL PRIMARY KEY,
    fired_at     INTEGER NOT NULL,
    event        TEXT NOT NULL,
    source       TEXT NOT NULL,   -- the budget's or rule's name
    scope_key    TEXT NOT NULL,
    level        REAL NOT NULL,   -- threshold fraction (budgets) or 1 (rules)
    window_start INTEGER NOT NULL,
    window_end   INTEGER NOT NULL,
    until_ms     INTEGER NOT NULL,
    payload      TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS alert_events_until ON alert_events (until_ms);
CREATE INDEX IF NOT EXISTS alert_events_fired ON alert_events (fired_at);

-- One row per (event, webhook) once delivery ended: delivered, or failed after every attempt.
-- webhook is scheme://host:port only; the path of a Slack-style URL is its secret.
CREATE TABLE IF NOT EXISTS alert_deliveries (
    event_id     TEXT NOT NULL,
    webhook      TEXT NOT NULL,
    at           INTEGER NOT NULL,
    delivered    INTEGER NOT NULL,
    attempts     INTEGER NOT NULL,
    status       INTEGER,
    error        TEXT
);
CREATE INDEX IF NOT EXISTS alert_deliveries_event ON alert_deliveries (event_id);
