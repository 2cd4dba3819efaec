CREATE OR REPLACE FUNCTION hardening.tenant_schema(schema_name name) RETURNS boolean
LANGUAGE sql IMMUTABLE
SET search_path = ''
AS $fn$
    SELECT schema_name NOT LIKE 'pg\_%'
       AND NOT (schema_name = ANY (ARRAY[
           'pg_catalog', 'information_schema', 'pg_toast',
           'auth', 'storage', 'realtime', 'extensions', 'graphql', 'graphql_public', 'pgbouncer',
           'vault', 'supabase_functions', 'supabase_migrations', 'net', 'pgsodium',
           'pgsodium_masks', 'cron',
           'hardening']::name[]))
$fn$;
GRANT CREATE ON SCHEMA hardening TO hardening_audit_owner;
ALTER FUNCTION hardening.tenant_schema(name) OWNER TO hardening_audit_owner;
REVOKE CREATE ON SCHEMA hardening FROM hardening_audit_owner;
