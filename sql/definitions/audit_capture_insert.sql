-- Trigger arguments (install_audit_capture): the tenant column; then 'uuid' or 'text' (absent:
-- uuid); then the record key's columns (absent: id). A text tenant becomes audit_events'
-- tenant_id only where it reads as a uuid; the row image keeps it either way. One key column
-- names the record by its value, several by a JSON object of them (jsonb's own text form).
-- Who wrote: hardening.statement_identity(), once per statement.
CREATE OR REPLACE FUNCTION hardening.audit_capture_insert() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = ''
AS $fn$
DECLARE
    who record := hardening.statement_identity();
    text_tenant boolean := TG_NARGS > 1 AND TG_ARGV[1] <> 'uuid';
    keys text[] := CASE WHEN TG_NARGS > 2 THEN TG_ARGV[2:] ELSE ARRAY['id'] END;
BEGIN
    INSERT INTO public.audit_events
        (actor, tenant_id, table_name, operation, record_id, before, after, db_role)
    SELECT who.actor,
           CASE WHEN NOT text_tenant OR (n ->> TG_ARGV[0]) ~* '^[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}$'
                THEN (n ->> TG_ARGV[0])::uuid END,
           TG_TABLE_NAME, 'INSERT',
           CASE WHEN cardinality(keys) = 1 THEN n ->> keys[1]
                ELSE hardening.record_key(n, keys) END,
           NULL, n, who.db_role
    FROM (SELECT to_jsonb(r) AS n FROM new_rows r) AS inserted;
    RETURN NULL;
END
$fn$;
GRANT CREATE ON SCHEMA hardening TO hardening_audit_owner;
ALTER FUNCTION hardening.audit_capture_insert() OWNER TO hardening_audit_owner;
REVOKE CREATE ON SCHEMA hardening FROM hardening_audit_owner;
