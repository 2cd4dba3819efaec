CREATE OR REPLACE FUNCTION hardening.as_uuid(value text) RETURNS uuid
LANGUAGE sql IMMUTABLE
SET search_path = ''
AS $fn$
    SELECT CASE WHEN value ~* '^[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}$'
                THEN value::uuid END
$fn$;
