-- One row per proxied request: the record contract of shared/design.md.
-- Placeholders (filled by the migration runner from validated config, never from requests):
--   {db} database, {on_cluster} " ON CLUSTER <name>" or "", {engine} the table engine,
--   {table_ttl} "TTL toDateTime(ts) + INTERVAL N DAY" or "", {body_ttl} the same for bodies or "",
--   {local} "_local" in cluster mode (a Distributed table then takes the plain name) or "",
--   {agg_engine} the engine of aggregating tables, {rollup_ttl} the table TTL for rollups or "".
-- A migration file may hold several statements, each ending with a semicolon at end of line.
--
-- ORDER BY (toDate(ts), provider, model, ts): every dashboard query is bounded by time, so the
-- day leads and prunes granules; within a day, rows of one provider and model sit together,
-- which is what the per-model breakdowns and filters read; ts last keeps a day's rows in time
-- order for newest-first listings. Users and sessions have too many values to lead the key,
-- so they get bloom-filter skip indexes instead, as do property keys and values.
CREATE TABLE IF NOT EXISTS {db}.requests{local}{on_cluster}
(
    request_id              UUID,
    ts                      DateTime64(3, 'UTC'),
    provider                LowCardinality(String),
    endpoint                LowCardinality(String),
    method                  LowCardinality(String),
    model                   LowCardinality(Nullable(String)),
    response_model          LowCardinality(Nullable(String)),
    status                  UInt16,
    stream                  Bool,
    latency_ms              UInt64,
    ttft_ms                 Nullable(UInt64),
    prompt_tokens           Nullable(UInt64),
    completion_tokens       Nullable(UInt64),
    cache_read_tokens       Nullable(UInt64),
    cache_write_tokens      Nullable(UInt64),
    reasoning_tokens        Nullable(UInt64),
    total_tokens            Nullable(UInt64),
    tokens_estimated        Bool,
    cost_usd                Nullable(Float64),
    user_id                 Nullable(String),
    session_id              Nullable(String),
    session_path            Nullable(String),
    session_name            Nullable(String),
    properties              Map(LowCardinality(String), String),
    cache_status            LowCardinality(String),
    error                   Nullable(String),
    request_bytes           UInt64,
    response_bytes          UInt64,
    api_key_hint            Nullable(String),
    provider_request_id     Nullable(String),
    request_body            Nullable(String) CODEC(ZSTD(3)) {body_ttl},
    response_body           Nullable(String) CODEC(ZSTD(3)) {body_ttl},
    request_body_truncated  Bool,
    response_body_truncated Bool,
    INDEX idx_user_id user_id TYPE bloom_filter(0.01) GRANULARITY 4,
    INDEX idx_session_id session_id TYPE bloom_filter(0.01) GRANULARITY 4,
    INDEX idx_property_keys mapKeys(properties) TYPE bloom_filter(0.01) GRANULARITY 4,
    INDEX idx_property_values mapValues(properties) TYPE bloom_filter(0.01) GRANULARITY 4
)
ENGINE = {engine}
PARTITION BY toYYYYMM(ts)
ORDER BY (toDate(ts), provider, model, ts)
{table_ttl}
SETTINGS allow_nullable_key = 1, non_replicated_deduplication_window = 10000;
