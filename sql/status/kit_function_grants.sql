SELECT p.proname, p.oid::regprocedure::text AS fn, coalesce(r.rolname, 'PUBLIC') AS grantee,
       p.prosecdef
FROM pg_catalog.pg_proc p
CROSS JOIN LATERAL aclexplode(coalesce(p.proacl, acldefault('f', p.proowner))) x
LEFT JOIN pg_catalog.pg_roles r ON r.oid = x.grantee
WHERE p.pronamespace = 'hardening'::regnamespace
  AND coalesce(r.rolname, 'PUBLIC') = ANY(%(grantees)s)
ORDER BY 2, 3
