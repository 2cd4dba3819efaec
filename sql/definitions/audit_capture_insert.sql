-- hardening.audit_capture_insert: its one definition, applied again whenever the server's differs
-- (db/baseline.py). History: sql/migrations, last 018_capture_keys_and_claims.sql.
--
-- The capture. Role and actor are written out inline (hardening.statement_role() and
-- hardening.current_actor() above), read once per statement with built-in functions only: a
-- LANGUAGE sql function call here is parsed again in every transaction (009). The claims are
-- read through hardening.request_claims() only when there are claims.
CREATE OR REPLACE FUNCTION hardening.audit_capture_insert() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = ''
AS $fn$
DECLARE
    statement_role text := CASE current_setting('role') WHEN 'none' THEN session_user::text
                                ELSE current_setting('role') END;
    statement_actor text := CASE
        WHEN statement_role = 'service_role' THEN
            CASE WHEN current_setting('app.actor', true)
                      ~ '^service_role:[A-Za-z0-9._:@/+#=-]{1,200}$'
                 THEN current_setting('app.actor', true)
                 ELSE 'service_role:unattributed' END
        WHEN nullif(current_setting('request.jwt.claims', true), '') IS NOT NULL THEN
            coalesce('jwt:' || (hardening.request_claims() ->> 'sub'), 'db:' || statement_role)
        ELSE coalesce(nullif(pg_catalog.regexp_replace(current_setting('app.actor', true),
                                               '^service_role:.*', ''), ''),
                      'db:' || statement_role)
    END;
    uuid_tenant boolean := TG_NARGS < 2 OR TG_ARGV[1] = 'uuid';
    key_columns text[];
BEGIN
    IF TG_NARGS <= 2 THEN
        INSERT INTO public.audit_events
            (actor, tenant_id, table_name, operation, record_id, before, after, db_role)
        SELECT statement_actor,
               CASE WHEN uuid_tenant OR (r ->> TG_ARGV[0]) ~* '^[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}$'
                    THEN (r ->> TG_ARGV[0])::uuid END,
               TG_TABLE_NAME, 'INSERT', r ->> 'id', NULL, r, statement_role
        FROM (SELECT to_jsonb(n) AS r FROM new_rows n) AS captured;
        RETURN NULL;
    END IF;
    key_columns := TG_ARGV[2:];
    INSERT INTO public.audit_events
        (actor, tenant_id, table_name, operation, record_id, before, after, db_role)
    SELECT statement_actor,
           CASE WHEN uuid_tenant OR (r ->> TG_ARGV[0]) ~* '^[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}$'
                THEN (r ->> TG_ARGV[0])::uuid END,
           TG_TABLE_NAME, 'INSERT',
           CASE WHEN cardinality(key_columns) = 1 THEN r ->> key_columns[1]
                     ELSE (SELECT pg_catalog.jsonb_object_agg(c, r -> c)
                           FROM pg_catalog.unnest(key_columns) AS c)::text END,
           NULL, r, statement_role
    FROM (SELECT to_jsonb(n) AS r FROM new_rows n) AS captured;
    RETURN NULL;
END
$fn$;
