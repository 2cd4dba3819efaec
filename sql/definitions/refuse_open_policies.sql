-- Stops a migration when a policy on any of these tables applies to anon or PUBLIC: such a
-- policy keeps tenant data open whatever the kit adds (004 for public, 019 table by table).
CREATE OR REPLACE FUNCTION hardening.refuse_open_policies(targets regclass[]) RETURNS void
LANGUAGE plpgsql STABLE
SET search_path = ''
AS $fn$
DECLARE
    offending text := (
        SELECT string_agg(format('%I on %s', p.polname, p.polrelid::regclass), ', ')
        FROM pg_catalog.pg_policy p
        WHERE p.polrelid = ANY (targets)
          AND (0::oid = ANY (p.polroles)
               OR (SELECT oid FROM pg_catalog.pg_roles WHERE rolname = 'anon') = ANY (p.polroles)));
BEGIN
    IF offending IS NOT NULL THEN
        RAISE EXCEPTION 'policies apply to anon or PUBLIC and would keep tenant data open: %; nothing was changed', offending
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'Recreate each policy with TO authenticated (or drop it), then run hardening migrate again.';
    END IF;
END
$fn$;
REVOKE ALL ON FUNCTION hardening.refuse_open_policies(regclass[])
    FROM PUBLIC, anon, authenticated, service_role;
