CREATE OR REPLACE FUNCTION hardening.request_claims() RETURNS jsonb
LANGUAGE plpgsql STABLE
SET search_path = ''
AS $fn$
DECLARE
    raw text := nullif(current_setting('request.jwt.claims', true), '');
    parsed jsonb;
BEGIN
    IF raw IS NULL THEN
        RETURN NULL;
    END IF;
    BEGIN
        parsed := raw::jsonb;
    EXCEPTION WHEN data_exception OR program_limit_exceeded THEN
        RETURN '{}'::jsonb;
    END;
    RETURN CASE WHEN pg_catalog.jsonb_typeof(parsed) = 'object' THEN parsed ELSE '{}'::jsonb END;
END
$fn$;
GRANT CREATE ON SCHEMA hardening TO hardening_audit_owner;
ALTER FUNCTION hardening.request_claims() OWNER TO hardening_audit_owner;
REVOKE CREATE ON SCHEMA hardening FROM hardening_audit_owner;
