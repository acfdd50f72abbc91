-- Erasure (#20): one row per `tally purge`, the audit of what was erased and when, and the
-- list the writer checks each batch against (records of an erased scope that started before
-- the purge and arrive later, from the spool or the journal, are not inserted). `records`
-- and `spooled` are filled in when the purge ends.
CREATE TABLE IF NOT EXISTS {db}.purges{local}{on_cluster}
(
    purge_id UUID,
    at       DateTime64(3, 'UTC'),
    kind     LowCardinality(String),
    prop     String,
    value    String,
    records  UInt64,
    spooled  UInt64
)
ENGINE = {engine}
ORDER BY at;
