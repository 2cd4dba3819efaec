-- hardening.note_ddl_recording_installed: its one definition, applied again whenever the server's differs
-- (db/baseline.py). History: sql/migrations, last 020_ddl_recording_installs.sql.
CREATE OR REPLACE FUNCTION hardening.note_ddl_recording_installed() RETURNS void
LANGUAGE sql SECURITY DEFINER
SET search_path = ''
AS $fn$
    INSERT INTO hardening.ddl_recording_installs DEFAULT VALUES;
$fn$;
