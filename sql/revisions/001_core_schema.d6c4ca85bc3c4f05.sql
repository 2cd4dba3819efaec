-- Catch-up for a database whose record holds the first released text of 001_core_schema.sql.
--
-- The revised 001 also records which tables the kit created and which it adopted, and keeps a
-- log of what it changed on objects it did not create. The first text created all five tables
-- itself, so all five are the kit's, with the tenant policies it named. Its grants and policies
-- are what the revision gives a table the kit created.

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

INSERT INTO hardening.managed_tables (table_name, created_by_kit, tenant_policy)
VALUES ('developments', true, 'developments_tenant_isolation'),
       ('messages', true, 'messages_tenant_isolation'),
       ('onboarding_attempts', true, 'onboarding_attempts_tenant_isolation'),
       ('tenants', true, 'tenants_own_row'),
       ('units', true, 'units_tenant_isolation')
ON CONFLICT (table_name) DO NOTHING;
