CREATE OR REPLACE FUNCTION hardening.ddl_audited_table(rel oid) RETURNS oid
LANGUAGE sql STABLE
SET search_path = ''
AS $fn$
    WITH owning AS (
        SELECT coalesce(
            (SELECT i.indrelid FROM pg_catalog.pg_index i WHERE i.indexrelid = rel),
            (SELECT d.refobjid FROM pg_catalog.pg_depend d
             WHERE d.classid = 'pg_catalog.pg_class'::regclass AND d.objid = rel
               AND d.refclassid = 'pg_catalog.pg_class'::regclass AND d.refobjsubid > 0
               AND d.deptype IN ('a', 'i')
             LIMIT 1),
            (SELECT c.oid FROM pg_catalog.pg_class c WHERE c.reltoastrelid = rel),
            rel) AS oid
    )
    SELECT c.oid
    FROM owning o
    JOIN pg_catalog.pg_class c ON c.oid = o.oid
    JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
    WHERE (n.nspname = 'public' AND c.relname = 'audit_events')
       OR (n.nspname = 'hardening' AND c.relname IN ('audit_seals', 'audit_seal_checks'))
       OR (n.nspname = 'public' AND c.relkind IN ('r', 'p')
           AND EXISTS (SELECT 1 FROM hardening.managed_tables m WHERE m.table_name = c.relname))
       OR (c.relkind IN ('r', 'p') AND hardening.tenant_schema(n.nspname)
           AND EXISTS (SELECT 1 FROM pg_catalog.pg_attribute a
                       WHERE a.attrelid = c.oid AND a.attname = 'tenant_id'
                         AND NOT a.attisdropped))
       OR EXISTS (SELECT 1 FROM pg_catalog.pg_trigger t
                  JOIN pg_catalog.pg_proc p ON p.oid = t.tgfoid
                  JOIN pg_catalog.pg_namespace pn ON pn.oid = p.pronamespace
                  WHERE t.tgrelid = c.oid AND pn.nspname = 'hardening'
                    AND p.proname IN ('audit_write_guard', 'audit_capture_insert',
                                      'audit_capture_update', 'audit_capture_delete',
                                      'audit_capture_truncate'))
$fn$;
GRANT CREATE ON SCHEMA hardening TO hardening_audit_owner;
ALTER FUNCTION hardening.ddl_audited_table(oid) OWNER TO hardening_audit_owner;
REVOKE CREATE ON SCHEMA hardening FROM hardening_audit_owner;
