-- The record_id of a row image whose table is keyed on several columns: the key as a JSON
-- object of those columns, in jsonb's own text form (keys ordered by length, then bytes), so
-- equal keys are equal text. The capture calls it only for such tables; a one-column key is
-- the column's value, read in place.
CREATE OR REPLACE FUNCTION hardening.record_key(image jsonb, key_columns text[]) RETURNS text
LANGUAGE plpgsql IMMUTABLE
SET search_path = ''
AS $fn$
BEGIN
    RETURN (SELECT pg_catalog.jsonb_object_agg(k, image -> k)
            FROM pg_catalog.unnest(key_columns) AS k)::text;
END
$fn$;
REVOKE ALL ON FUNCTION hardening.record_key(jsonb, text[])
    FROM PUBLIC, anon, authenticated, service_role;
GRANT CREATE ON SCHEMA hardening TO hardening_audit_owner;
ALTER FUNCTION hardening.record_key(jsonb, text[]) OWNER TO hardening_audit_owner;
REVOKE CREATE ON SCHEMA hardening FROM hardening_audit_owner;
