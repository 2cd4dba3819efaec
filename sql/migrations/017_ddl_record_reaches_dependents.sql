-- 017_ddl_record_reaches_dependents: DDL that changes an audited table through another object,
-- or drops one by cascade, is on the record too.
--
-- 016 recorded DDL whose own object is (or belongs to) an audited table. A table owner changes
-- tenant rows, or what the app reads as tenant rows, without touching the table itself:
--   - ALTER TYPE mood RENAME VALUE 'a' TO 'z' renames a value every row of a column holds;
--     DROP TYPE mood CASCADE (and DROP DOMAIN, DROP OWNED ... CASCADE) drops that column;
--   - CREATE TABLE elsewhere.x () INHERITS (messages), or ALTER TABLE elsewhere.x INHERIT
--     messages, makes rows nobody captures show up in every read of messages;
--   - CREATE OR REPLACE FUNCTION / DROP FUNCTION ... CASCADE on a function a trigger, policy
--     or default of an audited table calls;
--   - a table renamed, or moved to another schema, then dropped: it no longer has the name the
--     drop record matched by.
-- Here ddl_command_end also follows, for a type or function, what depends on it (one level,
-- and a type's array type), and for a table, the tables it inherits from; sql_drop also counts
-- objects dropped by cascade (except the foreign-key triggers a dropped child takes off its
-- parent), and a dropped table that carried a capture guard under any name or schema.
--
-- The statement text is what the client sent: a call when the DDL ran inside a function, cut
-- at 4000 characters, free to carry comments that say anything. So ddl_command_end's row now
-- also says what the statement left: the table's triggers that are off ("triggers_off": disabled,
-- or enabled for replica mode only) and its row security ("row_security": forced, enabled, off).
--
-- sql_drop also looked the dropped table up with to_regclass(), which raises for a schema the
-- audit owner has no USAGE on, so dropping a table in such a schema failed; the lookup now
-- reads the catalog, which needs no privilege.

DO $member$
BEGIN
    IF NOT (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user) THEN
        EXECUTE format('GRANT hardening_audit_owner TO %I', current_user);
    END IF;
END
$member$;

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

CREATE OR REPLACE FUNCTION hardening.record_ddl() RETURNS event_trigger
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

CREATE OR REPLACE FUNCTION hardening.record_ddl_drop() RETURNS event_trigger
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

GRANT CREATE ON SCHEMA hardening TO hardening_audit_owner;
ALTER FUNCTION hardening.ddl_object_table(oid, oid) OWNER TO hardening_audit_owner;
REVOKE CREATE ON SCHEMA hardening FROM hardening_audit_owner;

DO $close$
DECLARE
    grantees text := concat_ws(', ', 'PUBLIC',
        (SELECT string_agg(quote_ident(r), ', ')
         FROM unnest(ARRAY['anon', 'authenticated', 'service_role']) AS r
         WHERE EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = r)));
BEGIN
    EXECUTE format('REVOKE ALL ON FUNCTION hardening.ddl_object_table(oid, oid) FROM %s',
                   grantees);
END
$close$;

DO $member$
BEGIN
    IF NOT (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user) THEN
        EXECUTE format('REVOKE hardening_audit_owner FROM %I', current_user);
    END IF;
END
$member$;
