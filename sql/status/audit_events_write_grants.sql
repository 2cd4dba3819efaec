SELECT coalesce(r.rolname, 'PUBLIC') AS grantee, x.privilege_type, NULL::text AS column_name
FROM pg_catalog.pg_class c
CROSS JOIN LATERAL aclexplode(coalesce(c.relacl, acldefault('r', c.relowner))) x
LEFT JOIN pg_catalog.pg_roles r ON r.oid = x.grantee
WHERE c.oid = to_regclass('public.audit_events')
  AND x.privilege_type IN ('UPDATE', 'DELETE', 'TRUNCATE')
UNION ALL
SELECT coalesce(r.rolname, 'PUBLIC'), x.privilege_type, a.attname::text
FROM pg_catalog.pg_attribute a
CROSS JOIN LATERAL aclexplode(a.attacl) x
LEFT JOIN pg_catalog.pg_roles r ON r.oid = x.grantee
WHERE a.attrelid = to_regclass('public.audit_events') AND a.attacl IS NOT NULL
  AND x.privilege_type = 'UPDATE'
ORDER BY 1, 2
