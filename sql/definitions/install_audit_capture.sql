CREATE OR REPLACE FUNCTION hardening.install_audit_capture(target regclass, tenant_column text)
RETURNS void
LANGUAGE plpgsql
SET search_path = ''
AS $fn$
DECLARE
    base text := (SELECT relname FROM pg_catalog.pg_class WHERE oid = target);
    args text := hardening.audit_capture_arguments(target, tenant_column);
BEGIN
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
