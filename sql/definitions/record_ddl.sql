-- ddl_command_end: one row per audited table the statement touched, directly or through a
-- type, function or inheritance (016_ddl_on_the_record.sql says what is recorded and why).
CREATE OR REPLACE FUNCTION hardening.record_ddl() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = ''
AS $fn$
DECLARE
    records jsonb;
BEGIN
    SELECT pg_catalog.jsonb_agg(
        pg_catalog.jsonb_build_object(
            'table', CASE WHEN n.nspname = 'public' THEN c.relname
                          ELSE n.nspname || '.' || c.relname END,
            'details', pg_catalog.jsonb_build_object(
                'command_tags', touched.tags,
                'objects', touched.objects,
                'owner', pg_catalog.pg_get_userbyid(c.relowner),
                'triggers_off', (SELECT coalesce(pg_catalog.jsonb_agg(t.tgname ORDER BY t.tgname),
                                                 '[]'::jsonb)
                                 FROM pg_catalog.pg_trigger t
                                 WHERE t.tgrelid = c.oid AND NOT t.tgisinternal
                                   AND t.tgenabled IN ('D', 'R')),
                'row_security', CASE WHEN c.relforcerowsecurity THEN 'forced'
                                     WHEN c.relrowsecurity THEN 'enabled' ELSE 'off' END))
        ORDER BY c.oid)
    INTO records
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
    JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace;
    -- Most DDL touches no audited table: nothing to write, no subtransaction.
    IF records IS NOT NULL THEN
        PERFORM hardening.write_ddl_records(TG_EVENT, records);
    END IF;
END
$fn$;
GRANT CREATE ON SCHEMA hardening TO hardening_audit_owner;
ALTER FUNCTION hardening.record_ddl() OWNER TO hardening_audit_owner;
REVOKE CREATE ON SCHEMA hardening FROM hardening_audit_owner;
