-- The role that issued the statement, for anyone asking from SQL: the rule is
-- hardening.statement_identity()'s.
CREATE OR REPLACE FUNCTION hardening.statement_role() RETURNS text
LANGUAGE sql STABLE
SET search_path = ''
AS $fn$
    SELECT db_role FROM hardening.statement_identity()
$fn$;
