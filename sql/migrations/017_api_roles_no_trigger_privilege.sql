-- 017_api_roles_no_trigger_privilege: the API roles may not create triggers on tenant tables.
--
-- Supabase's default privileges give anon, authenticated and service_role ALL on every table
-- postgres creates in public; 004 took everything from anon and TRUNCATE from the others, but
-- left TRIGGER (and REFERENCES). With TRIGGER, a session as authenticated or service_role may
-- CREATE TRIGGER on any tenant table: a trigger that fires on every tenant's writes, can make
-- them all fail, and can call any trigger function those roles may execute (on Supabase,
-- supabase_functions.http_request, which posts each row to a URL). No API request needs either
-- privilege. The status line api_roles_no_trigger_or_truncate keeps watching, since a table
-- created later gets Supabase's defaults again.

DO $revoke$
DECLARE
    t record;
    grantees text := concat_ws(', ', 'PUBLIC',
        (SELECT string_agg(quote_ident(r), ', ')
         FROM unnest(ARRAY['authenticated', 'service_role']) AS r
         WHERE EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = r)));
BEGIN
    FOR t IN
        SELECT c.oid::regclass AS rel
        FROM pg_catalog.pg_class c
        JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p')
          AND (c.relname = 'tenants'
               OR EXISTS (SELECT 1 FROM pg_catalog.pg_attribute a
                          WHERE a.attrelid = c.oid AND a.attname = 'tenant_id'
                            AND NOT a.attisdropped))
    LOOP
        EXECUTE format('REVOKE TRIGGER, REFERENCES, TRUNCATE ON %s FROM %s', t.rel, grantees);
    END LOOP;
END
$revoke$;
