CREATE OR REPLACE FUNCTION hardening.audit_seal_checks_append_only() RETURNS trigger
LANGUAGE plpgsql
SET search_path = ''
AS $fn$
BEGIN
    RAISE EXCEPTION 'audit_seal_checks is append-only: % is not allowed', TG_OP
        USING ERRCODE = 'insufficient_privilege',
              HINT = 'A check is never changed or removed; the next verification adds a new one.';
END
$fn$;
