SELECT s.name,
       n.oid IS NOT NULL AS present,
       n.oid IS NOT NULL AND EXISTS (
           SELECT 1 FROM unnest(%(roles)s::text[]) role
           WHERE EXISTS (SELECT 1 FROM pg_catalog.pg_roles r WHERE r.rolname = role)
             AND pg_catalog.has_schema_privilege(role, n.oid, 'USAGE')) AS api_usable
FROM unnest(%(names)s::text[]) WITH ORDINALITY AS s(name, pos)
LEFT JOIN pg_catalog.pg_namespace n ON n.nspname = s.name
ORDER BY s.pos
