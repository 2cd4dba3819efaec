-- hardening.as_uuid: its one definition, applied again whenever the server's differs
-- (db/baseline.py). History: sql/migrations, last 011_tenant_resolver_and_adoption.sql.
CREATE OR REPLACE FUNCTION hardening.as_uuid(value text) RETURNS uuid
LANGUAGE sql IMMUTABLE
SET search_path = ''
AS $fn$
    SELECT CASE WHEN value ~* '^[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}$'
                THEN value::uuid END
$fn$;
