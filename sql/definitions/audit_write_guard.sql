-- hardening.audit_write_guard: its one definition, applied again whenever the server's differs
-- (db/baseline.py). History: sql/migrations, last 018_capture_keys_and_claims.sql.
--
-- The guard: see the head of this file. 'service_role:unattributed' is the marker report mode
-- leaves in app.actor for the rest of the transaction; set by hand it is no actor (012, 015).
CREATE OR REPLACE FUNCTION hardening.audit_write_guard() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = ''
AS $fn$
DECLARE
    statement_role text := CASE current_setting('role') WHEN 'none' THEN session_user::text
                                ELSE current_setting('role') END;
BEGIN
    IF statement_role = 'service_role'
       AND (coalesce(current_setting('app.actor', true), '')
                !~ '^service_role:[A-Za-z0-9._:@/+#=-]{1,200}$'
            OR current_setting('app.actor', true) = 'service_role:unattributed') THEN
        IF NOT hardening.allow_unattributed_write(TG_TABLE_NAME, TG_OP) THEN
            RAISE EXCEPTION 'service_role write to %.% without an actor is refused',
                    TG_TABLE_SCHEMA, TG_TABLE_NAME
                USING ERRCODE = 'insufficient_privilege',
                      HINT = 'Write through TenantScopedClient, which sets app.actor to '
                             'service_role:<name> (the service-role rule is in enforce mode; '
                             'it holds inside SECURITY DEFINER functions too).';
        END IF;
        PERFORM set_config('app.actor', 'service_role:unattributed', true);
    END IF;
    RETURN NULL;
END
$fn$;
