-- 008_audit_record_hash_index: a cheaper index for "the history of one record".
--
-- 002 indexed audit_events (table_name, record_id) with a btree. record_id is a random uuid as
-- text, so every captured row lands on a random leaf page after a text comparison per level:
-- on a 100,000-row bulk insert that index alone cost about 0.2x of the unaudited time
-- (bench/bench_audit_overhead.py; the figures are in its docstring).
--
-- The only question asked of it is equality, "WHERE table_name = $1 AND record_id = $2", so a
-- HASH index on record_id serves it: the planner probes the hash on record_id and filters the
-- handful of rows by table_name (uuids do not repeat across tables in practice, and when they do
-- the filter is still exact). Hash indexes are WAL-logged and crash-safe since Postgres 10. Range
-- or prefix scans on record_id were never served by the old index's second column either.
--
-- Nothing else changes: columns, triggers, guards, grants and the other indexes (including the
-- tenant_id-led one the status check requires) are as before.

SET LOCAL lock_timeout = '10s';

CREATE INDEX IF NOT EXISTS audit_events_record_hash_idx
    ON public.audit_events USING hash (record_id);

DROP INDEX IF EXISTS public.audit_events_record_idx;
