CREATE OR REPLACE FUNCTION hardening.current_tenant_ids() RETURNS uuid[]
LANGUAGE plpgsql STABLE
SET search_path = ''
AS $fn$
DECLARE
    claims jsonb := hardening.request_claims();
    r hardening.tenant_resolver;
    path text;
    value text;
BEGIN
    -- The uuid test is written out rather than calling hardening.as_uuid: a LANGUAGE sql
    -- function with SET search_path is parsed and planned again in every transaction.
    IF claims IS NULL THEN
        value := nullif(current_setting('app.tenant_id', true), '');
        RETURN CASE WHEN value ~* '^[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}$'
                    THEN ARRAY[value::uuid] ELSE '{}'::uuid[] END;
    END IF;
    SELECT * INTO r FROM hardening.tenant_resolver;
    IF r.kind = 'membership' THEN
        RETURN hardening.membership_tenant_ids();
    END IF;
    -- The first path present decides: a malformed value there is no tenant, not a fallthrough.
    FOREACH path IN ARRAY coalesce(r.claim_paths, ARRAY['tenant_id', 'app_metadata.tenant_id'])
    LOOP
        value := claims #>> string_to_array(path, '.');
        IF value IS NOT NULL THEN
            RETURN CASE WHEN value ~* '^[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}$'
                        THEN ARRAY[value::uuid] ELSE '{}'::uuid[] END;
        END IF;
    END LOOP;
    RETURN '{}';
END
$fn$;
