CREATE OR REPLACE FUNCTION hardening.note_ddl_recording_installed() RETURNS void
LANGUAGE sql SECURITY DEFINER
SET search_path = ''
AS $fn$
    INSERT INTO hardening.ddl_recording_installs DEFAULT VALUES;
$fn$;
