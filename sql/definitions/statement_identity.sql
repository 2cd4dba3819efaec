-- Who wrote: the one place the rules are (015, 018). Every audit
-- row takes its db_role and actor from here: the capture triggers, the write guard and the DDL
-- record call it once per statement.
--
--   db_role  the `role` setting (SET ROLE, PostgREST's set_config('role', ...)), else
--            session_user. SECURITY DEFINER changes current_user, not this setting, so a
--            definer function (the capture itself) still sees its caller's role.
--   actor    service_role: app.actor if it reads service_role:<name> (1-200 of A-Z a-z 0-9
--            . _ : @ / + # = -), else service_role:unattributed; with JWT claims:
--            jwt:<sub>, or db:<role> without a sub or with unreadable claims; otherwise
--            app.actor, unless it claims to be a service_role actor, else db:<role>.
--
-- PL/pgSQL, not SQL: a SQL function with SET search_path can be neither inlined nor kept
-- parsed across transactions, so every writing transaction parsed and planned it again (009);
-- PL/pgSQL keeps its plans for the session. Owned by the audit owner, like the capture, so the
-- migration role cannot change who the log says wrote.
CREATE OR REPLACE FUNCTION hardening.statement_identity(OUT db_role text, OUT actor text)
LANGUAGE plpgsql STABLE
SET search_path = ''
AS $fn$
BEGIN
    db_role := CASE current_setting('role') WHEN 'none' THEN session_user::text
                    ELSE current_setting('role') END;
    actor := CASE
        WHEN db_role = 'service_role' THEN
            CASE WHEN current_setting('app.actor', true)
                      ~ '^service_role:[A-Za-z0-9._:@/+#=-]{1,200}$'
                 THEN current_setting('app.actor', true)
                 ELSE 'service_role:unattributed' END
        WHEN nullif(current_setting('request.jwt.claims', true), '') IS NOT NULL THEN
            coalesce('jwt:' || (hardening.request_claims() ->> 'sub'), 'db:' || db_role)
        ELSE coalesce(nullif(pg_catalog.regexp_replace(current_setting('app.actor', true),
                                                       '^service_role:.*', ''), ''),
                      'db:' || db_role)
    END;
END
$fn$;
REVOKE ALL ON FUNCTION hardening.statement_identity()
    FROM PUBLIC, anon, authenticated, service_role;
GRANT CREATE ON SCHEMA hardening TO hardening_audit_owner;
ALTER FUNCTION hardening.statement_identity() OWNER TO hardening_audit_owner;
REVOKE CREATE ON SCHEMA hardening FROM hardening_audit_owner;
