-- 002_audit_events: an append-only audit log and capture triggers on every tenant-scoped table.
--
-- Append-only is enforced twice, so one slip does not open it:
--   1. privileges: the table belongs to a NOLOGIN role; nobody holds UPDATE, DELETE or TRUNCATE,
--      and nobody but that owner may INSERT (rows arrive only through the capture triggers);
--   2. a statement-level guard trigger refuses UPDATE, DELETE and TRUNCATE for every role,
--      the owner included, and is ENABLE ALWAYS so session_replication_role = replica
--      (which skips ordinary triggers) does not skip it.
--
-- Capture is statement-level with transition tables: one INSERT ... SELECT per statement instead
-- of one trigger call per row. A separate invoker-rights guard runs first on each statement: it
-- refuses a write as service_role that carries no app.actor (raw service-role writes must go
-- through TenantScopedClient) and remembers the invoking role, which the SECURITY DEFINER capture
-- function cannot see for itself (inside it, current_user is the function's owner).

DO $owner$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'hardening_audit_owner') THEN
        CREATE ROLE hardening_audit_owner NOLOGIN NOINHERIT;
    END IF;
    -- A non-superuser migration role must be able to SET ROLE to the owner to hand objects over.
    IF NOT (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN
        EXECUTE format('GRANT hardening_audit_owner TO %I', current_user);
    END IF;
END
$owner$;

GRANT USAGE ON SCHEMA hardening TO hardening_audit_owner;

CREATE TABLE public.audit_events (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    actor       text NOT NULL,
    tenant_id   uuid,
    table_name  text NOT NULL,
    operation   text NOT NULL CHECK (operation IN ('INSERT', 'UPDATE', 'DELETE', 'TRUNCATE')),
    record_id   text,
    before      jsonb,
    after       jsonb,
    created_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    db_role     text NOT NULL,
    txid        bigint NOT NULL DEFAULT txid_current(),
    CONSTRAINT audit_events_images_match_operation CHECK (
        (operation = 'INSERT' AND before IS NULL AND after IS NOT NULL)
        OR (operation = 'UPDATE' AND (before IS NOT NULL OR after IS NOT NULL))
        OR (operation = 'DELETE' AND before IS NOT NULL AND after IS NULL)
        OR (operation = 'TRUNCATE' AND before IS NULL AND after IS NULL)
    )
);

CREATE INDEX audit_events_created_at_brin ON public.audit_events USING brin (created_at);
CREATE INDEX audit_events_tenant_op_time_idx
    ON public.audit_events (tenant_id, operation, created_at);
CREATE INDEX audit_events_record_idx ON public.audit_events (table_name, record_id);

-- The table has a tenant_id, so it is tenant-scoped: RLS on. Only the capture path inserts.
ALTER TABLE public.audit_events ENABLE ROW LEVEL SECURITY;
CREATE POLICY audit_events_capture_insert ON public.audit_events
    FOR INSERT TO hardening_audit_owner WITH CHECK (true);
CREATE POLICY audit_events_capture_read ON public.audit_events
    FOR SELECT TO hardening_audit_owner USING (true);

CREATE FUNCTION hardening.audit_events_append_only() RETURNS trigger
LANGUAGE plpgsql
SET search_path = ''
AS $fn$
BEGIN
    RAISE EXCEPTION 'audit_events is append-only: % is not allowed', TG_OP
        USING ERRCODE = 'insufficient_privilege',
              HINT = 'Audit rows are never changed or removed; write a new event instead.';
END
$fn$;

CREATE TRIGGER audit_events_append_only
    BEFORE UPDATE OR DELETE OR TRUNCATE ON public.audit_events
    FOR EACH STATEMENT EXECUTE FUNCTION hardening.audit_events_append_only();
ALTER TABLE public.audit_events ENABLE ALWAYS TRIGGER audit_events_append_only;

-- Hand the table to the NOLOGIN owner only now, after its guard trigger exists: the REVOKE below
-- also takes TRIGGER from the owner, and a migrating role that is not a superuser (Supabase's
-- postgres) acts through that owner. Changing the owner needs the new owner to hold CREATE on the
-- schema, granted for that one statement. Where default privileges open new sequences to the API
-- roles (Supabase does), the identity sequence behind the table would be open too: closed here.
GRANT CREATE ON SCHEMA public TO hardening_audit_owner;
ALTER TABLE public.audit_events OWNER TO hardening_audit_owner;
REVOKE CREATE ON SCHEMA public FROM hardening_audit_owner;
REVOKE ALL ON public.audit_events FROM PUBLIC, anon, authenticated, service_role;
REVOKE ALL ON SEQUENCE public.audit_events_id_seq FROM PUBLIC, anon, authenticated, service_role;
REVOKE ALL ON public.audit_events FROM hardening_audit_owner;
GRANT SELECT, INSERT ON public.audit_events TO hardening_audit_owner;
GRANT SELECT ON public.audit_events TO service_role;

-- The role that issued the current statement, as remembered by audit_write_guard.
CREATE FUNCTION hardening.statement_role() RETURNS text
LANGUAGE sql STABLE
SET search_path = ''
AS $fn$
    SELECT coalesce(nullif(current_setting('hardening.statement_role', true), ''), session_user)
$fn$;
REVOKE ALL ON FUNCTION hardening.statement_role() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION hardening.statement_role() TO hardening_audit_owner;

-- Who is writing: the actor TenantScopedClient sets, else the JWT subject (PostgREST requests),
-- else the database role that ran the statement.
CREATE FUNCTION hardening.current_actor() RETURNS text
LANGUAGE sql STABLE
SET search_path = ''
AS $fn$
    SELECT coalesce(
        nullif(current_setting('app.actor', true), ''),
        'jwt:' || (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'sub'),
        'db:' || hardening.statement_role()
    )
$fn$;
REVOKE ALL ON FUNCTION hardening.current_actor() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION hardening.current_actor() TO hardening_audit_owner;

-- Invoker rights on purpose: current_user here is the role that issued the statement.
CREATE FUNCTION hardening.audit_write_guard() RETURNS trigger
LANGUAGE plpgsql
SET search_path = ''
AS $fn$
BEGIN
    IF current_user = 'service_role'
       AND nullif(current_setting('app.actor', true), '') IS NULL THEN
        RAISE EXCEPTION 'service_role write to %.% without an actor is refused',
                TG_TABLE_SCHEMA, TG_TABLE_NAME
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'Write through TenantScopedClient, which sets app.actor for audit_events.';
    END IF;
    PERFORM set_config('hardening.statement_role', current_user, true);
    RETURN NULL;
END
$fn$;
GRANT EXECUTE ON FUNCTION hardening.audit_write_guard() TO authenticated, service_role;

-- TG_ARGV[0] names the column holding the tenant: tenant_id, or id for the tenants table itself.
CREATE FUNCTION hardening.audit_capture_insert() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = ''
AS $fn$
BEGIN
    INSERT INTO public.audit_events
        (actor, tenant_id, table_name, operation, record_id, before, after, db_role)
    SELECT hardening.current_actor(), (r ->> TG_ARGV[0])::uuid, TG_TABLE_NAME, 'INSERT',
           r ->> 'id', NULL, r, hardening.statement_role()
    FROM (SELECT to_jsonb(n) AS r FROM new_rows n) AS captured;
    RETURN NULL;
END
$fn$;

CREATE FUNCTION hardening.audit_capture_update() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = ''
AS $fn$
BEGIN
    -- FULL JOIN so an update that changes a primary key still leaves both images behind.
    INSERT INTO public.audit_events
        (actor, tenant_id, table_name, operation, record_id, before, after, db_role)
    SELECT hardening.current_actor(),
           (coalesce(a.r, b.r) ->> TG_ARGV[0])::uuid, TG_TABLE_NAME, 'UPDATE',
           coalesce(a.r, b.r) ->> 'id', b.r, a.r, hardening.statement_role()
    FROM (SELECT to_jsonb(o) AS r FROM old_rows o) AS b
    FULL JOIN (SELECT to_jsonb(n) AS r FROM new_rows n) AS a ON (a.r ->> 'id') = (b.r ->> 'id');
    RETURN NULL;
END
$fn$;

CREATE FUNCTION hardening.audit_capture_delete() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = ''
AS $fn$
BEGIN
    INSERT INTO public.audit_events
        (actor, tenant_id, table_name, operation, record_id, before, after, db_role)
    SELECT hardening.current_actor(), (r ->> TG_ARGV[0])::uuid, TG_TABLE_NAME, 'DELETE',
           r ->> 'id', r, NULL, hardening.statement_role()
    FROM (SELECT to_jsonb(o) AS r FROM old_rows o) AS captured;
    RETURN NULL;
END
$fn$;

CREATE FUNCTION hardening.audit_capture_truncate() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = ''
AS $fn$
BEGIN
    INSERT INTO public.audit_events
        (actor, tenant_id, table_name, operation, record_id, before, after, db_role)
    VALUES (hardening.current_actor(), NULL, TG_TABLE_NAME, 'TRUNCATE', NULL, NULL, NULL,
            hardening.statement_role());
    RETURN NULL;
END
$fn$;

-- As above: the new owner needs CREATE on the schema while it takes the functions over.
GRANT CREATE ON SCHEMA hardening TO hardening_audit_owner;
ALTER FUNCTION hardening.audit_capture_insert() OWNER TO hardening_audit_owner;
ALTER FUNCTION hardening.audit_capture_update() OWNER TO hardening_audit_owner;
ALTER FUNCTION hardening.audit_capture_delete() OWNER TO hardening_audit_owner;
ALTER FUNCTION hardening.audit_capture_truncate() OWNER TO hardening_audit_owner;
REVOKE CREATE ON SCHEMA hardening FROM hardening_audit_owner;
REVOKE ALL ON FUNCTION hardening.audit_capture_insert(), hardening.audit_capture_update(),
    hardening.audit_capture_delete(), hardening.audit_capture_truncate() FROM PUBLIC;

-- Installs the guard and the four capture triggers on one table, all ENABLE ALWAYS.
CREATE FUNCTION hardening.install_audit_capture(target regclass, tenant_column text)
RETURNS void
LANGUAGE plpgsql
SET search_path = ''
AS $fn$
DECLARE
    base text := (SELECT relname FROM pg_catalog.pg_class WHERE oid = target);
BEGIN
    EXECUTE format('CREATE TRIGGER %I BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE ON %s '
                   'FOR EACH STATEMENT EXECUTE FUNCTION hardening.audit_write_guard()',
                   base || '_audit_guard', target);
    EXECUTE format('CREATE TRIGGER %I AFTER INSERT ON %s REFERENCING NEW TABLE AS new_rows '
                   'FOR EACH STATEMENT EXECUTE FUNCTION hardening.audit_capture_insert(%L)',
                   base || '_audit_insert', target, tenant_column);
    EXECUTE format('CREATE TRIGGER %I AFTER UPDATE ON %s '
                   'REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows '
                   'FOR EACH STATEMENT EXECUTE FUNCTION hardening.audit_capture_update(%L)',
                   base || '_audit_update', target, tenant_column);
    EXECUTE format('CREATE TRIGGER %I AFTER DELETE ON %s REFERENCING OLD TABLE AS old_rows '
                   'FOR EACH STATEMENT EXECUTE FUNCTION hardening.audit_capture_delete(%L)',
                   base || '_audit_delete', target, tenant_column);
    EXECUTE format('CREATE TRIGGER %I AFTER TRUNCATE ON %s '
                   'FOR EACH STATEMENT EXECUTE FUNCTION hardening.audit_capture_truncate()',
                   base || '_audit_truncate', target);
    EXECUTE format('ALTER TABLE %s ENABLE ALWAYS TRIGGER %I', target, base || '_audit_guard');
    EXECUTE format('ALTER TABLE %s ENABLE ALWAYS TRIGGER %I', target, base || '_audit_insert');
    EXECUTE format('ALTER TABLE %s ENABLE ALWAYS TRIGGER %I', target, base || '_audit_update');
    EXECUTE format('ALTER TABLE %s ENABLE ALWAYS TRIGGER %I', target, base || '_audit_delete');
    EXECUTE format('ALTER TABLE %s ENABLE ALWAYS TRIGGER %I', target, base || '_audit_truncate');
END
$fn$;
REVOKE ALL ON FUNCTION hardening.install_audit_capture(regclass, text) FROM PUBLIC;

-- The tenants table is its own tenant; every other table with a tenant_id column is found, not
-- listed, so a tenant table this migration does not know about is still captured.
SELECT hardening.install_audit_capture('public.tenants'::regclass, 'id');
SELECT hardening.install_audit_capture(c.oid::regclass, 'tenant_id')
FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attname = 'tenant_id'
    AND NOT a.attisdropped
WHERE c.relkind IN ('r', 'p') AND n.nspname = 'public' AND c.relname <> 'audit_events'
ORDER BY c.relname;
