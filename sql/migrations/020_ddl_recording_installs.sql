-- 020_ddl_recording_installs: a record, out of the event-trigger owner's reach, of each time DDL
-- recording was installed.
--
-- 016 notes whether recording is installed in the comment on hardening.record_ddl(), and the
-- status line accepts "not installed: <why>" as the server's limit. Whoever may drop the event
-- triggers may also rewrite that comment, so the note alone cannot tell a server that never
-- allowed event triggers from one where they were installed and then removed. From here on,
-- hardening.install_ddl_recording() adds a row to hardening.ddl_recording_installs each time it
-- installs the triggers (and this file adds one now if they are installed). The table belongs
-- to the NOLOGIN audit owner and takes inserts only through hardening.note_ddl_recording_installed();
-- no role but a superuser can remove a row. The audit_ddl_recorded line is red when a row
-- exists and the triggers are gone.

DO $member$
BEGIN
    IF NOT (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user) THEN
        EXECUTE format('GRANT hardening_audit_owner TO %I', current_user);
    END IF;
END
$member$;

CREATE TABLE hardening.ddl_recording_installs (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    installed_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
    installed_by text NOT NULL DEFAULT session_user
);

CREATE FUNCTION hardening.note_ddl_recording_installed() RETURNS void
LANGUAGE sql SECURITY DEFINER
SET search_path = ''
AS $fn$
    INSERT INTO hardening.ddl_recording_installs DEFAULT VALUES;
$fn$;

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

-- Hand-over to the audit owner, as in 006 (CREATE on the schema for the one statement).
GRANT CREATE ON SCHEMA hardening TO hardening_audit_owner;
ALTER TABLE hardening.ddl_recording_installs OWNER TO hardening_audit_owner;
ALTER FUNCTION hardening.note_ddl_recording_installed() OWNER TO hardening_audit_owner;
REVOKE CREATE ON SCHEMA hardening FROM hardening_audit_owner;

DO $close$
DECLARE
    grantees text := concat_ws(', ', 'PUBLIC',
        (SELECT string_agg(quote_ident(r), ', ')
         FROM unnest(ARRAY['anon', 'authenticated', 'service_role']) AS r
         WHERE EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = r)));
BEGIN
    EXECUTE format('REVOKE ALL ON hardening.ddl_recording_installs FROM %s', grantees);
    EXECUTE format('REVOKE ALL ON FUNCTION hardening.note_ddl_recording_installed() FROM %s',
                   grantees);
    -- The role that migrates is the one that re-installs later (install_ddl_recording runs
    -- with its rights) and the one the status check usually logs in as.
    EXECUTE format('GRANT EXECUTE ON FUNCTION hardening.note_ddl_recording_installed() TO %I',
                   current_user);
    EXECUTE format('GRANT SELECT ON hardening.ddl_recording_installs TO %I', current_user);
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'service_role') THEN
        GRANT SELECT ON hardening.ddl_recording_installs TO service_role;
    END IF;
END
$close$;

-- Installed already (016 ran with a role allowed to): that is the first record.
DO $seen$
BEGIN
    IF (SELECT count(*) FROM pg_catalog.pg_event_trigger
        WHERE evtname IN ('hardening_record_ddl', 'hardening_record_ddl_drop')) = 2 THEN
        PERFORM hardening.note_ddl_recording_installed();
    END IF;
END
$seen$;

DO $member$
BEGIN
    IF NOT (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user) THEN
        EXECUTE format('REVOKE hardening_audit_owner FROM %I', current_user);
    END IF;
END
$member$;
