-- Erasure (#20): one row per `tally purge`. It is the audit of what was erased and when, and
-- it is the list every insert is checked against: a record of an erased user, session or
-- property value that started before its purge (`ts < at_ms`) and reaches the store later
-- (from the spool, the crash journal, or a request still in flight during the purge) is
-- skipped by a trigger, so a purge stays a purge whichever path a record takes.
-- Records that start after the purge are new traffic and are kept.
-- `value` keeps the erased identifier itself: the store must recognise it to keep refusing it.
CREATE TABLE IF NOT EXISTS purges (
    purge_id TEXT NOT NULL PRIMARY KEY,
    at_ms    INTEGER NOT NULL,
    kind     TEXT NOT NULL,   -- user, session or property
    prop     TEXT,            -- the property's name (kind = property)
    value    TEXT NOT NULL,
    records  INTEGER NOT NULL DEFAULT 0,  -- rows deleted from requests
    spooled  INTEGER NOT NULL DEFAULT 0   -- records removed from the spool
);
CREATE INDEX IF NOT EXISTS purges_kind_value ON purges (kind, value);

-- The trigger that refuses those records (`requests_erased`) is created by the first purge,
-- in the transaction that writes its row (ingest/src/purge.rs): it costs every insert about
-- 2 µs (BENCHMARKS.md, "Erasure and per-model metrics"), which a store that never had a purge need not pay.
