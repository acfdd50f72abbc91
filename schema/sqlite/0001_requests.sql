-- One row per proxied request. Field names are the record contract in shared/design.md.
-- ts is request start in milliseconds since the Unix epoch (UTC).
-- A rowid table on purpose: rows carry kilobytes of bodies, and WITHOUT ROWID tables store
-- whole rows in the key's B-tree, which measured 2.5x slower to insert (see BENCHMARKS.md).
-- The UNIQUE request_id makes a replayed batch idempotent (INSERT OR IGNORE).
CREATE TABLE IF NOT EXISTS requests (
    request_id              TEXT NOT NULL UNIQUE,
    ts                      INTEGER NOT NULL,
    provider                TEXT NOT NULL,
    endpoint                TEXT NOT NULL,
    method                  TEXT NOT NULL,
    model                   TEXT,
    response_model          TEXT,
    status                  INTEGER NOT NULL,
    stream                  INTEGER NOT NULL,
    latency_ms              INTEGER NOT NULL,
    ttft_ms                 INTEGER,
    prompt_tokens           INTEGER,
    completion_tokens       INTEGER,
    cache_read_tokens       INTEGER,
    cache_write_tokens      INTEGER,
    reasoning_tokens        INTEGER,
    total_tokens            INTEGER,
    tokens_estimated        INTEGER NOT NULL DEFAULT 0,
    cost_usd                REAL,
    user_id                 TEXT,
    session_id              TEXT,
    session_path            TEXT,
    session_name            TEXT,
    properties              TEXT NOT NULL DEFAULT '{}',
    cache_status            TEXT NOT NULL DEFAULT 'none',
    error                   TEXT,
    request_bytes           INTEGER NOT NULL,
    response_bytes          INTEGER NOT NULL,
    api_key_hint            TEXT,
    provider_request_id     TEXT,
    request_body            TEXT,
    response_body           TEXT,
    request_body_truncated  INTEGER NOT NULL DEFAULT 0,
    response_body_truncated INTEGER NOT NULL DEFAULT 0
);

-- The JSON API and dashboard read newest-first, optionally narrowed by one of these.
CREATE INDEX IF NOT EXISTS requests_ts ON requests (ts);
CREATE INDEX IF NOT EXISTS requests_user_ts ON requests (user_id, ts);
CREATE INDEX IF NOT EXISTS requests_session_ts ON requests (session_id, ts);
CREATE INDEX IF NOT EXISTS requests_model_ts ON requests (model, ts);
CREATE INDEX IF NOT EXISTS requests_provider_ts ON requests (provider, ts);
