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
-- runs once per statement, not once per row. A malformed tenant id raises (invalid uuid), which
-- also fails closed.
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
REVOKE ALL ON public.tenants, public.developments, public.units, public.messages,
    public.onboarding_attempts FROM anon, PUBLIC;
GRANT SELECT ON public.tenants TO authenticated;
GRANT SELECT, INSERT, UPDATE, DELETE ON public.tenants TO service_role;
GRANT SELECT, INSERT, UPDATE, DELETE ON public.developments, public.units, public.messages,
    public.onboarding_attempts TO authenticated, service_role;

ALTER TABLE public.tenants ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.developments ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.units ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.messages ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.onboarding_attempts ENABLE ROW LEVEL SECURITY;

CREATE POLICY tenants_own_row ON public.tenants
    FOR SELECT TO authenticated
    USING (id = (SELECT hardening.current_tenant_id()));

CREATE POLICY developments_tenant_isolation ON public.developments
    FOR ALL TO authenticated
    USING (tenant_id = (SELECT hardening.current_tenant_id()))
    WITH CHECK (tenant_id = (SELECT hardening.current_tenant_id()));

CREATE POLICY units_tenant_isolation ON public.units
    FOR ALL TO authenticated
    USING (tenant_id = (SELECT hardening.current_tenant_id()))
    WITH CHECK (tenant_id = (SELECT hardening.current_tenant_id()));

CREATE POLICY messages_tenant_isolation ON public.messages
    FOR ALL TO authenticated
    USING (tenant_id = (SELECT hardening.current_tenant_id()))
    WITH CHECK (tenant_id = (SELECT hardening.current_tenant_id()));

CREATE POLICY onboarding_attempts_tenant_isolation ON public.onboarding_attempts
    FOR ALL TO authenticated
    USING (tenant_id = (SELECT hardening.current_tenant_id()))
    WITH CHECK (tenant_id = (SELECT hardening.current_tenant_id()));
