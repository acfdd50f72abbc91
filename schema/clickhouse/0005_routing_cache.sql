-- Proxy stages (#6): which router sent a request and how many attempts it took, failed
-- attempts linked to the request they were made for, and what a cache hit saved. Rows
-- written before this migration read as one attempt, no router, no saving.
ALTER TABLE {db}.requests{local}{on_cluster}
    ADD COLUMN IF NOT EXISTS router LowCardinality(Nullable(String)),
    ADD COLUMN IF NOT EXISTS attempts UInt32 DEFAULT 1,
    ADD COLUMN IF NOT EXISTS parent_request_id Nullable(UUID),
    ADD COLUMN IF NOT EXISTS cost_saved_usd Nullable(Float64);
