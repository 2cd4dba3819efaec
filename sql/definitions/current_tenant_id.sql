CREATE OR REPLACE FUNCTION hardening.current_tenant_id() RETURNS uuid
LANGUAGE plpgsql STABLE
SET search_path = ''
AS $fn$
DECLARE
    value text;
    ids uuid[];
BEGIN
    -- TenantScopedClient's path (no claims) is answered here, without a second function call.
    IF nullif(current_setting('request.jwt.claims', true), '') IS NULL THEN
        value := nullif(current_setting('app.tenant_id', true), '');
        RETURN CASE WHEN value ~* '^[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}$'
                    THEN value::uuid END;
    END IF;
    ids := hardening.current_tenant_ids();
    RETURN CASE WHEN cardinality(ids) = 1 THEN ids[1] END;
END
$fn$;
