-- What the dashboard needs to read long ranges from the hourly rollup alone: cache hits, the
-- latency sum (for averages), how many records have a TTFT, first/last times, distinct users
-- (a `uniq` state: approximate above tens of thousands of users), and latency and TTFT
-- t-digests. The digests are what makes a month cheap to read: a `quantiles` state keeps up
-- to 8,192 samples per hour and model, so merging a month of them costs as much as reading
-- the records, while a t-digest keeps about a hundred centroids. Rows written before this
-- migration have 0 for the sums and users, empty digests, and the hour's bounds for times.
ALTER TABLE {db}.requests_hourly{local}{on_cluster}
    ADD COLUMN IF NOT EXISTS cache_hits SimpleAggregateFunction(sum, UInt64),
    ADD COLUMN IF NOT EXISTS latency_ms_sum SimpleAggregateFunction(sum, UInt64),
    ADD COLUMN IF NOT EXISTS ttft_count SimpleAggregateFunction(sum, UInt64),
    ADD COLUMN IF NOT EXISTS first_ms SimpleAggregateFunction(min, Int64) DEFAULT toInt64(toUnixTimestamp(hour)) * 1000,
    ADD COLUMN IF NOT EXISTS last_ms SimpleAggregateFunction(max, Int64) DEFAULT toInt64(toUnixTimestamp(hour)) * 1000 + 3599999,
    ADD COLUMN IF NOT EXISTS last_end_ms SimpleAggregateFunction(max, Int64) DEFAULT toInt64(toUnixTimestamp(hour)) * 1000 + 3599999,
    ADD COLUMN IF NOT EXISTS users AggregateFunction(uniq, Nullable(String)),
    ADD COLUMN IF NOT EXISTS latency_digest AggregateFunction(quantilesTDigest(0.5, 0.95, 0.99), UInt64),
    ADD COLUMN IF NOT EXISTS ttft_digest AggregateFunction(quantilesTDigest(0.5, 0.95, 0.99), UInt64);

-- The view is replaced to fill the new columns. With several Tally replicas inserting during
-- the upgrade, rows inserted between these two statements miss the rollup (not the table).
DROP VIEW IF EXISTS {db}.requests_hourly_mv{local}{on_cluster};

CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.requests_hourly_mv{local}{on_cluster}
TO {db}.requests_hourly{local}
AS SELECT
    toStartOfHour(ts) AS hour,
    provider,
    ifNull(m, '') AS model,
    count() AS requests,
    countIf({is_error}) AS errors,
    sum(ifNull(prompt, 0)) AS prompt_tokens,
    sum(ifNull(completion, 0)) AS completion_tokens,
    sum(ifNull(cache_read, 0)) AS cache_read_tokens,
    sum(ifNull(cost, 0)) AS cost_usd,
    countIf(cost IS NULL AND prompt IS NOT NULL) AS unpriced,
    countIf(estimated) AS estimated,
    quantilesState(0.5, 0.95, 0.99)(latency) AS latency_ms,
    quantilesStateIf(0.5, 0.95, 0.99)(ifNull(ttft, 0), ttft IS NOT NULL) AS ttft_ms,
    countIf(cache = 'hit') AS cache_hits,
    sum(latency) AS latency_ms_sum,
    countIf(ttft IS NOT NULL) AS ttft_count,
    min(start_ms) AS first_ms,
    max(start_ms) AS last_ms,
    max(start_ms + toInt64(latency)) AS last_end_ms,
    uniqState(uid) AS users,
    quantilesTDigestState(0.5, 0.95, 0.99)(latency) AS latency_digest,
    quantilesTDigestStateIf(0.5, 0.95, 0.99)(ifNull(ttft, 0), ttft IS NOT NULL) AS ttft_digest
-- The inner SELECT renames source columns so that the output aliases (which must match the
-- rollup table's column names) cannot shadow them inside the aggregates. `{is_error}` is the
-- one definition of an error (tally_ingest::IS_ERROR_SQL), over `status` and `error`.
FROM
(
    SELECT ts, provider, model AS m, status, error, prompt_tokens AS prompt,
           completion_tokens AS completion, cache_read_tokens AS cache_read, cost_usd AS cost,
           tokens_estimated AS estimated, latency_ms AS latency, ttft_ms AS ttft,
           cache_status AS cache, toUnixTimestamp64Milli(ts) AS start_ms, user_id AS uid
    FROM {db}.requests{local}
)
GROUP BY hour, provider, model;
