-- hardening.record_ddl: its one definition, applied again whenever the server's differs
-- (db/baseline.py). History: sql/migrations, last 016_ddl_on_the_record.sql.
--
-- ddl_command_end: one row per audited table the statement touched, directly or through a
-- type, function or inheritance (see the header).
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
