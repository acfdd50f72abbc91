-- Proxy stages (#6): which router sent a request and how many attempts it took, failed
-- attempts linked to the request they were made for, and what a cache hit saved.
ALTER TABLE requests ADD COLUMN router TEXT;
ALTER TABLE requests ADD COLUMN attempts INTEGER NOT NULL DEFAULT 1;
ALTER TABLE requests ADD COLUMN parent_request_id TEXT;
ALTER TABLE requests ADD COLUMN cost_saved_usd REAL;
