-- 016_ddl_on_the_record: DDL on the audit log and on tenant tables leaves an audit row.
--
-- The capture triggers see rows written by INSERT, UPDATE, DELETE and TRUNCATE. A table owner
-- changes rows without any of them: `ALTER TABLE messages ALTER COLUMN body TYPE text USING 'x'`
-- rewrites every row, and `ALTER TABLE messages DISABLE TRIGGER USER` switches capture off for
-- the DELETE that follows. Both are DDL, which an event trigger sees. Here one does, and
-- records each DDL statement that touches an audited table as one row of audit_events:
--
--   operation   'DDL'
--   table_name  the table (schema-qualified outside public)
--   actor       'db:' || the statement's role (the `role` setting, else session_user: the
--               same rule as the capture, 015; no custom setting is read)
--   db_role     that role
--   after       {"event", "command_tags", "objects", "owner", "session_user", "statement",
--                "statement_truncated", "triggers_off", "row_security"}: the statement is
--               current_query(), cut at 4000 characters; owner is the table's owner when the
--               statement ended; the last two (ddl_command_end only) say what the statement
--               left: the table's triggers that are off (disabled, or enabled for replica mode
--               only) and its row security (forced, enabled, off). The statement text is what
--               the client sent: a call when the DDL ran inside a function, cut, free to carry
--               comments that say anything; these two keys do not depend on it.
--
-- Audited tables: public.audit_events, hardening.audit_seals and hardening.audit_seal_checks,
-- the tables in hardening.managed_tables, every table in public with a tenant_id column, and
-- any table carrying the kit's capture triggers. DDL on anything else costs one catalog lookup
-- and writes nothing.
--
-- A table owner also changes tenant rows, or what the app reads as tenant rows, without
-- naming the table:
--   - ALTER TYPE mood RENAME VALUE 'a' TO 'z' renames a value every row of a column holds;
--     DROP TYPE mood CASCADE (and DROP DOMAIN, DROP OWNED ... CASCADE) drops that column;
--   - CREATE TABLE elsewhere.x () INHERITS (messages), or ALTER TABLE elsewhere.x INHERIT
--     messages, makes rows nobody captures show up in every read of messages;
--   - CREATE OR REPLACE FUNCTION / DROP FUNCTION ... CASCADE on a function a trigger, policy
--     or default of an audited table calls;
--   - a table renamed, or moved to another schema, then dropped: it no longer has the name the
--     drop record matches by.
-- So ddl_command_end also follows, for a type or function, what depends on it (one level, and
-- a type's array type), and for a table, the tables it inherits from; sql_drop also counts
-- objects dropped by cascade (except the foreign-key triggers a dropped child takes off its
-- parent), and a dropped table that carried a capture guard under any name or schema. Dropped
-- tables are looked up in the catalog, not with to_regclass(), which raises for a schema the
-- audit owner has no USAGE on. DDL on event triggers themselves is invisible to event triggers
-- (Postgres does not fire them for it); the status line audit_ddl_recorded covers that.
--
-- Creating an event trigger needs a superuser (or, on Supabase, supautils' privileged role).
-- hardening.install_ddl_recording() tries, and writes what happened into the comment on
-- hardening.record_ddl(): "installed", or "not installed: <why>". A migration role that may
-- not create event triggers still migrates; status then says DDL is not recorded. A superuser
-- can install it later with SELECT hardening.install_ddl_recording().
--
-- The functions are SECURITY DEFINER and owned by the NOLOGIN audit owner, which alone may
-- insert into audit_events. A failure to record DDL on an audited table fails that statement
-- (DDL that cannot be put on the record does not happen), except when the statement reshaped
-- audit_events' own columns so that no record fits (a warning; the seals catch that change);
-- DDL elsewhere never reaches the insert. The per-row capture path is not touched.
--
-- Also here (see the block at the end): on PG16, a migration role that is not a superuser gets
-- SET on the API roles it created, so TenantScopedClient works on its login.

-- A migration role that is not a superuser acts through the audit owner for the length of this
-- file (015 took the membership away; it is taken away again at the end).
DO $member$
BEGIN
    IF NOT (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user) THEN
        EXECUTE format('GRANT hardening_audit_owner TO %I', current_user);
    END IF;
END
$member$;

-- The row shape for operation 'DDL': no before image, the statement in after.
ALTER TABLE public.audit_events DROP CONSTRAINT audit_events_images_match_operation;
ALTER TABLE public.audit_events ADD CONSTRAINT audit_events_images_match_operation CHECK (
    (operation = 'INSERT' AND before IS NULL AND after IS NOT NULL)
    OR (operation = 'UPDATE' AND (before IS NOT NULL OR after IS NOT NULL))
    OR (operation = 'DELETE' AND before IS NOT NULL AND after IS NULL)
    OR (operation = 'TRUNCATE' AND before IS NULL AND after IS NULL)
    OR (operation = 'DDL' AND before IS NULL AND after IS NOT NULL)
);

-- Is this relation one whose DDL goes on the record? Indexes, sequences and TOAST tables count
-- as the table they belong to.
CREATE FUNCTION hardening.ddl_audited_table(rel oid) RETURNS oid
LANGUAGE sql STABLE
SET search_path = ''
AS $fn$
    WITH owning AS (
        SELECT coalesce(
            (SELECT i.indrelid FROM pg_catalog.pg_index i WHERE i.indexrelid = rel),
            (SELECT d.refobjid FROM pg_catalog.pg_depend d
             WHERE d.classid = 'pg_catalog.pg_class'::regclass AND d.objid = rel
               AND d.refclassid = 'pg_catalog.pg_class'::regclass AND d.refobjsubid > 0
               AND d.deptype IN ('a', 'i')
             LIMIT 1),
            (SELECT c.oid FROM pg_catalog.pg_class c WHERE c.reltoastrelid = rel),
            rel) AS oid
    )
    SELECT c.oid
    FROM owning o
    JOIN pg_catalog.pg_class c ON c.oid = o.oid
    JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
    WHERE (n.nspname = 'public' AND c.relname = 'audit_events')
       OR (n.nspname = 'hardening' AND c.relname IN ('audit_seals', 'audit_seal_checks'))
       OR (n.nspname = 'public' AND c.relkind IN ('r', 'p')
           AND (EXISTS (SELECT 1 FROM hardening.managed_tables m WHERE m.table_name = c.relname)
                OR EXISTS (SELECT 1 FROM pg_catalog.pg_attribute a
                           WHERE a.attrelid = c.oid AND a.attname = 'tenant_id'
                             AND NOT a.attisdropped)))
       OR EXISTS (SELECT 1 FROM pg_catalog.pg_trigger t
                  JOIN pg_catalog.pg_proc p ON p.oid = t.tgfoid
                  JOIN pg_catalog.pg_namespace pn ON pn.oid = p.pronamespace
                  WHERE t.tgrelid = c.oid AND pn.nspname = 'hardening'
                    AND p.proname IN ('audit_write_guard', 'audit_capture_insert',
                                      'audit_capture_update', 'audit_capture_delete',
                                      'audit_capture_truncate'))
$fn$;

-- The relation an object of the given catalog belongs to (a table, index, trigger, policy,
-- constraint, rule or column default), or NULL.
CREATE FUNCTION hardening.ddl_object_table(catalog oid, object oid) RETURNS oid
LANGUAGE sql STABLE
SET search_path = ''
AS $fn$
    SELECT CASE
        WHEN catalog = 'pg_catalog.pg_class'::regclass THEN object
        WHEN catalog = 'pg_catalog.pg_trigger'::regclass THEN
            (SELECT t.tgrelid FROM pg_catalog.pg_trigger t WHERE t.oid = object)
        WHEN catalog = 'pg_catalog.pg_policy'::regclass THEN
            (SELECT p.polrelid FROM pg_catalog.pg_policy p WHERE p.oid = object)
        WHEN catalog = 'pg_catalog.pg_constraint'::regclass THEN
            (SELECT k.conrelid FROM pg_catalog.pg_constraint k WHERE k.oid = object)
        WHEN catalog = 'pg_catalog.pg_rewrite'::regclass THEN
            (SELECT r.ev_class FROM pg_catalog.pg_rewrite r WHERE r.oid = object)
        WHEN catalog = 'pg_catalog.pg_attrdef'::regclass THEN
            (SELECT a.adrelid FROM pg_catalog.pg_attrdef a WHERE a.oid = object)
    END
$fn$;

-- ddl_command_end: one row per audited table the statement touched, directly or through a
-- type, function or inheritance (see the header).
CREATE FUNCTION hardening.record_ddl() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = ''
AS $fn$
DECLARE
    statement_role text := CASE current_setting('role') WHEN 'none' THEN session_user::text
                                ELSE current_setting('role') END;
    statement text := current_query();
BEGIN
    IF pg_catalog.to_regclass('public.audit_events') IS NULL THEN
        RETURN;
    END IF;
    INSERT INTO public.audit_events
        (actor, tenant_id, table_name, operation, record_id, before, after, db_role)
    SELECT 'db:' || statement_role, NULL,
           CASE WHEN n.nspname = 'public' THEN c.relname ELSE n.nspname || '.' || c.relname END,
           'DDL', NULL, NULL,
           pg_catalog.jsonb_build_object(
               'event', TG_EVENT,
               'command_tags', touched.tags,
               'objects', touched.objects,
               'owner', pg_catalog.pg_get_userbyid(c.relowner),
               'session_user', session_user,
               'statement', pg_catalog.left(statement, 4000),
               'statement_truncated', pg_catalog.length(statement) > 4000,
               'triggers_off', (SELECT coalesce(pg_catalog.jsonb_agg(t.tgname ORDER BY t.tgname),
                                                '[]'::jsonb)
                                FROM pg_catalog.pg_trigger t
                                WHERE t.tgrelid = c.oid AND NOT t.tgisinternal
                                  AND t.tgenabled IN ('D', 'R')),
               'row_security', CASE WHEN c.relforcerowsecurity THEN 'forced'
                                    WHEN c.relrowsecurity THEN 'enabled' ELSE 'off' END),
           statement_role
    FROM (
        SELECT audited.rel,
               pg_catalog.jsonb_agg(DISTINCT cmd.command_tag) AS tags,
               pg_catalog.jsonb_agg(DISTINCT cmd.object_identity) AS objects
        FROM pg_catalog.pg_event_trigger_ddl_commands() cmd
        CROSS JOIN LATERAL (
            SELECT hardening.ddl_object_table(cmd.classid, cmd.objid) AS rel
            UNION
            -- A type or function: the columns, triggers, policies and defaults that use it.
            -- Not for a table: every foreign key pointing at it would count as touched.
            SELECT hardening.ddl_object_table(d.classid, d.objid)
            FROM pg_catalog.pg_depend d
            WHERE cmd.classid IN ('pg_catalog.pg_type'::regclass, 'pg_catalog.pg_proc'::regclass)
              AND d.refclassid = cmd.classid
              AND d.deptype = 'n'
              AND (d.refobjid = cmd.objid
                   OR d.refobjid = (SELECT ty.typarray FROM pg_catalog.pg_type ty
                                    WHERE cmd.classid = 'pg_catalog.pg_type'::regclass
                                      AND ty.oid = cmd.objid))
            UNION
            -- A table that now inherits from (or is a partition of) an audited table.
            SELECT i.inhparent
            FROM pg_catalog.pg_inherits i
            WHERE cmd.classid = 'pg_catalog.pg_class'::regclass AND i.inhrelid = cmd.objid
        ) candidate
        CROSS JOIN LATERAL (SELECT hardening.ddl_audited_table(candidate.rel) AS rel) audited
        WHERE audited.rel IS NOT NULL
        GROUP BY audited.rel
    ) touched
    JOIN pg_catalog.pg_class c ON c.oid = touched.rel
    JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
    ORDER BY c.oid;
EXCEPTION WHEN undefined_column OR datatype_mismatch OR check_violation
               OR not_null_violation THEN
    -- The statement changed audit_events' own columns, so no row fits any more (see 016).
    RAISE WARNING 'DDL on an audited table was not recorded: %', SQLERRM
        USING HINT = 'audit_events no longer has the columns the DDL record needs; the '
                     'audit_seal_chain status line shows what the change did to sealed rows.';
END
$fn$;

-- sql_drop: DROP TABLE, DROP TRIGGER, DROP POLICY, DROP RULE on an audited table, named or by
-- cascade. ALTER TABLE ... DROP ... also fires here, but ddl_command_end records that
-- statement already. A dropped table is gone from the catalog by now, so it is matched by
-- name (managed by the kit) or by the capture guard it carried, under any name or schema.
CREATE FUNCTION hardening.record_ddl_drop() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = ''
AS $fn$
DECLARE
    statement_role text := CASE current_setting('role') WHEN 'none' THEN session_user::text
                                ELSE current_setting('role') END;
    statement text := current_query();
BEGIN
    IF TG_TAG LIKE 'ALTER %' OR pg_catalog.to_regclass('public.audit_events') IS NULL THEN
        RETURN;
    END IF;
    INSERT INTO public.audit_events
        (actor, tenant_id, table_name, operation, record_id, before, after, db_role)
    SELECT 'db:' || statement_role, NULL,
           CASE WHEN d.schema_name = 'public' THEN d.table_name
                ELSE d.schema_name || '.' || d.table_name END,
           'DDL', NULL, NULL,
           pg_catalog.jsonb_build_object(
               'event', TG_EVENT,
               'command_tags', pg_catalog.jsonb_build_array(TG_TAG),
               'objects', d.objects,
               'owner', (SELECT pg_catalog.pg_get_userbyid(c.relowner)
                         FROM pg_catalog.pg_class c WHERE c.oid = still.rel),
               'session_user', session_user,
               'statement', pg_catalog.left(statement, 4000),
               'statement_truncated', pg_catalog.length(statement) > 4000),
           statement_role
    FROM (
        SELECT o.address_names[1] AS schema_name, o.address_names[2] AS table_name,
               pg_catalog.jsonb_agg(o.object_type || ' ' || o.object_identity
                                    ORDER BY o.object_type, o.object_identity) AS objects,
               -- The guard keeps the name it was created with when its table is renamed.
               pg_catalog.bool_or(o.object_type = 'trigger'
                                  AND o.address_names[3] LIKE '%\_audit\_guard')
                   AS had_capture
        FROM pg_catalog.pg_event_trigger_dropped_objects() o
        WHERE o.object_type IN ('table', 'table column', 'trigger', 'policy', 'rule',
                                'table constraint')
          AND pg_catalog.array_length(o.address_names, 1) >= 2
        GROUP BY 1, 2
        -- The statement named this table or one of its objects, or dropped something of it by
        -- cascade; not the foreign-key triggers on a parent a dropped child takes with it.
        HAVING pg_catalog.bool_or(o.original
                                  OR NOT (o.object_type = 'trigger'
                                          AND o.address_names[3] LIKE 'RI\_ConstraintTrigger%'))
    ) d
    -- The table when it still exists (a trigger, policy, rule or column went), by catalog
    -- lookup: to_regclass() raises for a schema the audit owner may not use.
    CROSS JOIN LATERAL (
        SELECT (SELECT c.oid FROM pg_catalog.pg_class c
                JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                WHERE n.nspname = d.schema_name AND c.relname = d.table_name) AS rel
    ) still
    WHERE d.had_capture
       OR (d.schema_name = 'public'
           AND EXISTS (SELECT 1 FROM hardening.managed_tables m
                       WHERE m.table_name = d.table_name))
       OR hardening.ddl_audited_table(still.rel) IS NOT NULL
    ORDER BY 3;
EXCEPTION WHEN undefined_column OR datatype_mismatch OR check_violation
               OR not_null_violation THEN
    RAISE WARNING 'DDL on an audited table was not recorded: %', SQLERRM
        USING HINT = 'audit_events no longer has the columns the DDL record needs; the '
                     'audit_seal_chain status line shows what the change did to sealed rows.';
END
$fn$;

-- Creates (or re-creates) both event triggers, ENABLE ALWAYS so session_replication_role =
-- replica does not skip them, and notes the outcome on hardening.record_ddl(). Invoker rights:
-- only a role allowed to create event triggers gets "installed".
CREATE FUNCTION hardening.install_ddl_recording() RETURNS text
LANGUAGE plpgsql
SET search_path = ''
AS $fn$
DECLARE
    outcome text;
BEGIN
    BEGIN
        DROP EVENT TRIGGER IF EXISTS hardening_record_ddl;
        DROP EVENT TRIGGER IF EXISTS hardening_record_ddl_drop;
        CREATE EVENT TRIGGER hardening_record_ddl ON ddl_command_end
            EXECUTE FUNCTION hardening.record_ddl();
        CREATE EVENT TRIGGER hardening_record_ddl_drop ON sql_drop
            EXECUTE FUNCTION hardening.record_ddl_drop();
        ALTER EVENT TRIGGER hardening_record_ddl ENABLE ALWAYS;
        ALTER EVENT TRIGGER hardening_record_ddl_drop ENABLE ALWAYS;
        outcome := 'installed';
    EXCEPTION WHEN insufficient_privilege THEN
        outcome := format('not installed: the migration role %s may not create event triggers '
                          '(it is not a superuser)', current_user);
    END;
    EXECUTE format('COMMENT ON FUNCTION hardening.record_ddl() IS %L', outcome);
    RETURN outcome;
END
$fn$;

-- The recording functions belong to the audit owner (the one role that may insert audit rows);
-- it needs to read the list of tables the kit manages. CREATE on the schema for the hand-over
-- only, as in 002.
GRANT SELECT ON hardening.managed_tables TO hardening_audit_owner;
GRANT CREATE ON SCHEMA hardening TO hardening_audit_owner;
ALTER FUNCTION hardening.ddl_audited_table(oid) OWNER TO hardening_audit_owner;
ALTER FUNCTION hardening.ddl_object_table(oid, oid) OWNER TO hardening_audit_owner;
ALTER FUNCTION hardening.record_ddl() OWNER TO hardening_audit_owner;
ALTER FUNCTION hardening.record_ddl_drop() OWNER TO hardening_audit_owner;
REVOKE CREATE ON SCHEMA hardening FROM hardening_audit_owner;

DO $close$
DECLARE
    grantees text := concat_ws(', ', 'PUBLIC',
        (SELECT string_agg(quote_ident(r), ', ')
         FROM unnest(ARRAY['anon', 'authenticated', 'service_role']) AS r
         WHERE EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = r)));
BEGIN
    EXECUTE format('REVOKE ALL ON FUNCTION hardening.ddl_audited_table(oid), '
                   'hardening.ddl_object_table(oid, oid), '
                   'hardening.record_ddl(), hardening.record_ddl_drop(), '
                   'hardening.install_ddl_recording() FROM %s', grantees);
END
$close$;

SELECT hardening.install_ddl_recording();

-- PG16 changed CREATEROLE: a role created by a non-superuser is granted to its creator WITH
-- ADMIN OPTION only, without SET or INHERIT. A migration role that created anon, authenticated
-- and service_role in 001 could then not SET ROLE to them, which TenantScopedClient does on the
-- same login. It may grant itself that (it holds ADMIN, so this adds no power): SET only, no
-- INHERIT, the way Supabase's postgres holds them. Earlier versions and superusers: nothing.
DO $api_roles$
DECLARE
    r text;
BEGIN
    IF current_setting('server_version_num')::int < 160000
       OR (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user) THEN
        RETURN;
    END IF;
    FOREACH r IN ARRAY ARRAY['anon', 'authenticated', 'service_role'] LOOP
        IF EXISTS (SELECT 1 FROM pg_catalog.pg_auth_members m
                   WHERE m.roleid = (SELECT oid FROM pg_catalog.pg_roles WHERE rolname = r)
                     AND m.member = (SELECT oid FROM pg_catalog.pg_roles
                                     WHERE rolname = current_user)
                     AND m.admin_option)
           AND NOT pg_catalog.pg_has_role(current_user, r, 'SET') THEN
            EXECUTE format('GRANT %I TO %I WITH INHERIT FALSE, SET TRUE', r, current_user);
        END IF;
    END LOOP;
END
$api_roles$;

DO $member$
BEGIN
    IF NOT (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user) THEN
        EXECUTE format('REVOKE hardening_audit_owner FROM %I', current_user);
    END IF;
END
$member$;
