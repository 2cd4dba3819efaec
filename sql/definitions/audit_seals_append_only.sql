CREATE OR REPLACE FUNCTION hardening.audit_seals_append_only() RETURNS trigger
LANGUAGE plpgsql
SET search_path = ''
AS $fn$
BEGIN
    RAISE EXCEPTION 'audit_seals is append-only: % is not allowed', TG_OP
        USING ERRCODE = 'insufficient_privilege',
              HINT = 'A seal is never changed or removed; the next sealing run adds a new one.';
END
$fn$;
