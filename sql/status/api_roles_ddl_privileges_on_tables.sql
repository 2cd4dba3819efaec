SELECT role, c.oid, priv
FROM pg_catalog.pg_class c
CROSS JOIN unnest(%(roles)s::text[]) role
CROSS JOIN unnest(ARRAY['TRIGGER', 'TRUNCATE', 'REFERENCES']) priv
WHERE c.oid = ANY (%(tables)s::oid[])
  -- CASE, not AND: has_table_privilege raises for a role that does not exist.
  AND CASE WHEN EXISTS (SELECT 1 FROM pg_catalog.pg_roles r WHERE r.rolname = role)
           THEN pg_catalog.has_table_privilege(role, c.oid, priv) END
ORDER BY 1, 2, 3
