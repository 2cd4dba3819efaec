-- 001_core_schema: the multi-tenant baseline the later migrations harden.
--
-- Supabase-style: roles anon / authenticated / service_role (created only when missing, so this
-- also runs on a real Supabase database), tables tenants -> developments -> units -> messages and
-- onboarding_attempts. messages starts in its legacy shape (nullable unit_id, no foreign keys);
-- 003_message_safety tightens it after checking the data.
--
-- Tenant context reaches the database only through the transaction-local settings app.tenant_id
-- (set by TenantScopedClient) or request.jwt.claims (set by PostgREST). Policies read it through
-- hardening.current_tenant_id(), which returns NULL when neither is set, so no row matches: an
-- unset tenant sees nothing (fail closed).
--
-- On a database that already has some of these tables (an existing app), the kit adopts them and
-- never widens access: hardening.managed_tables records which tables it created and which it
-- found. On a table it found with row-level security already on, its tenant policy is AS
-- RESTRICTIVE, so it can only narrow what the app's own policies allow (permissive policies are
-- OR-ed: a second permissive one would let a viewer update a colleague's row). On a table it
-- found with RLS off, every row was open to the app's grants, so its policy is the only one and
-- permissive, which narrows that to the tenant's rows. It grants nothing on a table it found.

DO $roles$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'anon') THEN
        CREATE ROLE anon NOLOGIN NOINHERIT;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'authenticated') THEN
        CREATE ROLE authenticated NOLOGIN NOINHERIT;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'service_role') THEN
        CREATE ROLE service_role NOLOGIN NOINHERIT BYPASSRLS;
    END IF;
END
$roles$;

CREATE SCHEMA IF NOT EXISTS hardening;
REVOKE ALL ON SCHEMA hardening FROM PUBLIC;
GRANT USAGE ON SCHEMA hardening TO authenticated, service_role;
GRANT USAGE ON SCHEMA public TO anon, authenticated, service_role;

-- The one place the current tenant is read. STABLE and wrapped as (SELECT ...) in policies so it
-- runs once per statement, not once per row. Here a malformed tenant id raises (invalid uuid);
-- 011 replaces it with the configurable resolver, under which it sees nothing instead.
CREATE OR REPLACE FUNCTION hardening.current_tenant_id() RETURNS uuid
LANGUAGE sql STABLE
SET search_path = ''
AS $fn$
    SELECT coalesce(
        nullif(current_setting('app.tenant_id', true), ''),
        nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'tenant_id',
        nullif(current_setting('request.jwt.claims', true), '')::jsonb -> 'app_metadata' ->> 'tenant_id'
    )::uuid
$fn$;
REVOKE ALL ON FUNCTION hardening.current_tenant_id() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION hardening.current_tenant_id() TO authenticated, service_role;

-- Which tables the kit created and which it adopted, recorded before anything is created so
-- that later migrations and the status check can tell. Also a log of what the kit changed on
-- objects it did not create (hardening migrate prints the rows each run adds).
CREATE TABLE IF NOT EXISTS hardening.managed_tables (
    table_name          text PRIMARY KEY,
    created_by_kit      boolean NOT NULL,
    adopted_at          timestamptz,
    rls_was_enabled     boolean NOT NULL DEFAULT false,
    tenant_policy       text,
    CHECK (created_by_kit = (adopted_at IS NULL))
);
REVOKE ALL ON hardening.managed_tables FROM PUBLIC;

CREATE TABLE IF NOT EXISTS hardening.adoption_log (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    migration   text NOT NULL,
    object      text NOT NULL,
    action      text NOT NULL,
    detail      text NOT NULL,
    logged_at   timestamptz NOT NULL DEFAULT now()
);
REVOKE ALL ON hardening.adoption_log FROM PUBLIC;

INSERT INTO hardening.managed_tables (table_name, created_by_kit, adopted_at, rls_was_enabled)
SELECT t, c.oid IS NULL, CASE WHEN c.oid IS NOT NULL THEN now() END,
       coalesce(c.relrowsecurity, false)
FROM unnest(ARRAY['tenants', 'developments', 'units', 'messages', 'onboarding_attempts']) AS t
LEFT JOIN pg_catalog.pg_class c ON c.oid = to_regclass('public.' || t)
ON CONFLICT (table_name) DO NOTHING;

INSERT INTO hardening.adoption_log (migration, object, action, detail)
SELECT '001_core_schema.sql', 'public.' || table_name, 'adopted table',
       'found before the kit: not created, nothing granted, tenant policy '
       || CASE WHEN rls_was_enabled THEN 'AS RESTRICTIVE (narrows the app''s own policies)'
               ELSE 'permissive (RLS was off, so it narrows every row to the tenant''s)' END
FROM hardening.managed_tables WHERE NOT created_by_kit;

CREATE TABLE IF NOT EXISTS public.tenants (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    slug        text NOT NULL UNIQUE CHECK (slug ~ '^[a-z0-9][a-z0-9-]{1,62}$'),
    name        text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS public.developments (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id   uuid NOT NULL REFERENCES public.tenants (id) ON DELETE RESTRICT,
    name        text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT developments_id_tenant_key UNIQUE (id, tenant_id)
);

CREATE TABLE IF NOT EXISTS public.units (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id       uuid NOT NULL REFERENCES public.tenants (id) ON DELETE RESTRICT,
    development_id  uuid NOT NULL,
    label           text NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    -- A unit cannot sit in another tenant's development.
    CONSTRAINT units_development_tenant_fkey FOREIGN KEY (development_id, tenant_id)
        REFERENCES public.developments (id, tenant_id) ON DELETE RESTRICT
);

-- Legacy shape on purpose: this is what 003_message_safety finds on a live database.
CREATE TABLE IF NOT EXISTS public.messages (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id       uuid NOT NULL,
    development_id  uuid,
    unit_id         uuid,
    sender          text NOT NULL,
    body            text NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS public.onboarding_attempts (
    id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id    uuid NOT NULL REFERENCES public.tenants (id) ON DELETE RESTRICT,
    email        text NOT NULL,
    status       text NOT NULL DEFAULT 'started'
                 CHECK (status IN ('started', 'succeeded', 'failed')),
    error        text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    finished_at  timestamptz,
    CONSTRAINT onboarding_attempts_error_when_failed
        CHECK ((status = 'failed') = (error IS NOT NULL))
);

-- Supabase grants: authenticated and service_role may read and write tenant tables, RLS decides
-- which rows; anon gets nothing. TRUNCATE is never granted: it skips RLS and row triggers.
-- Revoking narrows, so it applies to every table; granting would widen, so only the tables the
-- kit created get grants.
REVOKE ALL ON public.tenants, public.developments, public.units, public.messages,
    public.onboarding_attempts FROM anon, PUBLIC;

DO $grants_and_policies$
DECLARE
    t record;
    policy_name text;
    tenant_type text;
    column_name text;
BEGIN
    FOR t IN SELECT * FROM hardening.managed_tables ORDER BY table_name LOOP
        IF t.created_by_kit THEN
            IF t.table_name = 'tenants' THEN
                GRANT SELECT ON public.tenants TO authenticated;
                GRANT SELECT, INSERT, UPDATE, DELETE ON public.tenants TO service_role;
            ELSE
                EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON public.%I '
                               'TO authenticated, service_role', t.table_name);
            END IF;
        END IF;
        EXECUTE format('ALTER TABLE public.%I ENABLE ROW LEVEL SECURITY', t.table_name);

        column_name := CASE WHEN t.table_name = 'tenants' THEN 'id' ELSE 'tenant_id' END;
        SELECT format_type(a.atttypid, a.atttypmod) INTO tenant_type
        FROM pg_catalog.pg_attribute a
        WHERE a.attrelid = format('public.%I', t.table_name)::regclass
          AND a.attname = column_name AND NOT a.attisdropped;
        IF tenant_type IS DISTINCT FROM 'uuid' THEN
            RAISE EXCEPTION 'public.%.% is %, not uuid, so the kit''s tenant policy cannot '
                            'compare it with the tenant id; nothing was changed',
                    t.table_name, column_name, coalesce(tenant_type, 'missing')
                USING ERRCODE = 'datatype_mismatch',
                      HINT = 'Convert the column to uuid (ALTER TABLE ... ALTER COLUMN ... TYPE '
                             'uuid USING ...), then run hardening migrate again.';
        END IF;

        policy_name := CASE WHEN t.table_name = 'tenants' THEN 'tenants_own_row'
                            ELSE t.table_name || '_tenant_isolation' END;
        -- Never collide with a policy of the app's own.
        IF EXISTS (SELECT 1 FROM pg_catalog.pg_policy
                   WHERE polrelid = format('public.%I', t.table_name)::regclass
                     AND polname = policy_name) THEN
            policy_name := 'hardening_' || policy_name;
        END IF;
        IF t.table_name = 'tenants' THEN
            EXECUTE format(
                'CREATE POLICY %I ON public.tenants AS %s FOR SELECT TO authenticated '
                'USING (id = (SELECT hardening.current_tenant_id()))',
                policy_name,
                CASE WHEN t.rls_was_enabled THEN 'RESTRICTIVE' ELSE 'PERMISSIVE' END);
        ELSE
            EXECUTE format(
                'CREATE POLICY %I ON public.%I AS %s FOR ALL TO authenticated '
                'USING (tenant_id = (SELECT hardening.current_tenant_id())) '
                'WITH CHECK (tenant_id = (SELECT hardening.current_tenant_id()))',
                policy_name, t.table_name,
                CASE WHEN t.rls_was_enabled THEN 'RESTRICTIVE' ELSE 'PERMISSIVE' END);
        END IF;
        UPDATE hardening.managed_tables SET tenant_policy = policy_name
        WHERE table_name = t.table_name;
    END LOOP;
END
$grants_and_policies$;
