-- The unified API (#19): with `proxy.keep_translated_bodies`, the bodies as the provider saw
-- them, next to `request_body` / `response_body` (what the client sent and got). NULL unless
-- the request was translated and the option is on; kept as long as the other bodies.
ALTER TABLE {db}.requests{local}{on_cluster}
    ADD COLUMN IF NOT EXISTS upstream_request_body Nullable(String) CODEC(ZSTD(3)) {body_ttl};
ALTER TABLE {db}.requests{local}{on_cluster}
    ADD COLUMN IF NOT EXISTS upstream_response_body Nullable(String) CODEC(ZSTD(3)) {body_ttl};
