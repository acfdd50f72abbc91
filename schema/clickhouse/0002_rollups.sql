-- Hourly rollups for long dashboard ranges: counts, token and cost sums, and latency/TTFT
-- quantile states per (hour, provider, model), fed by a materialized view on every insert.
CREATE TABLE IF NOT EXISTS {db}.requests_hourly{local}{on_cluster}
(
    hour               DateTime('UTC'),
    provider           LowCardinality(String),
    model              LowCardinality(String),
    requests           SimpleAggregateFunction(sum, UInt64),
    errors             SimpleAggregateFunction(sum, UInt64),
    prompt_tokens      SimpleAggregateFunction(sum, UInt64),
    completion_tokens  SimpleAggregateFunction(sum, UInt64),
    cache_read_tokens  SimpleAggregateFunction(sum, UInt64),
    cost_usd           SimpleAggregateFunction(sum, Float64),
    unpriced           SimpleAggregateFunction(sum, UInt64),
    estimated          SimpleAggregateFunction(sum, UInt64),
    latency_ms         AggregateFunction(quantiles(0.5, 0.95, 0.99), UInt64),
    ttft_ms            AggregateFunction(quantiles(0.5, 0.95, 0.99), UInt64)
)
ENGINE = {agg_engine}
PARTITION BY toYYYYMM(hour)
ORDER BY (hour, provider, model)
{rollup_ttl}
SETTINGS non_replicated_deduplication_window = 10000;

CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.requests_hourly_mv{local}{on_cluster}
TO {db}.requests_hourly{local}
AS SELECT
    toStartOfHour(ts) AS hour,
    provider,
    ifNull(m, '') AS model,
    count() AS requests,
    countIf(status = 0 OR status >= 400 OR err IS NOT NULL) AS errors,
    sum(ifNull(prompt, 0)) AS prompt_tokens,
    sum(ifNull(completion, 0)) AS completion_tokens,
    sum(ifNull(cache_read, 0)) AS cache_read_tokens,
    sum(ifNull(cost, 0)) AS cost_usd,
    countIf(cost IS NULL AND prompt IS NOT NULL) AS unpriced,
    countIf(estimated) AS estimated,
    quantilesState(0.5, 0.95, 0.99)(latency) AS latency_ms,
    quantilesStateIf(0.5, 0.95, 0.99)(ifNull(ttft, 0), ttft IS NOT NULL) AS ttft_ms
-- The inner SELECT renames source columns so that the output aliases (which must match the
-- rollup table's column names) cannot shadow them inside the aggregates.
FROM
(
    SELECT ts, provider, model AS m, status, error AS err, prompt_tokens AS prompt,
           completion_tokens AS completion, cache_read_tokens AS cache_read, cost_usd AS cost,
           tokens_estimated AS estimated, latency_ms AS latency, ttft_ms AS ttft
    FROM {db}.requests{local}
)
GROUP BY hour, provider, model;
