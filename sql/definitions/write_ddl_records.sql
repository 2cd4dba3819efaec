-- Puts DDL on the record for record_ddl and record_ddl_drop: one audit_events row per table,
-- operation DDL, with who ran it, what it was and, from each record, the table's name and the
-- details only that event knows (records: [{"table": ..., "details": {...}}, ...], in order).
-- Owned by the audit owner, like its two callers, so the migration role cannot change it.
CREATE OR REPLACE FUNCTION hardening.write_ddl_records(event text, records jsonb) RETURNS void
LANGUAGE plpgsql
SET search_path = ''
AS $fn$
DECLARE
    who record := hardening.statement_identity();
    statement text := current_query();
BEGIN
    IF pg_catalog.to_regclass('public.audit_events') IS NULL THEN
        RETURN;
    END IF;
    INSERT INTO public.audit_events
        (actor, tenant_id, table_name, operation, record_id, before, after, db_role)
    SELECT 'db:' || who.db_role, NULL, r.value ->> 'table', 'DDL', NULL, NULL,
           pg_catalog.jsonb_build_object(
               'event', event,
               'session_user', session_user,
               'statement', pg_catalog.left(statement, 4000),
               'statement_truncated', pg_catalog.length(statement) > 4000)
           || (r.value -> 'details'),
           who.db_role
    FROM pg_catalog.jsonb_array_elements(records) WITH ORDINALITY AS r
    ORDER BY r.ordinality;
EXCEPTION WHEN undefined_column OR datatype_mismatch OR check_violation
               OR not_null_violation THEN
    -- The statement changed audit_events' own columns, so no row fits any more (see 016).
    RAISE WARNING 'DDL on an audited table was not recorded: %', SQLERRM
        USING HINT = 'audit_events no longer has the columns the DDL record needs; the '
                     'audit_seal_chain status line shows what the change did to sealed rows.';
END
$fn$;
REVOKE ALL ON FUNCTION hardening.write_ddl_records(text, jsonb)
    FROM PUBLIC, anon, authenticated, service_role;
GRANT CREATE ON SCHEMA hardening TO hardening_audit_owner;
ALTER FUNCTION hardening.write_ddl_records(text, jsonb) OWNER TO hardening_audit_owner;
REVOKE CREATE ON SCHEMA hardening FROM hardening_audit_owner;
