-- abnormal_delete_volume: far more deletes in the last hour than a tenant usually makes.
--
-- Compares, per tenant and table, the DELETE events in audit_events over the last window
-- (default 60 minutes) with the same tenant's average per window over the trailing baseline
-- (default 7 days, the window itself excluded). A (tenant, table) fires when its recent deletes
-- reach the absolute floor (default 50) AND exceed the baseline by the factor (default 10x). The
-- floor keeps a quiet tenant's first few deletes from paging anyone. No rows means healthy.
--
-- Thresholds are read from transaction-local settings so the same file runs by hand with the
-- defaults, or with others, e.g.:
--   BEGIN; SELECT set_config('canary.delete_min_count', '20', true); \i this file; ROLLBACK;
-- Reads audit_events_deletes_idx (a partial index on DELETE events), never the INSERT flood.
WITH settings AS (
    SELECT coalesce(nullif(current_setting('canary.delete_window_minutes', true), ''), '60')::int
               AS window_minutes,
           coalesce(nullif(current_setting('canary.delete_baseline_days', true), ''), '7')::int
               AS baseline_days,
           coalesce(nullif(current_setting('canary.delete_min_count', true), ''), '50')::int
               AS min_count,
           coalesce(nullif(current_setting('canary.delete_baseline_factor', true), ''), '10')::numeric
               AS factor,
           coalesce(nullif(current_setting('canary.sample_size', true), ''), '5')::int
               AS sample_size
),
bounds AS (
    SELECT now() - make_interval(mins => s.window_minutes) AS window_start,
           now() - make_interval(mins => s.window_minutes) - make_interval(days => s.baseline_days)
               AS baseline_start,
           -- how many windows fit in the baseline, for a per-window average
           (s.baseline_days * 1440.0) / s.window_minutes AS baseline_windows,
           s.*
    FROM settings s
),
recent AS (
    SELECT a.tenant_id, a.table_name, count(*) AS deletes,
           (array_agg(a.record_id ORDER BY a.created_at DESC))[1:(SELECT sample_size FROM bounds)]
               AS sample_ids
    FROM public.audit_events a
    WHERE a.operation = 'DELETE' AND a.created_at >= (SELECT window_start FROM bounds)
    GROUP BY a.tenant_id, a.table_name
),
baseline AS (
    SELECT a.tenant_id, a.table_name, count(*) AS deletes
    FROM public.audit_events a
    WHERE a.operation = 'DELETE'
      AND a.created_at >= (SELECT baseline_start FROM bounds)
      AND a.created_at < (SELECT window_start FROM bounds)
    GROUP BY a.tenant_id, a.table_name
)
SELECT r.tenant_id,
       r.table_name AS subject,
       r.deletes AS issue_count,
       r.sample_ids,
       format('%s deletes on %s in the last %s min; usual rate %s per %s min over %s days '
              '(fires at >= %s and > %sx usual)',
              r.deletes, r.table_name, b.window_minutes,
              round(coalesce(bl.deletes, 0) / b.baseline_windows, 2), b.window_minutes,
              b.baseline_days, b.min_count, b.factor) AS detail
FROM recent r
CROSS JOIN bounds b
LEFT JOIN baseline bl ON bl.tenant_id IS NOT DISTINCT FROM r.tenant_id
                     AND bl.table_name = r.table_name
WHERE r.deletes >= b.min_count
  AND r.deletes > b.factor * coalesce(bl.deletes, 0) / b.baseline_windows
ORDER BY r.deletes DESC, r.tenant_id, r.table_name;
