-- hardening.audit_capture_update: its one definition, applied again whenever the server's differs
-- (db/baseline.py). History: sql/migrations, last 018_capture_keys_and_claims.sql.
CREATE OR REPLACE FUNCTION hardening.audit_capture_update() RETURNS trigger
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
    -- Old and new images are paired by record key; FULL JOIN so an update that changes the key
    -- still leaves both images behind.
    IF TG_NARGS <= 2 THEN
        INSERT INTO public.audit_events
            (actor, tenant_id, table_name, operation, record_id, before, after, db_role)
        SELECT statement_actor,
               CASE WHEN uuid_tenant OR (coalesce(a.r, b.r) ->> TG_ARGV[0]) ~* '^[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}$'
                    THEN (coalesce(a.r, b.r) ->> TG_ARGV[0])::uuid END,
               TG_TABLE_NAME, 'UPDATE', coalesce(a.r, b.r) ->> 'id', b.r, a.r, statement_role
        FROM (SELECT to_jsonb(o) AS r FROM old_rows o) AS b
        FULL JOIN (SELECT to_jsonb(n) AS r FROM new_rows n) AS a ON (a.r ->> 'id') = (b.r ->> 'id');
        RETURN NULL;
    END IF;
    key_columns := TG_ARGV[2:];
    INSERT INTO public.audit_events
        (actor, tenant_id, table_name, operation, record_id, before, after, db_role)
    SELECT statement_actor,
           CASE WHEN uuid_tenant OR (coalesce(a.r, b.r) ->> TG_ARGV[0]) ~* '^[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}$'
                THEN (coalesce(a.r, b.r) ->> TG_ARGV[0])::uuid END,
           TG_TABLE_NAME, 'UPDATE', coalesce(a.k, b.k), b.r, a.r, statement_role
    FROM (SELECT r, CASE WHEN cardinality(key_columns) = 1 THEN r ->> key_columns[1]
                     ELSE (SELECT pg_catalog.jsonb_object_agg(c, r -> c)
                           FROM pg_catalog.unnest(key_columns) AS c)::text END AS k
          FROM (SELECT to_jsonb(o) AS r FROM old_rows o) AS o) AS b
    FULL JOIN
         (SELECT r, CASE WHEN cardinality(key_columns) = 1 THEN r ->> key_columns[1]
                     ELSE (SELECT pg_catalog.jsonb_object_agg(c, r -> c)
                           FROM pg_catalog.unnest(key_columns) AS c)::text END AS k
          FROM (SELECT to_jsonb(n) AS r FROM new_rows n) AS n) AS a
    ON a.k = b.k;
    RETURN NULL;
END
$fn$;
