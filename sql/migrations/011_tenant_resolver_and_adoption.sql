-- 011_tenant_resolver_and_adoption: a configurable tenant resolver that fails closed without
-- raising, unit -> development tenant consistency on adopted tables, and audit capture for
-- tables whose tenant id is not a uuid.
--
-- Tenant resolver. Policies read the tenant through hardening.current_tenant_id() (claim: one
-- tenant) or hardening.current_tenant_ids() (membership: a set), once per statement (wrapped as
-- (SELECT ...)). How it finds the tenant is kept in the one-row table
-- hardening.tenant_resolver and set with `hardening tenant-resolver`:
--   claim       the first of claim_paths present in request.jwt.claims (dotted paths; default
--               tenant_id, then app_metadata.tenant_id), as 001 always did;
--   membership  every tenant_column of membership_table whose user_column is the JWT's sub
--               (what auth.uid() returns), so a user in two tenants sees both; read as the
--               querying role, so authenticated needs SELECT on it and its RLS must let a user
--               read their own rows.
-- When request.jwt.claims is set (a PostgREST request) it wins and app.tenant_id is ignored;
-- otherwise app.tenant_id (set transaction-locally by TenantScopedClient) names the tenant.
-- A value that is not a uuid resolves to no tenant: the kit's policies see nothing and nothing
-- raises, so a query the app's own policies allow on another table keeps working.
--
-- Unit -> development consistency. 001 gives the units table it creates a composite key onto
-- developments (id, tenant_id); an adopted units table gets it here (with the UNIQUE it needs),
-- unless it already has one. 003's preflight reports misplaced units; this file checks again.
--
-- Tenant ids that are not uuids. 002's capture casts the tenant column to uuid, so every write
-- to a table whose tenant_id is text failed. Capture now keeps audit_events.tenant_id for uuid
-- tenants and records NULL there for others (the row images keep the table's own value). No
-- column is added to audit_events: its shape is part of every seal's digest.

CREATE TABLE hardening.tenant_resolver (
    singleton       boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    kind            text NOT NULL DEFAULT 'claim' CHECK (kind IN ('claim', 'membership')),
    claim_paths     text[] NOT NULL DEFAULT ARRAY['tenant_id', 'app_metadata.tenant_id']
                    CHECK (cardinality(claim_paths) > 0),
    membership_schema  text,
    membership_table   text,
    user_column        text,
    tenant_column      text,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    CHECK ((kind = 'membership') = (membership_table IS NOT NULL AND user_column IS NOT NULL
                                    AND tenant_column IS NOT NULL
                                    AND membership_schema IS NOT NULL))
);
INSERT INTO hardening.tenant_resolver DEFAULT VALUES;
REVOKE ALL ON hardening.tenant_resolver FROM PUBLIC;
-- Policies evaluate the resolver as the querying role; the settings are not secret.
GRANT SELECT ON hardening.tenant_resolver TO authenticated, service_role;

CREATE FUNCTION hardening.as_uuid(value text) RETURNS uuid
LANGUAGE sql IMMUTABLE
SET search_path = ''
AS $fn$
    SELECT CASE WHEN value ~* '^[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}$'
                THEN value::uuid END
$fn$;
REVOKE ALL ON FUNCTION hardening.as_uuid(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION hardening.as_uuid(text) TO authenticated, service_role;

-- Invoker rights on purpose: the lookup sees the membership table through the app's own
-- grants and RLS (a user may read their own memberships), so the kit never reads around them,
-- and no SECURITY DEFINER function is left for authenticated to call.
CREATE FUNCTION hardening.membership_tenant_ids() RETURNS uuid[]
LANGUAGE plpgsql STABLE
SET search_path = ''
AS $fn$
DECLARE
    r hardening.tenant_resolver;
    sub text := nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'sub';
    user_type text;
    found text[];
BEGIN
    SELECT * INTO r FROM hardening.tenant_resolver;
    IF sub IS NULL OR r.kind IS DISTINCT FROM 'membership' THEN
        RETURN '{}';
    END IF;
    SELECT format_type(a.atttypid, a.atttypmod) INTO user_type
    FROM pg_catalog.pg_attribute a
    WHERE a.attrelid = to_regclass(format('%I.%I', r.membership_schema, r.membership_table))
      AND a.attname = r.user_column AND NOT a.attisdropped;
    IF user_type IS NULL THEN
        RETURN '{}';  -- the table or column went away: fail closed
    END IF;
    IF user_type = 'uuid' THEN
        -- Compared as uuid so the membership key's index is used; a sub that is no uuid matches
        -- no one.
        IF hardening.as_uuid(sub) IS NULL THEN
            RETURN '{}';
        END IF;
        EXECUTE format('SELECT array_agg(DISTINCT m.%I::text) FROM %I.%I m WHERE m.%I = $1::uuid',
                       r.tenant_column, r.membership_schema, r.membership_table, r.user_column)
        INTO found USING sub;
    ELSE
        EXECUTE format('SELECT array_agg(DISTINCT m.%I::text) FROM %I.%I m WHERE m.%I::text = $1',
                       r.tenant_column, r.membership_schema, r.membership_table, r.user_column)
        INTO found USING sub;
    END IF;
    RETURN coalesce((SELECT array_agg(hardening.as_uuid(t)) FROM unnest(found) AS t
                     WHERE hardening.as_uuid(t) IS NOT NULL), '{}');
END
$fn$;
REVOKE ALL ON FUNCTION hardening.membership_tenant_ids() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION hardening.membership_tenant_ids() TO authenticated, service_role;

CREATE FUNCTION hardening.current_tenant_ids() RETURNS uuid[]
LANGUAGE plpgsql STABLE
SET search_path = ''
AS $fn$
DECLARE
    claims jsonb := nullif(current_setting('request.jwt.claims', true), '')::jsonb;
    r hardening.tenant_resolver;
    path text;
    value text;
BEGIN
    -- The uuid test is written out rather than calling hardening.as_uuid: a LANGUAGE sql
    -- function with SET search_path is parsed and planned again in every transaction.
    IF claims IS NULL THEN
        value := nullif(current_setting('app.tenant_id', true), '');
        RETURN CASE WHEN value ~* '^[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}$'
                    THEN ARRAY[value::uuid] ELSE '{}'::uuid[] END;
    END IF;
    SELECT * INTO r FROM hardening.tenant_resolver;
    IF r.kind = 'membership' THEN
        RETURN hardening.membership_tenant_ids();
    END IF;
    -- The first path present decides: a malformed value there is no tenant, not a fallthrough.
    FOREACH path IN ARRAY coalesce(r.claim_paths, ARRAY['tenant_id', 'app_metadata.tenant_id'])
    LOOP
        value := claims #>> string_to_array(path, '.');
        IF value IS NOT NULL THEN
            RETURN CASE WHEN value ~* '^[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}$'
                        THEN ARRAY[value::uuid] ELSE '{}'::uuid[] END;
        END IF;
    END LOOP;
    RETURN '{}';
END
$fn$;
REVOKE ALL ON FUNCTION hardening.current_tenant_ids() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION hardening.current_tenant_ids() TO authenticated, service_role;

-- The single tenant: NULL unless exactly one resolves. The kit's policies call this one while
-- the resolver is a claim (one tenant per request): the planner treats "= (SELECT ...)" as one
-- value, while "= ANY (...)" of an unknown array makes it guess several and pick worse plans
-- on tables without fresh statistics.
CREATE OR REPLACE FUNCTION hardening.current_tenant_id() RETURNS uuid
LANGUAGE plpgsql STABLE
SET search_path = ''
AS $fn$
DECLARE
    value text;
    ids uuid[];
BEGIN
    -- TenantScopedClient's path (no claims) is answered here, without a second function call.
    IF nullif(current_setting('request.jwt.claims', true), '') IS NULL THEN
        value := nullif(current_setting('app.tenant_id', true), '');
        RETURN CASE WHEN value ~* '^[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}$'
                    THEN value::uuid END;
    END IF;
    ids := hardening.current_tenant_ids();
    RETURN CASE WHEN cardinality(ids) = 1 THEN ids[1] END;
END
$fn$;

-- Switches the kit's tenant policies (named in hardening.managed_tables by 001) between the
-- one-tenant form and the set form a membership resolver needs. hardening tenant-resolver calls
-- it in the same transaction that changes the resolver.
CREATE FUNCTION hardening.use_tenant_policies(many_tenants boolean) RETURNS void
LANGUAGE plpgsql
SET search_path = ''
AS $fn$
DECLARE
    t record;
    tenant text;
BEGIN
    tenant := CASE WHEN many_tenants
                   THEN '= ANY ((SELECT hardening.current_tenant_ids())::uuid[])'
                   ELSE '= (SELECT hardening.current_tenant_id())' END;
    FOR t IN
        SELECT m.table_name, m.tenant_policy FROM hardening.managed_tables m
        WHERE m.tenant_policy IS NOT NULL AND EXISTS (
            SELECT 1 FROM pg_catalog.pg_policy p
            WHERE p.polrelid = to_regclass('public.' || quote_ident(m.table_name))
              AND p.polname = m.tenant_policy)
        ORDER BY m.table_name
    LOOP
        IF t.table_name = 'tenants' THEN
            EXECUTE format('ALTER POLICY %I ON public.tenants USING (id %s)',
                           t.tenant_policy, tenant);
        ELSE
            EXECUTE format('ALTER POLICY %I ON public.%I USING (tenant_id %s) '
                           'WITH CHECK (tenant_id %s)',
                           t.tenant_policy, t.table_name, tenant, tenant);
        END IF;
    END LOOP;
END
$fn$;
REVOKE ALL ON FUNCTION hardening.use_tenant_policies(boolean) FROM PUBLIC;

SET LOCAL lock_timeout = '10s';

DO $unit_development$
DECLARE
    n bigint;
    sample text;
    name text;
BEGIN
    IF hardening.has_foreign_key('public.units', ARRAY['development_id', 'tenant_id'],
                                 'public.developments', ARRAY['id', 'tenant_id']) THEN
        RETURN;
    END IF;
    SELECT count(*), string_agg(id::text, ', ' ORDER BY id) FILTER (WHERE rn <= 5)
    INTO n, sample
    FROM (SELECT u.id, row_number() OVER (ORDER BY u.id) AS rn
          FROM public.units u JOIN public.developments d ON d.id = u.development_id
          WHERE d.tenant_id <> u.tenant_id) s;
    IF n > 0 THEN
        RAISE EXCEPTION '% misplaced unit(s) whose development belongs to another tenant (e.g. %); nothing was changed', n, sample
            USING ERRCODE = 'check_violation',
                  HINT = 'Move each unit (and its messages) to its development''s tenant or to a development of its own tenant, then run hardening migrate again.';
    END IF;
    IF NOT hardening.has_unique('public.developments', ARRAY['id', 'tenant_id']) THEN
        name := hardening.free_name('public.developments', 'developments_id_tenant_key');
        EXECUTE format('ALTER TABLE public.developments ADD CONSTRAINT %I UNIQUE (id, tenant_id)',
                       name);
        INSERT INTO hardening.adoption_log (migration, object, action, detail)
        VALUES ('011_tenant_resolver_and_adoption.sql', 'public.developments.' || name,
                'added unique key', 'UNIQUE (id, tenant_id), which the units key below needs');
    END IF;
    name := hardening.free_name('public.units', 'units_development_tenant_fkey');
    EXECUTE format('ALTER TABLE public.units ADD CONSTRAINT %I FOREIGN KEY (development_id, tenant_id) '
                   'REFERENCES public.developments (id, tenant_id) ON DELETE RESTRICT NOT VALID',
                   name);
    EXECUTE format('ALTER TABLE public.units VALIDATE CONSTRAINT %I', name);
    INSERT INTO hardening.adoption_log (migration, object, action, detail)
    VALUES ('011_tenant_resolver_and_adoption.sql', 'public.units.' || name, 'added foreign key',
            'units (development_id, tenant_id) -> developments (id, tenant_id): a unit cannot '
            'sit in another tenant''s development');
END
$unit_development$;

-- The tenant chain above messages on adopted tables: the keys the status check requires
-- (developments, units, onboarding_attempts onto tenants) and units onto developments, often
-- ON DELETE CASCADE in an app. A key with another delete rule is rebuilt with ON DELETE RESTRICT
-- and otherwise the same definition (name, ON UPDATE, DEFERRABLE kept), a missing required one
-- is added; NOT VALID then VALIDATE, each change in hardening.adoption_log. On a database the
-- kit created, every key is already there and RESTRICT, so nothing happens.
DO $restrict$
DECLARE
    k record;
    fk record;
    definition text;
    name text;
    label text;
BEGIN
    FOR k IN
        SELECT * FROM (VALUES
            ('public.developments'::regclass, 'tenant_id', 'public.tenants'::regclass, true),
            ('public.units'::regclass, 'tenant_id', 'public.tenants'::regclass, true),
            -- Replaced when the app has it, never added: the composite key covers it.
            ('public.units'::regclass, 'development_id', 'public.developments'::regclass, false),
            ('public.onboarding_attempts'::regclass, 'tenant_id', 'public.tenants'::regclass, true)
        ) AS wanted(target, column_name, parent, add_if_missing)
    LOOP
        label := (SELECT format('%s.%s', n.nspname, c.relname) FROM pg_catalog.pg_class c
                  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = k.target);
        FOR fk IN
            SELECT c.conname, c.confdeltype, pg_catalog.pg_get_constraintdef(c.oid) AS definition
            FROM pg_catalog.pg_constraint c
            JOIN pg_catalog.pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = c.conkey[1]
            WHERE c.conrelid = k.target AND c.contype = 'f' AND c.confrelid = k.parent
              AND cardinality(c.conkey) = 1 AND a.attname = k.column_name
              AND c.confdeltype <> 'r'
            ORDER BY c.conname
        LOOP
            definition := regexp_replace(fk.definition, ' NOT VALID$', '');
            IF definition ~ ' ON DELETE (CASCADE|SET NULL|SET DEFAULT|NO ACTION)( \([^)]*\))?' THEN
                definition := regexp_replace(
                    definition, ' ON DELETE (CASCADE|SET NULL|SET DEFAULT|NO ACTION)( \([^)]*\))?',
                    ' ON DELETE RESTRICT');
            ELSIF definition ~ ' DEFERRABLE| NOT DEFERRABLE' THEN
                definition := regexp_replace(definition, '( NOT)? DEFERRABLE',
                                             ' ON DELETE RESTRICT\&');
            ELSE
                definition := definition || ' ON DELETE RESTRICT';
            END IF;
            EXECUTE format('ALTER TABLE %s DROP CONSTRAINT %I', k.target, fk.conname);
            EXECUTE format('ALTER TABLE %s ADD CONSTRAINT %I %s NOT VALID',
                           k.target, fk.conname, definition);
            EXECUTE format('ALTER TABLE %s VALIDATE CONSTRAINT %I', k.target, fk.conname);
            INSERT INTO hardening.adoption_log (migration, object, action, detail)
            VALUES ('011_tenant_resolver_and_adoption.sql', label || '.' || fk.conname,
                    'replaced foreign key', format('was %s; now %s', fk.definition, definition));
        END LOOP;
        IF k.add_if_missing AND NOT hardening.has_foreign_key(k.target, ARRAY[k.column_name],
                                                             k.parent, ARRAY['id']) THEN
            name := hardening.free_name(k.target, (SELECT relname FROM pg_catalog.pg_class
                                                   WHERE oid = k.target)
                                                  || '_' || k.column_name || '_fkey');
            EXECUTE format('ALTER TABLE %s ADD CONSTRAINT %I FOREIGN KEY (%I) REFERENCES %s (id) '
                           'ON DELETE RESTRICT NOT VALID', k.target, name, k.column_name, k.parent);
            EXECUTE format('ALTER TABLE %s VALIDATE CONSTRAINT %I', k.target, name);
            INSERT INTO hardening.adoption_log (migration, object, action, detail)
            VALUES ('011_tenant_resolver_and_adoption.sql', label || '.' || name,
                    'added foreign key',
                    format('%s -> %s (id) ON DELETE RESTRICT', k.column_name, k.parent));
        END IF;
    END LOOP;
END
$restrict$;

-- Capture: TG_ARGV[1] = 'text' marks a table whose tenant column is not a uuid. Only a value
-- that reads as a uuid lands in audit_events.tenant_id; uuid tables (one argument) are cast as
-- before (OR stops at uuid_tenant), so their rows and cost are unchanged. The test is written
-- out, not a call to hardening.as_uuid, to stay free of per-row function calls (see 009).
-- Otherwise the same functions as 009.
CREATE OR REPLACE FUNCTION hardening.audit_capture_insert() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = ''
AS $fn$
DECLARE
    -- hardening.statement_role(), then hardening.current_actor(), written out (see 009).
    statement_role text := coalesce(
        nullif(current_setting('hardening.statement_role', true), ''), session_user);
    statement_actor text := coalesce(
        nullif(current_setting('app.actor', true), ''),
        'jwt:' || (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'sub'),
        'db:' || statement_role);
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
    statement_role text := coalesce(
        nullif(current_setting('hardening.statement_role', true), ''), session_user);
    statement_actor text := coalesce(
        nullif(current_setting('app.actor', true), ''),
        'jwt:' || (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'sub'),
        'db:' || statement_role);
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
    statement_role text := coalesce(
        nullif(current_setting('hardening.statement_role', true), ''), session_user);
    statement_actor text := coalesce(
        nullif(current_setting('app.actor', true), ''),
        'jwt:' || (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'sub'),
        'db:' || statement_role);
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

-- install_audit_capture now marks a non-uuid tenant column itself, so the fix the status check
-- prints (SELECT hardening.install_audit_capture(...)) is right for every table.
CREATE OR REPLACE FUNCTION hardening.install_audit_capture(target regclass, tenant_column text)
RETURNS void
LANGUAGE plpgsql
SET search_path = ''
AS $fn$
DECLARE
    base text := (SELECT relname FROM pg_catalog.pg_class WHERE oid = target);
    tenant_type oid := (SELECT atttypid FROM pg_catalog.pg_attribute
                        WHERE attrelid = target AND attname = tenant_column AND NOT attisdropped);
    args text := CASE WHEN tenant_type = 'uuid'::regtype THEN format('%L', tenant_column)
                      ELSE format('%L, %L', tenant_column, 'text') END;
BEGIN
    IF tenant_type IS NULL THEN
        RAISE EXCEPTION '% has no column %', target, tenant_column
            USING ERRCODE = 'undefined_column';
    END IF;
    EXECUTE format('CREATE TRIGGER %I BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE ON %s '
                   'FOR EACH STATEMENT EXECUTE FUNCTION hardening.audit_write_guard()',
                   base || '_audit_guard', target);
    EXECUTE format('CREATE TRIGGER %I AFTER INSERT ON %s REFERENCING NEW TABLE AS new_rows '
                   'FOR EACH STATEMENT EXECUTE FUNCTION hardening.audit_capture_insert(%s)',
                   base || '_audit_insert', target, args);
    EXECUTE format('CREATE TRIGGER %I AFTER UPDATE ON %s '
                   'REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows '
                   'FOR EACH STATEMENT EXECUTE FUNCTION hardening.audit_capture_update(%s)',
                   base || '_audit_update', target, args);
    EXECUTE format('CREATE TRIGGER %I AFTER DELETE ON %s REFERENCING OLD TABLE AS old_rows '
                   'FOR EACH STATEMENT EXECUTE FUNCTION hardening.audit_capture_delete(%s)',
                   base || '_audit_delete', target, args);
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

-- Tables 002 already captured with the uuid cast although their tenant column is not a uuid:
-- their three row triggers are rebuilt with the marker.
DO $recapture$
DECLARE
    t record;
BEGIN
    FOR t IN
        SELECT tg.tgrelid::regclass AS rel, c.relname,
               split_part(encode(tg.tgargs, 'escape'), '\000', 1) AS tenant_column
        FROM pg_catalog.pg_trigger tg
        JOIN pg_catalog.pg_class c ON c.oid = tg.tgrelid
        JOIN pg_catalog.pg_proc p ON p.oid = tg.tgfoid
        JOIN pg_catalog.pg_namespace pn ON pn.oid = p.pronamespace
        JOIN pg_catalog.pg_attribute a ON a.attrelid = tg.tgrelid
            AND a.attname = split_part(encode(tg.tgargs, 'escape'), '\000', 1)
        WHERE pn.nspname = 'hardening' AND p.proname = 'audit_capture_insert'
          AND tg.tgnargs = 1 AND a.atttypid <> 'uuid'::regtype
        ORDER BY c.relname
    LOOP
        EXECUTE format('DROP TRIGGER %I ON %s', t.relname || '_audit_insert', t.rel);
        EXECUTE format('DROP TRIGGER %I ON %s', t.relname || '_audit_update', t.rel);
        EXECUTE format('DROP TRIGGER %I ON %s', t.relname || '_audit_delete', t.rel);
        EXECUTE format('CREATE TRIGGER %I AFTER INSERT ON %s REFERENCING NEW TABLE AS new_rows '
                       'FOR EACH STATEMENT EXECUTE FUNCTION hardening.audit_capture_insert(%L, %L)',
                       t.relname || '_audit_insert', t.rel, t.tenant_column, 'text');
        EXECUTE format('CREATE TRIGGER %I AFTER UPDATE ON %s '
                       'REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows '
                       'FOR EACH STATEMENT EXECUTE FUNCTION hardening.audit_capture_update(%L, %L)',
                       t.relname || '_audit_update', t.rel, t.tenant_column, 'text');
        EXECUTE format('CREATE TRIGGER %I AFTER DELETE ON %s REFERENCING OLD TABLE AS old_rows '
                       'FOR EACH STATEMENT EXECUTE FUNCTION hardening.audit_capture_delete(%L, %L)',
                       t.relname || '_audit_delete', t.rel, t.tenant_column, 'text');
        EXECUTE format('ALTER TABLE %s ENABLE ALWAYS TRIGGER %I', t.rel, t.relname || '_audit_insert');
        EXECUTE format('ALTER TABLE %s ENABLE ALWAYS TRIGGER %I', t.rel, t.relname || '_audit_update');
        EXECUTE format('ALTER TABLE %s ENABLE ALWAYS TRIGGER %I', t.rel, t.relname || '_audit_delete');
        INSERT INTO hardening.adoption_log (migration, object, action, detail)
        VALUES ('011_tenant_resolver_and_adoption.sql', t.rel::text, 'audit capture for text tenant',
                format('%s is not a uuid: audit_events.tenant_id is NULL for its rows unless the value reads as a uuid; the row images keep it', t.tenant_column));
    END LOOP;
END
$recapture$;
