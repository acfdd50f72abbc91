-- A covering index for the dashboard's aggregates. Every number on the overview, models,
-- users and sessions pages is computed from these columns over a time range, so a scan of
-- this index (about 80 bytes per row) replaces a scan of the table, whose rows carry the
-- request and response bodies (kilobytes each). Its leading `ts` also serves every
-- time-ranged list, so the plain `ts` index it replaces is dropped: one index to maintain per
-- insert, not two. Measured in BENCHMARKS.md (dashboard and ingest).
CREATE INDEX IF NOT EXISTS requests_stats ON requests (
    ts, status, latency_ms, ttft_ms, cost_usd, prompt_tokens, completion_tokens,
    tokens_estimated, cache_status, error, user_id, model, provider, session_id
);
DROP INDEX IF EXISTS requests_ts;
