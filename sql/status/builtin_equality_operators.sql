-- Equality as initdb defined it: an operator someone added (even one named =) proves nothing.
SELECT o.oid FROM pg_catalog.pg_operator o
WHERE o.oid = ANY (%(opnos)s::oid[]) AND o.oprname = '='
  AND o.oprnamespace = 'pg_catalog'::regnamespace AND o.oid < %(first)s
