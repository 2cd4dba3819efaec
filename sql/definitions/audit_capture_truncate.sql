CREATE OR REPLACE FUNCTION hardening.audit_capture_truncate() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = ''
AS $fn$
BEGIN
    INSERT INTO public.audit_events
        (actor, tenant_id, table_name, operation, record_id, before, after, db_role)
    VALUES (hardening.current_actor(), NULL, TG_TABLE_NAME, 'TRUNCATE', NULL, NULL, NULL,
            hardening.statement_role());
    RETURN NULL;
END
$fn$;
