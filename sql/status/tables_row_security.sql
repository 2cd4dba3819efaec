SELECT c.oid, c.relname, c.relrowsecurity, c.relforcerowsecurity,
       EXISTS (SELECT 1 FROM pg_catalog.pg_policy p WHERE p.polrelid = c.oid) AS has_policy,
       EXISTS (SELECT 1 FROM pg_catalog.pg_attribute a WHERE a.attrelid = c.oid
               AND a.attname = 'tenant_id' AND NOT a.attisdropped) AS tenant_scoped,
       (has_table_privilege('authenticated', c.oid, 'SELECT, INSERT, UPDATE, DELETE')
        OR has_table_privilege('anon', c.oid, 'SELECT, INSERT, UPDATE, DELETE'))
           AS api_facing,
       n.nspname
FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p') AND NOT (n.nspname = ANY (%s))
  AND n.nspname NOT LIKE 'pg\_%%'
  AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d
                  WHERE d.objid = c.oid AND d.deptype = 'e')
ORDER BY n.nspname, c.relname
