-- hardening.record_ddl_drop: its one definition, applied again whenever the server's differs
-- (db/baseline.py). History: sql/migrations, last 016_ddl_on_the_record.sql.
--
-- sql_drop: DROP TABLE, DROP TRIGGER, DROP POLICY, DROP RULE on an audited table, named or by
-- cascade. ALTER TABLE ... DROP ... also fires here, but ddl_command_end records that
-- statement already. A dropped table is gone from the catalog by now, so it is matched by
-- name (managed by the kit) or by the capture guard it carried, under any name or schema.
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
