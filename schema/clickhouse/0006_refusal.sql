-- Named request phases (#16): a request Tally answered itself (refused it, or could not reach
-- the upstream) records status 0 and the code of its own answer here, e.g.
-- `tally_budget_exceeded`. NULL when the upstream answered.
ALTER TABLE {db}.requests{local}{on_cluster}
    ADD COLUMN IF NOT EXISTS refusal LowCardinality(Nullable(String));
