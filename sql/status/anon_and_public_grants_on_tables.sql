SELECT c.oid, coalesce(r.rolname, 'PUBLIC') AS grantee, x.privilege_type,
       NULL::text AS column_name
FROM pg_catalog.pg_class c
CROSS JOIN LATERAL aclexplode(c.relacl) x
LEFT JOIN pg_catalog.pg_roles r ON r.oid = x.grantee
WHERE c.oid = ANY (%(tables)s::oid[]) AND (x.grantee = 0 OR r.rolname = 'anon')
UNION ALL
SELECT c.oid, coalesce(r.rolname, 'PUBLIC'), x.privilege_type, a.attname::text
FROM pg_catalog.pg_attribute a
JOIN pg_catalog.pg_class c ON c.oid = a.attrelid
CROSS JOIN LATERAL aclexplode(a.attacl) x
LEFT JOIN pg_catalog.pg_roles r ON r.oid = x.grantee
WHERE c.oid = ANY (%(tables)s::oid[]) AND a.attacl IS NOT NULL
  AND (x.grantee = 0 OR r.rolname = 'anon')
ORDER BY 1, 2, 3
