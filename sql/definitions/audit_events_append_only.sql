CREATE OR REPLACE FUNCTION hardening.audit_events_append_only() RETURNS trigger
LANGUAGE plpgsql
SET search_path = ''
AS $fn$
BEGIN
    RAISE EXCEPTION 'audit_events is append-only: % is not allowed', TG_OP
        USING ERRCODE = 'insufficient_privilege',
              HINT = 'Audit rows are never changed or removed; write a new event instead.';
END
$fn$;
