-- Every tenant table, public's included (audit_events too: it has a tenant_id).
CREATE OR REPLACE FUNCTION hardening.tenant_tables() RETURNS SETOF regclass
LANGUAGE sql STABLE
SET search_path = ''
AS $fn$
    SELECT c.oid::regclass
    FROM pg_catalog.pg_class c
    JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
    JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attname = 'tenant_id'
        AND NOT a.attisdropped
    WHERE c.relkind IN ('r', 'p') AND hardening.tenant_schema(n.nspname)
      AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d
                      WHERE d.classid = 'pg_catalog.pg_class'::regclass AND d.objid = c.oid
                        AND d.deptype = 'e')
    ORDER BY n.nspname, c.relname
$fn$;
