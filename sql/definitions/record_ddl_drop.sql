-- sql_drop: DROP TABLE, DROP TRIGGER, DROP POLICY, DROP RULE on an audited table, named or by
-- cascade. ALTER TABLE ... DROP ... also fires here, but ddl_command_end records that
-- statement already. A dropped table is gone from the catalog by now, so it is matched by
-- name (managed by the kit) or by the capture guard it carried, under any name or schema.
CREATE OR REPLACE FUNCTION hardening.record_ddl_drop() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = ''
AS $fn$
DECLARE
    records jsonb;
BEGIN
    IF TG_TAG LIKE 'ALTER %' THEN
        RETURN;
    END IF;
    SELECT pg_catalog.jsonb_agg(
        pg_catalog.jsonb_build_object(
            'table', CASE WHEN d.schema_name = 'public' THEN d.table_name
                          ELSE d.schema_name || '.' || d.table_name END,
            'details', pg_catalog.jsonb_build_object(
                'command_tags', pg_catalog.jsonb_build_array(TG_TAG),
                'objects', d.objects,
                'owner', (SELECT pg_catalog.pg_get_userbyid(c.relowner)
                          FROM pg_catalog.pg_class c WHERE c.oid = still.rel)))
        ORDER BY CASE WHEN d.schema_name = 'public' THEN d.table_name
                      ELSE d.schema_name || '.' || d.table_name END)
    INTO records
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
       OR hardening.ddl_audited_table(still.rel) IS NOT NULL;
    -- Most DDL touches no audited table: nothing to write, no subtransaction.
    IF records IS NOT NULL THEN
        PERFORM hardening.write_ddl_records(TG_EVENT, records);
    END IF;
END
$fn$;
GRANT CREATE ON SCHEMA hardening TO hardening_audit_owner;
ALTER FUNCTION hardening.record_ddl_drop() OWNER TO hardening_audit_owner;
REVOKE CREATE ON SCHEMA hardening FROM hardening_audit_owner;
