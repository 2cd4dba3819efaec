-- The actor an audit row written now would record, for anyone asking from SQL: the rule is
-- hardening.statement_identity()'s.
CREATE OR REPLACE FUNCTION hardening.current_actor() RETURNS text
LANGUAGE sql STABLE
SET search_path = ''
AS $fn$
    SELECT actor FROM hardening.statement_identity()
$fn$;
