-- 012_service_role_mode: the service-role rule gets two modes, report and enforce.
--
-- Since 002, a write as service_role without app.actor is refused on every tenant table. That is
-- the target state, but an app adopting the kit has callers that write as service_role without
-- it (supabase-js with the service key, edge functions, database webhooks), and the rule would
-- break them all at once, unannounced. The mode lets a team see those callers first:
--
--   enforce  the write is refused, as before (the default on a new database);
--   report   the write goes through, is audited with the actor 'service_role:unattributed',
--            and one row per statement in hardening.unattributed_writes says where it came
--            from (application_name, the JWT role, and through PostgREST the client header and
--            request path); the unattributed_service_role_writes canary
--            names them, and the status line stays red until the mode is enforce.
--
-- The mode lives in a one-row table owned by the migration role; no application role holds
-- any privilege on it, so only the migration role (`hardening service-role-mode`) changes it. A
-- setting would not do: any session can SET a custom setting.
--
-- Cost: the guard reads the mode only for a service_role statement that carries no actor, once
-- per statement. Attributed writes and every other role pay one more text comparison.

CREATE TABLE hardening.service_role_mode (
    singleton  boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    mode       text NOT NULL CHECK (mode IN ('report', 'enforce')),
    set_at     timestamptz NOT NULL DEFAULT now(),
    set_by     text NOT NULL DEFAULT current_user,
    reason     text NOT NULL
);
REVOKE ALL ON hardening.service_role_mode FROM PUBLIC, anon, authenticated, service_role;
GRANT SELECT ON hardening.service_role_mode TO hardening_audit_owner;

-- One row per unattributed service_role statement that report mode let through.
CREATE TABLE hardening.unattributed_writes (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    created_at        timestamptz NOT NULL DEFAULT clock_timestamp(),
    table_name        text NOT NULL,
    operation         text NOT NULL,
    application_name  text NOT NULL,
    jwt_role          text,
    -- Through PostgREST every caller shares one application_name; the client's own header
    -- (supabase-js sends x-client-info) and the request path tell them apart.
    client_info       text,
    request_path      text,
    client_addr       text,
    txid              bigint NOT NULL DEFAULT txid_current()
);
CREATE INDEX unattributed_writes_created_at_idx ON hardening.unattributed_writes (created_at);
REVOKE ALL ON hardening.unattributed_writes FROM PUBLIC, anon, authenticated, service_role;
GRANT INSERT ON hardening.unattributed_writes TO hardening_audit_owner;

-- Called by the guard for an unattributed service_role statement: true (and the source noted)
-- in report mode, false in enforce mode. SECURITY DEFINER so service_role needs no privilege on
-- either table; the source is read here from the session, not taken from the caller.
CREATE FUNCTION hardening.allow_unattributed_write(target_table text, operation text)
RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = ''
AS $fn$
DECLARE
    claims text := nullif(current_setting('request.jwt.claims', true), '');
    headers text := nullif(current_setting('request.headers', true), '');
    jwt_role text;
    client_info text;
BEGIN
    -- Only the guard trigger may ask; called by hand it would let a caller fill the report.
    IF pg_catalog.pg_trigger_depth() = 0 THEN
        RAISE EXCEPTION 'hardening.allow_unattributed_write is called by the audit guard only'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF coalesce((SELECT m.mode FROM hardening.service_role_mode m), 'enforce') <> 'report' THEN
        RETURN false;
    END IF;
    IF claims IS NOT NULL THEN
        BEGIN
            jwt_role := claims::jsonb ->> 'role';
        EXCEPTION WHEN invalid_text_representation THEN
            jwt_role := '(malformed request.jwt.claims)';
        END;
    END IF;
    IF headers IS NOT NULL THEN
        BEGIN
            client_info := coalesce(headers::jsonb ->> 'x-client-info',
                                    headers::jsonb ->> 'user-agent');
        EXCEPTION WHEN invalid_text_representation THEN
            client_info := '(malformed request.headers)';
        END;
    END IF;
    INSERT INTO hardening.unattributed_writes
        (table_name, operation, application_name, jwt_role, client_info, request_path,
         client_addr)
    VALUES (target_table, operation, current_setting('application_name'), jwt_role, client_info,
            nullif(current_setting('request.path', true), ''),
            pg_catalog.inet_client_addr()::text);
    RETURN true;
END
$fn$;
REVOKE ALL ON FUNCTION hardening.allow_unattributed_write(text, text)
    FROM PUBLIC, anon, authenticated;
GRANT EXECUTE ON FUNCTION hardening.allow_unattributed_write(text, text) TO service_role;

-- A non-superuser migration role can only hand an object to a role that may create in its
-- schema; grant that for the hand-over alone unless the owner already has it.
DO $owner$
BEGIN
    IF has_schema_privilege('hardening_audit_owner', 'hardening', 'CREATE') THEN
        ALTER FUNCTION hardening.allow_unattributed_write(text, text) OWNER TO hardening_audit_owner;
    ELSE
        GRANT CREATE ON SCHEMA hardening TO hardening_audit_owner;
        ALTER FUNCTION hardening.allow_unattributed_write(text, text) OWNER TO hardening_audit_owner;
        REVOKE CREATE ON SCHEMA hardening FROM hardening_audit_owner;
    END IF;
END
$owner$;

-- 002's guard, with the mode. 'service_role:unattributed' is the marker report mode leaves in
-- app.actor for the rest of the transaction (so the capture triggers record it as the actor);
-- a caller that sets it by hand is treated as unattributed, never as attributed.
CREATE OR REPLACE FUNCTION hardening.audit_write_guard() RETURNS trigger
LANGUAGE plpgsql
SET search_path = ''
AS $fn$
BEGIN
    IF current_user = 'service_role'
       AND coalesce(nullif(current_setting('app.actor', true), ''), 'service_role:unattributed')
           = 'service_role:unattributed' THEN
        IF NOT hardening.allow_unattributed_write(TG_TABLE_NAME, TG_OP) THEN
            RAISE EXCEPTION 'service_role write to %.% without an actor is refused',
                    TG_TABLE_SCHEMA, TG_TABLE_NAME
                USING ERRCODE = 'insufficient_privilege',
                      HINT = 'Write through TenantScopedClient, which sets app.actor for '
                             'audit_events (the service-role rule is in enforce mode).';
        END IF;
        PERFORM set_config('app.actor', 'service_role:unattributed', true);
    END IF;
    PERFORM set_config('hardening.statement_role', current_user, true);
    RETURN NULL;
END
$fn$;

-- The starting mode. Tenant rows that the audit log has never seen written predate the kit: an
-- app adopting it, whose callers have not been attributed yet, starts in report. A new database,
-- or one the kit has been guarding (its audit log holds events), starts in enforce.
-- Rows are counted with row security off: a migration role that owns forced-RLS tables but has
-- no BYPASSRLS gets an error there instead of an empty answer, and a table it cannot read
-- counts as holding data (an adopting app's, most likely), so the database starts in report.
DO $mode$
DECLARE
    tbl regclass;
    held boolean := false;
    guarded boolean := false;
    prior_row_security text := current_setting('row_security');
BEGIN
    PERFORM set_config('row_security', 'off', true);
    BEGIN
        guarded := EXISTS (SELECT 1 FROM public.audit_events);
    EXCEPTION WHEN insufficient_privilege THEN
        guarded := false;
    END;
    IF NOT guarded THEN
        FOR tbl IN
            SELECT c.oid::regclass
            FROM pg_catalog.pg_class c
            JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
            WHERE c.relkind IN ('r', 'p') AND n.nspname = 'public' AND c.relname <> 'audit_events'
              AND (c.relname = 'tenants'
                   OR EXISTS (SELECT 1 FROM pg_catalog.pg_attribute a
                              WHERE a.attrelid = c.oid AND a.attname = 'tenant_id'
                                AND NOT a.attisdropped))
        LOOP
            BEGIN
                EXECUTE format('SELECT EXISTS (SELECT 1 FROM %s)', tbl) INTO held;
            EXCEPTION WHEN insufficient_privilege THEN
                held := true;
            END;
            EXIT WHEN held;
        END LOOP;
    END IF;
    PERFORM set_config('row_security', prior_row_security, true);
    INSERT INTO hardening.service_role_mode (mode, reason)
    VALUES (CASE WHEN held THEN 'report' ELSE 'enforce' END,
            CASE WHEN held
                 THEN 'set by 012: the database already held tenant data the audit log never saw'
                 ELSE 'set by 012: no pre-existing tenant data' END);
END
$mode$;
