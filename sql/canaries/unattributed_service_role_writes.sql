-- unattributed_service_role_writes: callers writing as service_role without the wrapper's actor.
--
-- In report mode (012) a service_role write to a tenant table without app.actor goes through,
-- audited as 'service_role:unattributed', and the audit guard notes each such statement in
-- hardening.unattributed_writes with where it says it came from. Per source (application_name,
-- JWT role, client header: x-client-info or user-agent through PostgREST), table and operation,
-- the statements of the look-back (default 24 hours). The source is whatever the writer chose to
-- send (any session sets its own application_name, headers and claims): a lead, not an identity.
-- In report mode each is a caller that enforce mode will refuse until it writes through
-- TenantScopedClient or sets app.actor. In enforce mode the writes are refused and nothing is
-- noted, so only notes taken after the switch count (a transaction that began in report mode);
-- the ones from before it are history, not a finding. No rows means healthy.
-- Sample ids are hardening.unattributed_writes ids.
--
-- Thresholds are read from transaction-local settings so the same file runs by hand, e.g.:
--   BEGIN; SELECT set_config('canary.unattributed_lookback_hours', '168', true); \i this file; ROLLBACK;
-- Reads unattributed_writes_created_at_idx.
WITH settings AS (
    SELECT coalesce(nullif(current_setting('canary.unattributed_lookback_hours', true), ''), '24')::int
               AS lookback_hours,
           coalesce(nullif(current_setting('canary.sample_size', true), ''), '5')::int
               AS sample_size
),
-- No row (012 not applied) reads as enforce, as the guard does.
current_mode AS (
    SELECT coalesce((SELECT m.mode FROM hardening.service_role_mode m), 'enforce') AS mode,
           (SELECT m.set_at FROM hardening.service_role_mode m) AS set_at
)
SELECT NULL::uuid AS tenant_id,
       w.table_name AS subject,
       count(*) AS issue_count,
       (array_agg(w.id::text ORDER BY w.id DESC))[1:s.sample_size] AS sample_ids,
       format('%s unattributed service_role %s statement(s) on %s %s; the writer gave '
              'application_name %L, JWT role %s, client %s (chosen by the writer, not verified: '
              'a lead, not an identity); the latest at %s UTC (path %s)',
              count(*), w.operation, w.table_name,
              CASE WHEN cm.mode = 'report'
                   THEN format('in the last %s hours, let through because the database is in '
                               'report mode (enforce will refuse them)', s.lookback_hours)
                   ELSE format('since the switch to enforce at %s UTC, let through by a '
                               'transaction that began in report mode',
                               to_char(cm.set_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS'))
              END,
              w.application_name, coalesce(w.jwt_role, '(no JWT)'),
              coalesce(quote_literal(w.client_info), '(no client header)'),
              to_char(max(w.created_at) AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS'),
              coalesce((array_agg(w.request_path ORDER BY w.id DESC))[1], '-')) AS detail
FROM hardening.unattributed_writes w
CROSS JOIN settings s
CROSS JOIN current_mode cm
WHERE w.created_at >= now() - make_interval(hours => s.lookback_hours)
  AND (cm.mode = 'report' OR w.created_at >= cm.set_at)
GROUP BY w.application_name, w.jwt_role, w.client_info, w.table_name, w.operation,
         s.lookback_hours, s.sample_size, cm.mode, cm.set_at
ORDER BY issue_count DESC, subject, w.application_name;
