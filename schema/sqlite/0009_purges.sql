-- Erasure (#20): one row per `tally purge`. It is the audit of what was erased and when, and
-- it is the list every insert is checked against: a record of an erased user, session or
-- property value that started before its purge (`ts < at_ms`) and reaches the store later
-- (from the spool, the crash journal, or a request still in flight during the purge) is
-- skipped by the trigger below, so a purge stays a purge whichever path a record takes.
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

-- With no purges this costs three index probes per inserted row. The property check walks
-- the property purges first (CROSS JOIN keeps that order), so a record's properties are
-- parsed only when there are some.
CREATE TRIGGER IF NOT EXISTS requests_erased BEFORE INSERT ON requests
WHEN EXISTS (SELECT 1 FROM purges WHERE kind = 'user' AND value = NEW.user_id AND NEW.ts < at_ms)
  OR EXISTS (SELECT 1 FROM purges WHERE kind = 'session' AND value = NEW.session_id AND NEW.ts < at_ms)
  OR EXISTS (SELECT 1 FROM purges AS p CROSS JOIN json_each(NEW.properties) AS j
             WHERE p.kind = 'property' AND NEW.ts < p.at_ms AND j.key = p.prop AND j.value = p.value)
BEGIN
    SELECT RAISE(IGNORE);
END;
