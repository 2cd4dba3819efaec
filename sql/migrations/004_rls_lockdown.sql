-- 004_rls_lockdown: row-level security on every tenant-scoped table, found rather than listed.
--
-- A table is tenant-scoped when it has a tenant_id column, wherever it came from, so a table added
-- by hand before this migration is locked down too (and the status check catches one added after).
-- For each: RLS enabled and FORCED (so the table owner is filtered as well), no privileges for
-- anon, no TRUNCATE for anyone (it skips RLS and row triggers), tenant_id indexed so policies stay
-- cheap. A policy that applies to anon or PUBLIC is not silently dropped: what it was meant to
-- allow is the owner's call, so the migration stops and names it.

DO $lockdown$
DECLARE
    t record;
    offending text;
BEGIN
    SELECT string_agg(format('%I on %I.%I', p.polname, n.nspname, c.relname), ', ')
    INTO offending
    FROM pg_catalog.pg_policy p
    JOIN pg_catalog.pg_class c ON c.oid = p.polrelid
    JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
    WHERE n.nspname = 'public'
      AND (0::oid = ANY (p.polroles)
           OR (SELECT oid FROM pg_catalog.pg_roles WHERE rolname = 'anon') = ANY (p.polroles));
    IF offending IS NOT NULL THEN
        RAISE EXCEPTION 'policies apply to anon or PUBLIC and would keep tenant data open: %; nothing was changed', offending
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'Recreate each policy with TO authenticated (or drop it), then run hardening migrate again.';
    END IF;

    FOR t IN
        SELECT c.oid::regclass AS rel, c.relname
        FROM pg_catalog.pg_class c
        JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
        JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attname = 'tenant_id'
            AND NOT a.attisdropped
        WHERE c.relkind IN ('r', 'p') AND n.nspname = 'public'
        ORDER BY c.relname
    LOOP
        EXECUTE format('ALTER TABLE %s ENABLE ROW LEVEL SECURITY', t.rel);
        EXECUTE format('ALTER TABLE %s FORCE ROW LEVEL SECURITY', t.rel);
        EXECUTE format('REVOKE ALL ON %s FROM anon', t.rel);
        EXECUTE format('REVOKE TRUNCATE ON %s FROM PUBLIC, authenticated, service_role', t.rel);
        IF NOT EXISTS (
            SELECT 1 FROM pg_catalog.pg_index i
            JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
            WHERE i.indrelid = t.rel AND a.attname = 'tenant_id'
        ) THEN
            EXECUTE format('CREATE INDEX %I ON %s (tenant_id)', t.relname || '_tenant_id_idx', t.rel);
        END IF;
    END LOOP;
END
$lockdown$;

-- tenants has no tenant_id column (it is the tenant) but is locked down the same way.
ALTER TABLE public.tenants FORCE ROW LEVEL SECURITY;
REVOKE ALL ON public.tenants FROM anon;
REVOKE TRUNCATE ON public.tenants FROM PUBLIC, authenticated, service_role;
