-- tenant_table_truncated: a tenant-scoped table was truncated within the look-back.
--
-- TRUNCATE removes every tenant's rows of a table at once and leaves a single audit event
-- (tenant_id NULL, no per-row images), so no per-tenant count or floor applies: any TRUNCATE in
-- the look-back (default 168 hours) is a finding. The look-back is long on purpose: the rows do
-- not come back when the event gets older, so the canary stays red until an on-call engineer
-- has had days to act. Since 004 no application role holds TRUNCATE, so only a superuser or a
-- table owner can have done it. Sample ids are audit_events ids. No rows means healthy.
--
-- Thresholds are read from transaction-local settings so the same file runs by hand, e.g.:
--   BEGIN; SELECT set_config('canary.truncate_lookback_hours', '24', true); \i this file; ROLLBACK;
-- Reads the (tenant_id, operation, created_at) index of audit_events with tenant_id IS NULL.
WITH settings AS (
    SELECT coalesce(nullif(current_setting('canary.truncate_lookback_hours', true), ''), '168')::int
               AS lookback_hours,
           coalesce(nullif(current_setting('canary.sample_size', true), ''), '5')::int
               AS sample_size
)
SELECT NULL::uuid AS tenant_id,
       a.table_name AS subject,
       count(*) AS issue_count,
       (array_agg(a.id::text ORDER BY a.id DESC))[1:s.sample_size] AS sample_ids,
       format('%s TRUNCATE(s) of %s in the last %s hours; the latest by %s as %s at %s UTC',
              count(*), a.table_name, s.lookback_hours,
              (array_agg(a.actor ORDER BY a.id DESC))[1],
              (array_agg(a.db_role ORDER BY a.id DESC))[1],
              to_char(max(a.created_at) AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS')) AS detail
FROM public.audit_events a
CROSS JOIN settings s
WHERE a.tenant_id IS NULL AND a.operation = 'TRUNCATE'
  AND a.created_at >= now() - make_interval(hours => s.lookback_hours)
GROUP BY a.table_name, s.lookback_hours, s.sample_size
ORDER BY issue_count DESC, subject;
