-- hardening.statement_role: its one definition, applied again whenever the server's differs
-- (db/baseline.py). History: sql/migrations, last 015_attribution_and_privileges.sql.
--
-- 015_attribution_and_privileges: who wrote comes from the session, not from a setting; the
-- kit's functions and sequences are closed to the API roles; no login role keeps the audit owner.
--
-- Attribution. Until now the guard (invoker rights, BEFORE STATEMENT) wrote current_user into
-- the custom setting hardening.statement_role and the capture (SECURITY DEFINER, AFTER
-- STATEMENT) read it back. The query body runs between the two, so one statement could
-- overwrite it: `INSERT ... SELECT ... FROM (SELECT set_config('hardening.statement_role',
-- 'service_role', true), set_config('app.actor', 'service_role:x', true)) s` was recorded as
-- service_role:x although authenticated wrote it. Now:
--
--   role   the `role` setting (what SET [LOCAL] ROLE and PostgREST's set_config('role', ...)
--          change), else session_user. SECURITY DEFINER changes current_user but not this
--          setting, so the capture sees the caller's role. A statement can change it only by
--          really becoming that role, which needs the login role's membership: nothing a
--          custom setting can fake.
--   actor  service_role: app.actor if it matches the documented pattern
--              service_role:<name>, <name> 1-200 of A-Z a-z 0-9 . _ : @ / + # = -
--          (TenantScopedClient writes exactly that), else service_role:unattributed;
--          with request.jwt.claims present: jwt:<sub>, app.actor ignored;
--          otherwise app.actor (unless it claims service_role:), else db:<role>.
--
-- The guard refuses (enforce) or reports (report) a service_role statement whose app.actor
-- does not match the pattern: a blank or whitespace actor is no actor. The capture still reads
-- everything once per statement with built-in functions only (see 009 for why).
CREATE OR REPLACE FUNCTION hardening.statement_role() RETURNS text
LANGUAGE sql STABLE
SET search_path = ''
AS $fn$
    SELECT CASE current_setting('role') WHEN 'none' THEN session_user::text
                ELSE current_setting('role') END
$fn$;
