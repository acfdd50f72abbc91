-- Tally keys (#18). Each change appends the whole document (JSON: hash of the secret, state,
-- policy) as a new version; readers keep the newest per key_id. The secret is never stored.
CREATE TABLE IF NOT EXISTS {db}.tally_keys{local}{on_cluster}
(
    key_id     String,
    name       String,
    updated_at Int64,
    doc        String
)
ENGINE = {engine}
ORDER BY (key_id, updated_at);

-- The key a request authenticated with; NULL without one.
ALTER TABLE {db}.requests{local}{on_cluster}
    ADD COLUMN IF NOT EXISTS key_id Nullable(String);
ALTER TABLE {db}.requests{local}{on_cluster}
    ADD COLUMN IF NOT EXISTS key_name LowCardinality(Nullable(String));
