SELECT c.oid, n.nspname || '.' || c.relname AS view
FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('v', 'm') AND n.nspname = %s
  AND NOT EXISTS (SELECT 1 FROM unnest(coalesce(c.reloptions, '{}')) o
                  WHERE lower(o) IN ('security_invoker=true', 'security_invoker=on',
                                     'security_invoker=1'))
  AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d
                  WHERE d.objid = c.oid AND d.deptype = 'e')
ORDER BY 1
