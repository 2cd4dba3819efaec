CREATE OR REPLACE FUNCTION hardening.install_ddl_recording() RETURNS text
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
    IF outcome = 'installed' THEN
        PERFORM hardening.note_ddl_recording_installed();
    END IF;
    RETURN outcome;
END
$fn$;
