-- Prices that are right (#22): what else sets a request's price besides its token classes.
-- `cache_write_1h_tokens` is the part of `cache_write_tokens` written for an hour (Anthropic
-- bills it at 2x input, the 5-minute writes at 1.25x); `service_tier` is the tier the provider
-- says served the request (OpenAI's flex and priority); `web_search_calls` are server-side
-- search calls, billed per call.
ALTER TABLE {db}.requests{local}{on_cluster}
    ADD COLUMN IF NOT EXISTS cache_write_1h_tokens Nullable(UInt64);
ALTER TABLE {db}.requests{local}{on_cluster}
    ADD COLUMN IF NOT EXISTS service_tier LowCardinality(Nullable(String));
ALTER TABLE {db}.requests{local}{on_cluster}
    ADD COLUMN IF NOT EXISTS web_search_calls UInt32 DEFAULT 0;

-- `tally reprice`: one row per run, so the dashboard can say which costs were recomputed and
-- when; `changed` records whose cost moved by `delta_usd` in all.
CREATE TABLE IF NOT EXISTS {db}.reprices{local}{on_cluster}
(
    at        DateTime64(3, 'UTC'),
    from_ts   DateTime64(3, 'UTC'),
    to_ts     DateTime64(3, 'UTC'),
    model     Nullable(String),
    provider  Nullable(String),
    catalog   Nullable(String),
    examined  UInt64,
    changed   UInt64,
    delta_usd Float64
)
ENGINE = {engine}
ORDER BY at;

-- `tally reconcile`: each run's report (JSON: day x model, both sides, the gaps), for the
-- dashboard's reconcile page.
CREATE TABLE IF NOT EXISTS {db}.reconciliations{local}{on_cluster}
(
    at       DateTime64(3, 'UTC'),
    provider String,
    from_ts  DateTime64(3, 'UTC'),
    to_ts    DateTime64(3, 'UTC'),
    report   String
)
ENGINE = {engine}
ORDER BY at;
