-- hardening.current_actor: its one definition, applied again whenever the server's differs
-- (db/baseline.py). History: sql/migrations, last 018_capture_keys_and_claims.sql.
CREATE OR REPLACE FUNCTION hardening.current_actor() RETURNS text
LANGUAGE sql STABLE
SET search_path = ''
AS $fn$
    SELECT CASE
        WHEN hardening.statement_role() = 'service_role' THEN
            CASE WHEN current_setting('app.actor', true)
                      ~ '^service_role:[A-Za-z0-9._:@/+#=-]{1,200}$'
                 THEN current_setting('app.actor', true)
                 ELSE 'service_role:unattributed' END
        WHEN nullif(current_setting('request.jwt.claims', true), '') IS NOT NULL THEN
            coalesce('jwt:' || (hardening.request_claims() ->> 'sub'),
                     'db:' || hardening.statement_role())
        ELSE coalesce(nullif(pg_catalog.regexp_replace(current_setting('app.actor', true),
                                                       '^service_role:.*', ''), ''),
                      'db:' || hardening.statement_role())
    END
$fn$;
