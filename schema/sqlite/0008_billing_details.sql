-- Prices that are right (#22): what else sets a request's price besides its token classes.
-- `cache_write_1h_tokens` is the part of `cache_write_tokens` written for an hour (Anthropic
-- bills it at 2x input, the 5-minute writes at 1.25x); `service_tier` is the tier the provider
-- says served the request (OpenAI's flex and priority); `web_search_calls` are server-side
-- search calls, billed per call. Kept so that `tally reprice` can recompute a cost exactly.
ALTER TABLE requests ADD COLUMN cache_write_1h_tokens INTEGER;
ALTER TABLE requests ADD COLUMN service_tier TEXT;
ALTER TABLE requests ADD COLUMN web_search_calls INTEGER NOT NULL DEFAULT 0;

-- `tally reprice`: one row per run, so the dashboard can say which costs were recomputed and
-- when. Times in epoch milliseconds; `changed` records whose cost moved by `delta_usd` in all.
CREATE TABLE IF NOT EXISTS reprices (
    at_ms     INTEGER NOT NULL,
    from_ms   INTEGER NOT NULL,
    to_ms     INTEGER NOT NULL,
    model     TEXT,
    provider  TEXT,
    catalog   TEXT,
    examined  INTEGER NOT NULL,
    changed   INTEGER NOT NULL,
    delta_usd REAL NOT NULL
);

-- `tally reconcile`: each run's report (JSON: day x model, both sides, the gaps), for the
-- dashboard's reconcile page.
CREATE TABLE IF NOT EXISTS reconciliations (
    at_ms    INTEGER NOT NULL,
    provider TEXT NOT NULL,
    from_ms  INTEGER NOT NULL,
    to_ms    INTEGER NOT NULL,
    report   TEXT NOT NULL
);
