-- failed_onboarding_attempts: tenants whose onboarding keeps failing.
--
-- Per tenant, the onboarding attempts that failed in the last window (default 60 minutes); a
-- tenant fires when it has more than the threshold (default 3), reported with its most common
-- error so the first look goes to the right system. No rows means healthy.
--
-- Thresholds are read from transaction-local settings so the same file runs by hand with the
-- defaults, or with others, e.g.:
--   BEGIN; SELECT set_config('canary.onboarding_max_failures', '0', true); \i this file; ROLLBACK;
-- Reads onboarding_attempts_failed_idx (a partial index on failed attempts).
WITH settings AS (
    SELECT coalesce(nullif(current_setting('canary.onboarding_window_minutes', true), ''), '60')::int
               AS window_minutes,
           coalesce(nullif(current_setting('canary.onboarding_max_failures', true), ''), '3')::int
               AS max_failures,
           coalesce(nullif(current_setting('canary.sample_size', true), ''), '5')::int
               AS sample_size
),
failed AS (
    SELECT o.id, o.tenant_id, o.error, o.created_at
    FROM public.onboarding_attempts o
    WHERE o.status = 'failed'
      AND o.created_at >= now() - make_interval(mins => (SELECT window_minutes FROM settings))
),
per_tenant AS (
    SELECT f.tenant_id, count(*) AS failures,
           (array_agg(f.id::text ORDER BY f.created_at DESC))[1:(SELECT sample_size FROM settings)]
               AS sample_ids,
           mode() WITHIN GROUP (ORDER BY f.error) AS top_error,
           count(*) FILTER (WHERE f.error = (SELECT mode() WITHIN GROUP (ORDER BY g.error)
                                             FROM failed g WHERE g.tenant_id = f.tenant_id))
               AS top_error_count
    FROM failed f
    GROUP BY f.tenant_id
)
SELECT p.tenant_id,
       'onboarding_attempts' AS subject,
       p.failures AS issue_count,
       p.sample_ids,
       format('%s failed onboarding attempts in the last %s min (fires above %s); '
              'most common error (%s of them): %s',
              p.failures, s.window_minutes, s.max_failures, p.top_error_count, p.top_error)
           AS detail
FROM per_tenant p
CROSS JOIN settings s
WHERE p.failures > s.max_failures
ORDER BY p.failures DESC, p.tenant_id;
