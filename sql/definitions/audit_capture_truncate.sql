-- hardening.audit_capture_truncate: its one definition, applied again whenever the server's differs
-- (db/baseline.py). History: sql/migrations, last 018_capture_keys_and_claims.sql.
--
-- TRUNCATE leaves one row per statement, so it calls the two functions instead of inlining them.
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
