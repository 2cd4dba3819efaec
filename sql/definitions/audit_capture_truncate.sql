-- TRUNCATE leaves one row per statement, with no images and no tenant.
CREATE OR REPLACE FUNCTION hardening.audit_capture_truncate() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = ''
AS $fn$
BEGIN
    INSERT INTO public.audit_events
        (actor, tenant_id, table_name, operation, record_id, before, after, db_role)
    SELECT who.actor, NULL, TG_TABLE_NAME, 'TRUNCATE', NULL, NULL, NULL, who.db_role
    FROM hardening.statement_identity() AS who;
    RETURN NULL;
END
$fn$;
GRANT CREATE ON SCHEMA hardening TO hardening_audit_owner;
ALTER FUNCTION hardening.audit_capture_truncate() OWNER TO hardening_audit_owner;
REVOKE CREATE ON SCHEMA hardening FROM hardening_audit_owner;
