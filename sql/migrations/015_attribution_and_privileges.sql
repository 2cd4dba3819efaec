-- 015_attribution_and_privileges: who wrote comes from the session, not from a setting; the
-- kit's functions and sequences are closed to the API roles; no login role keeps the audit owner.
--
-- Attribution. Until now the guard (invoker rights, BEFORE STATEMENT) wrote current_user into
-- the custom setting hardening.statement_role and the capture (SECURITY DEFINER, AFTER
-- STATEMENT) read it back. The query body runs between the two, so one statement could
-- overwrite it: `INSERT ... SELECT ... FROM (SELECT set_config('hardening.statement_role',
-- 'service_role', true), set_config('app.actor', 'service_role:x', true)) s` was recorded as
-- service_role:x although authenticated wrote it. Now:
--
--   role   the `role` setting (what SET [LOCAL] ROLE and PostgREST's set_config('role', ...)
--          change), else session_user. SECURITY DEFINER changes current_user but not this
--          setting, so the capture sees the caller's role. A statement can change it only by
--          really becoming that role, which needs the login role's membership: nothing a
--          custom setting can fake.
--   actor  service_role: app.actor if it matches the documented pattern
--              service_role:<name>, <name> 1-200 of A-Z a-z 0-9 . _ : @ / + # = -
--          (TenantScopedClient writes exactly that), else service_role:unattributed;
--          with request.jwt.claims present: jwt:<sub>, app.actor ignored;
--          otherwise app.actor (unless it claims service_role:), else db:<role>.
--
-- The guard refuses (enforce) or reports (report) a service_role statement whose app.actor
-- does not match the pattern: a blank or whitespace actor is no actor. The capture still reads
-- everything once per statement with built-in functions only (see 009 for why).

CREATE OR REPLACE FUNCTION hardening.statement_role() RETURNS text
LANGUAGE sql STABLE
SET search_path = ''
AS $fn$
    SELECT CASE current_setting('role') WHEN 'none' THEN session_user::text
                ELSE current_setting('role') END
$fn$;

CREATE OR REPLACE FUNCTION hardening.current_actor() RETURNS text
LANGUAGE sql STABLE
SET search_path = ''
AS $fn$
    SELECT CASE
        WHEN hardening.statement_role() = 'service_role' THEN
            CASE WHEN current_setting('app.actor', true)
                      ~ '^service_role:[A-Za-z0-9._:@/+#=-]{1,200}$'
                 THEN current_setting('app.actor', true)
                 ELSE 'service_role:unattributed' END
        WHEN nullif(current_setting('request.jwt.claims', true), '') IS NOT NULL THEN
            coalesce('jwt:' || (current_setting('request.jwt.claims', true)::jsonb ->> 'sub'),
                     'db:' || hardening.statement_role())
        ELSE coalesce(nullif(pg_catalog.regexp_replace(current_setting('app.actor', true),
                                                       '^service_role:.*', ''), ''),
                      'db:' || hardening.statement_role())
    END
$fn$;

CREATE OR REPLACE FUNCTION hardening.audit_write_guard() RETURNS trigger
LANGUAGE plpgsql
SET search_path = ''
AS $fn$
BEGIN
    IF current_user = 'service_role'
       AND (coalesce(current_setting('app.actor', true), '')
                !~ '^service_role:[A-Za-z0-9._:@/+#=-]{1,200}$'
            OR current_setting('app.actor', true) = 'service_role:unattributed') THEN
        IF NOT hardening.allow_unattributed_write(TG_TABLE_NAME, TG_OP) THEN
            RAISE EXCEPTION 'service_role write to %.% without an actor is refused',
                    TG_TABLE_SCHEMA, TG_TABLE_NAME
                USING ERRCODE = 'insufficient_privilege',
                      HINT = 'Write through TenantScopedClient, which sets app.actor to '
                             'service_role:<name> (the service-role rule is in enforce mode).';
        END IF;
        PERFORM set_config('app.actor', 'service_role:unattributed', true);
    END IF;
    RETURN NULL;
END
$fn$;

-- The capture functions: 011's, with the role and actor above written out inline.
CREATE OR REPLACE FUNCTION hardening.audit_capture_insert() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = ''
AS $fn$
DECLARE
    -- hardening.statement_role(), then hardening.current_actor(), written out (see 009).
    statement_role text := CASE current_setting('role') WHEN 'none' THEN session_user::text
                                ELSE current_setting('role') END;
    statement_actor text := CASE
        WHEN statement_role = 'service_role' THEN
            CASE WHEN current_setting('app.actor', true)
                      ~ '^service_role:[A-Za-z0-9._:@/+#=-]{1,200}$'
                 THEN current_setting('app.actor', true)
                 ELSE 'service_role:unattributed' END
        WHEN nullif(current_setting('request.jwt.claims', true), '') IS NOT NULL THEN
            coalesce('jwt:' || (current_setting('request.jwt.claims', true)::jsonb ->> 'sub'),
                     'db:' || statement_role)
        ELSE coalesce(nullif(pg_catalog.regexp_replace(current_setting('app.actor', true),
                                               '^service_role:.*', ''), ''),
                      'db:' || statement_role)
    END;
    uuid_tenant boolean := TG_NARGS < 2;
BEGIN
    INSERT INTO public.audit_events
        (actor, tenant_id, table_name, operation, record_id, before, after, db_role)
    SELECT statement_actor,
           CASE WHEN uuid_tenant OR (r ->> TG_ARGV[0]) ~* '^[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}$'
                THEN (r ->> TG_ARGV[0])::uuid END,
           TG_TABLE_NAME, 'INSERT', r ->> 'id', NULL, r, statement_role
    FROM (SELECT to_jsonb(n) AS r FROM new_rows n) AS captured;
    RETURN NULL;
END
$fn$;

CREATE OR REPLACE FUNCTION hardening.audit_capture_update() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = ''
AS $fn$
DECLARE
    -- hardening.statement_role(), then hardening.current_actor(), written out (see 009).
    statement_role text := CASE current_setting('role') WHEN 'none' THEN session_user::text
                                ELSE current_setting('role') END;
    statement_actor text := CASE
        WHEN statement_role = 'service_role' THEN
            CASE WHEN current_setting('app.actor', true)
                      ~ '^service_role:[A-Za-z0-9._:@/+#=-]{1,200}$'
                 THEN current_setting('app.actor', true)
                 ELSE 'service_role:unattributed' END
        WHEN nullif(current_setting('request.jwt.claims', true), '') IS NOT NULL THEN
            coalesce('jwt:' || (current_setting('request.jwt.claims', true)::jsonb ->> 'sub'),
                     'db:' || statement_role)
        ELSE coalesce(nullif(pg_catalog.regexp_replace(current_setting('app.actor', true),
                                               '^service_role:.*', ''), ''),
                      'db:' || statement_role)
    END;
    uuid_tenant boolean := TG_NARGS < 2;
BEGIN
    -- FULL JOIN so an update that changes a primary key still leaves both images behind.
    INSERT INTO public.audit_events
        (actor, tenant_id, table_name, operation, record_id, before, after, db_role)
    SELECT statement_actor,
           CASE WHEN uuid_tenant OR (coalesce(a.r, b.r) ->> TG_ARGV[0]) ~* '^[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}$'
                THEN (coalesce(a.r, b.r) ->> TG_ARGV[0])::uuid END,
           TG_TABLE_NAME, 'UPDATE', coalesce(a.r, b.r) ->> 'id', b.r, a.r, statement_role
    FROM (SELECT to_jsonb(o) AS r FROM old_rows o) AS b
    FULL JOIN (SELECT to_jsonb(n) AS r FROM new_rows n) AS a ON (a.r ->> 'id') = (b.r ->> 'id');
    RETURN NULL;
END
$fn$;

CREATE OR REPLACE FUNCTION hardening.audit_capture_delete() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = ''
AS $fn$
DECLARE
    -- hardening.statement_role(), then hardening.current_actor(), written out (see 009).
    statement_role text := CASE current_setting('role') WHEN 'none' THEN session_user::text
                                ELSE current_setting('role') END;
    statement_actor text := CASE
        WHEN statement_role = 'service_role' THEN
            CASE WHEN current_setting('app.actor', true)
                      ~ '^service_role:[A-Za-z0-9._:@/+#=-]{1,200}$'
                 THEN current_setting('app.actor', true)
                 ELSE 'service_role:unattributed' END
        WHEN nullif(current_setting('request.jwt.claims', true), '') IS NOT NULL THEN
            coalesce('jwt:' || (current_setting('request.jwt.claims', true)::jsonb ->> 'sub'),
                     'db:' || statement_role)
        ELSE coalesce(nullif(pg_catalog.regexp_replace(current_setting('app.actor', true),
                                               '^service_role:.*', ''), ''),
                      'db:' || statement_role)
    END;
    uuid_tenant boolean := TG_NARGS < 2;
BEGIN
    INSERT INTO public.audit_events
        (actor, tenant_id, table_name, operation, record_id, before, after, db_role)
    SELECT statement_actor,
           CASE WHEN uuid_tenant OR (r ->> TG_ARGV[0]) ~* '^[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}$'
                THEN (r ->> TG_ARGV[0])::uuid END,
           TG_TABLE_NAME, 'DELETE', r ->> 'id', r, NULL, statement_role
    FROM (SELECT to_jsonb(o) AS r FROM old_rows o) AS captured;
    RETURN NULL;
END
$fn$;

-- Privileges. Every function and sequence of the kit is closed to PUBLIC and the API roles,
-- then the few that policies and the guard call are opened again: the tenant resolver (every
-- tenant policy calls it as the querying role) and the report-mode hook (the guard calls it as
-- service_role). Trigger functions need no EXECUTE to fire. A sequence open to authenticated
-- lets one setval make every audited write fail with a duplicate key (Supabase opens new
-- sequences in public to the API roles by default).
DO $close$
DECLARE
    api_roles text := (SELECT string_agg(quote_ident(r), ', ')
                       FROM unnest(ARRAY['anon', 'authenticated', 'service_role']) AS r
                       WHERE EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = r));
    grantees text := concat_ws(', ', 'PUBLIC', api_roles);
    obj record;
BEGIN
    FOR obj IN
        SELECT p.oid::regprocedure AS fn
        FROM pg_catalog.pg_proc p
        WHERE p.pronamespace = 'hardening'::regnamespace
        ORDER BY 1
    LOOP
        EXECUTE format('REVOKE ALL ON FUNCTION %s FROM %s', obj.fn, grantees);
    END LOOP;
    FOR obj IN
        SELECT c.oid::regclass AS seq
        FROM pg_catalog.pg_class c
        WHERE c.relkind = 'S'
          AND (c.relnamespace = 'hardening'::regnamespace
               OR c.oid = pg_catalog.pg_get_serial_sequence('public.audit_events', 'id')::regclass)
        ORDER BY 1
    LOOP
        EXECUTE format('REVOKE ALL ON SEQUENCE %s FROM %s', obj.seq, grantees);
    END LOOP;
    -- Default privileges a role set for this schema alone (IN SCHEMA hardening) are undone;
    -- the built-in default (EXECUTE to PUBLIC on new functions) is closed for the audit owner,
    -- and every migration revokes on what it creates, which status checks.
    FOR obj IN
        SELECT DISTINCT pg_catalog.pg_get_userbyid(d.defaclrole) AS owner
        FROM pg_catalog.pg_default_acl d
        WHERE d.defaclnamespace = 'hardening'::regnamespace
    LOOP
        EXECUTE format('ALTER DEFAULT PRIVILEGES FOR ROLE %I IN SCHEMA hardening '
                       'REVOKE ALL ON TABLES FROM %s', obj.owner, grantees);
        EXECUTE format('ALTER DEFAULT PRIVILEGES FOR ROLE %I IN SCHEMA hardening '
                       'REVOKE ALL ON SEQUENCES FROM %s', obj.owner, grantees);
        EXECUTE format('ALTER DEFAULT PRIVILEGES FOR ROLE %I IN SCHEMA hardening '
                       'REVOKE ALL ON FUNCTIONS FROM %s', obj.owner, grantees);
    END LOOP;
    ALTER DEFAULT PRIVILEGES FOR ROLE hardening_audit_owner REVOKE EXECUTE ON FUNCTIONS FROM PUBLIC;
    IF api_roles IS NOT NULL THEN
        FOR obj IN
            SELECT p.oid::regprocedure AS fn
            FROM pg_catalog.pg_proc p
            WHERE p.pronamespace = 'hardening'::regnamespace
              AND p.proname IN ('current_tenant_id', 'current_tenant_ids',
                                'membership_tenant_ids', 'as_uuid')
        LOOP
            EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO %s', obj.fn,
                           (SELECT string_agg(quote_ident(r), ', ')
                            FROM unnest(ARRAY['authenticated', 'service_role']) AS r
                            WHERE EXISTS (SELECT 1 FROM pg_catalog.pg_roles
                                          WHERE rolname = r)));
        END LOOP;
    END IF;
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'service_role') THEN
        GRANT EXECUTE ON FUNCTION hardening.allow_unattributed_write(text, text) TO service_role;
    END IF;
END
$close$;

-- No login role keeps the audit owner. 002 made a migration role that is not a superuser
-- (Supabase's postgres) a member, to hand objects over; a member can SET ROLE to the owner,
-- switch the guard off, grant itself DELETE and put everything back. What the jobs need
-- (reading the log and its sequence's high-water mark, writing seals and seal checks) is
-- granted to the migration role directly, and the membership goes. A later migration that must
-- act as the owner grants it to itself at its start and revokes it at its end, as here.
DO $membership$
DECLARE
    me text := current_user;
    member record;
BEGIN
    IF NOT (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = me) THEN
        EXECUTE format('GRANT SELECT ON public.audit_events TO %I', me);
        EXECUTE format('GRANT SELECT ON SEQUENCE public.audit_events_id_seq TO %I', me);
        EXECUTE format('GRANT SELECT, INSERT ON hardening.audit_seals TO %I', me);
        EXECUTE format('GRANT SELECT, INSERT ON hardening.audit_seal_checks TO %I', me);
        -- audit_events has RLS; a migration role without BYPASSRLS reads it through this
        -- (Supabase's postgres bypasses RLS and gets no policy).
        IF NOT (SELECT rolbypassrls FROM pg_catalog.pg_roles WHERE rolname = me)
           AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_policy
                       WHERE polrelid = 'public.audit_events'::regclass
                         AND polname = 'audit_events_jobs_read') THEN
            EXECUTE format('CREATE POLICY audit_events_jobs_read ON public.audit_events '
                           'FOR SELECT TO %I USING (true)', me);
        END IF;
    END IF;
    FOR member IN
        SELECT r.rolname
        FROM pg_catalog.pg_auth_members m
        JOIN pg_catalog.pg_roles r ON r.oid = m.member
        WHERE m.roleid = 'hardening_audit_owner'::regrole AND r.rolcanlogin
          AND (r.rolname = me OR (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = me))
        ORDER BY 1
    LOOP
        EXECUTE format('REVOKE hardening_audit_owner FROM %I', member.rolname);
    END LOOP;
END
$membership$;
