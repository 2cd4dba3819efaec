CREATE OR REPLACE FUNCTION hardening.statement_role() RETURNS text
LANGUAGE sql STABLE
SET search_path = ''
AS $fn$
    SELECT CASE current_setting('role') WHEN 'none' THEN session_user::text
                ELSE current_setting('role') END
$fn$;
