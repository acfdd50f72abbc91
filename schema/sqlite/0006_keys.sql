-- Tally keys (#18). One row per key: its id, its name, and the whole document as JSON (hash
-- of the secret, state, policy); the secret itself is never stored. See keys/src/store.rs.
CREATE TABLE IF NOT EXISTS tally_keys (
    key_id     TEXT NOT NULL PRIMARY KEY,
    name       TEXT NOT NULL,
    updated_at INTEGER NOT NULL,
    doc        TEXT NOT NULL
);

-- The key a request authenticated with; NULL without one.
ALTER TABLE requests ADD COLUMN key_id TEXT;
ALTER TABLE requests ADD COLUMN key_name TEXT;
-- Per-key budgets and the keys page read only keyed requests.
CREATE INDEX IF NOT EXISTS requests_key_ts ON requests (key_name, ts) WHERE key_name IS NOT NULL;
