-- The DELETE twin of audit_capture_insert (see there): the old images, as before.
CREATE OR REPLACE FUNCTION hardening.audit_capture_delete() RETURNS trigger
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
           CASE WHEN NOT text_tenant OR (o ->> TG_ARGV[0]) ~* '^[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}$'
                THEN (o ->> TG_ARGV[0])::uuid END,
           TG_TABLE_NAME, 'DELETE',
           CASE WHEN cardinality(keys) = 1 THEN o ->> keys[1]
                ELSE hardening.record_key(o, keys) END,
           o, NULL, who.db_role
    FROM (SELECT to_jsonb(r) AS o FROM old_rows r) AS deleted;
    RETURN NULL;
END
$fn$;
GRANT CREATE ON SCHEMA hardening TO hardening_audit_owner;
ALTER FUNCTION hardening.audit_capture_delete() OWNER TO hardening_audit_owner;
REVOKE CREATE ON SCHEMA hardening FROM hardening_audit_owner;
