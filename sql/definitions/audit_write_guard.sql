-- The guard, before each write to an audited table: service_role must name its actor
-- (service_role:<name> in app.actor) or, in report mode (012), is noted as unattributed.
-- 'service_role:unattributed' is the marker report mode leaves in app.actor for the rest of the
-- transaction; set by hand it is no actor (012, 015). Runs as the audit owner (018).
CREATE OR REPLACE FUNCTION hardening.audit_write_guard() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = ''
AS $fn$
BEGIN
    IF (SELECT db_role FROM hardening.statement_identity()) = 'service_role'
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
GRANT CREATE ON SCHEMA hardening TO hardening_audit_owner;
ALTER FUNCTION hardening.audit_write_guard() OWNER TO hardening_audit_owner;
REVOKE CREATE ON SCHEMA hardening FROM hardening_audit_owner;
