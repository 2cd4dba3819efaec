CREATE OR REPLACE FUNCTION hardening.note_ddl_recording_installed() RETURNS void
LANGUAGE sql SECURITY DEFINER
SET search_path = ''
AS $fn$
    INSERT INTO hardening.ddl_recording_installs DEFAULT VALUES;
$fn$;
GRANT CREATE ON SCHEMA hardening TO hardening_audit_owner;
ALTER FUNCTION hardening.note_ddl_recording_installed() OWNER TO hardening_audit_owner;
REVOKE CREATE ON SCHEMA hardening FROM hardening_audit_owner;
