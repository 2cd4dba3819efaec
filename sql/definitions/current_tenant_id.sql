-- The single tenant: NULL unless exactly one resolves. The kit's policies call this one while
-- the resolver is a claim (one tenant per request): the planner treats "= (SELECT ...)" as one
-- value, while "= ANY (...)" of an unknown array makes it guess several and pick worse plans
-- on tables without fresh statistics.
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
