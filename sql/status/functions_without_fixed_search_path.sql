SELECT n.nspname || '.' || p.proname
       || '(' || pg_catalog.pg_get_function_identity_arguments(p.oid) || ')' AS fn
FROM pg_catalog.pg_proc p
JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
WHERE NOT (n.nspname = ANY (%s)) AND n.nspname NOT LIKE 'pg\_%%'
  AND p.prosecdef = %s
  AND p.prokind IN ('f', 'p')
  AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d
                  WHERE d.objid = p.oid AND d.deptype = 'e')
  AND NOT EXISTS (SELECT 1 FROM unnest(coalesce(p.proconfig, '{}')) cfg
                  WHERE cfg LIKE 'search\_path=%%')
ORDER BY 1
