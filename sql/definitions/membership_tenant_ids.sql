-- The resolver (011), reading the claims through hardening.request_claims().
CREATE OR REPLACE FUNCTION hardening.membership_tenant_ids() RETURNS uuid[]
LANGUAGE plpgsql STABLE
SET search_path = ''
AS $fn$
DECLARE
    r hardening.tenant_resolver;
    sub text := hardening.request_claims() ->> 'sub';
    user_type text;
    found text[];
BEGIN
    SELECT * INTO r FROM hardening.tenant_resolver;
    IF sub IS NULL OR r.kind IS DISTINCT FROM 'membership' THEN
        RETURN '{}';
    END IF;
    SELECT format_type(a.atttypid, a.atttypmod) INTO user_type
    FROM pg_catalog.pg_attribute a
    WHERE a.attrelid = to_regclass(format('%I.%I', r.membership_schema, r.membership_table))
      AND a.attname = r.user_column AND NOT a.attisdropped;
    IF user_type IS NULL THEN
        RETURN '{}';  -- the table or column went away: fail closed
    END IF;
    IF user_type = 'uuid' THEN
        -- Compared as uuid so the membership key's index is used; a sub that is no uuid matches
        -- no one.
        IF hardening.as_uuid(sub) IS NULL THEN
            RETURN '{}';
        END IF;
        EXECUTE format('SELECT array_agg(DISTINCT m.%I::text) FROM %I.%I m WHERE m.%I = $1::uuid',
                       r.tenant_column, r.membership_schema, r.membership_table, r.user_column)
        INTO found USING sub;
    ELSE
        EXECUTE format('SELECT array_agg(DISTINCT m.%I::text) FROM %I.%I m WHERE m.%I::text = $1',
                       r.tenant_column, r.membership_schema, r.membership_table, r.user_column)
        INTO found USING sub;
    END IF;
    RETURN coalesce((SELECT array_agg(hardening.as_uuid(t)) FROM unnest(found) AS t
                     WHERE hardening.as_uuid(t) IS NOT NULL), '{}');
END
$fn$;
