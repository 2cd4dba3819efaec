SELECT p.oid, n.nspname, p.proname, pg_catalog.pg_get_function_identity_arguments(p.oid) AS args
FROM pg_catalog.pg_proc p
JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
WHERE p.prosecdef AND p.prokind IN ('f', 'p')
  -- trigger functions cannot be called, only fired
  AND p.prorettype NOT IN ('pg_catalog.trigger'::regtype, 'pg_catalog.event_trigger'::regtype)
  AND NOT (n.nspname = ANY (%(system)s)) AND n.nspname NOT LIKE 'pg\_%%'
  -- a role reaches a function only through a schema it may use
  AND pg_catalog.has_schema_privilege(%(role)s, n.oid, 'USAGE')
  AND pg_catalog.has_function_privilege(%(role)s, p.oid, 'EXECUTE')
  AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d
                  WHERE d.objid = p.oid AND d.deptype = 'e')
ORDER BY 2, 3, 4
