SELECT pg_catalog.pg_get_userbyid(d.defaclrole) AS owner, d.defaclobjtype AS kind,
       coalesce(r.rolname, 'PUBLIC') AS grantee
FROM pg_catalog.pg_default_acl d
CROSS JOIN LATERAL aclexplode(d.defaclacl) x
LEFT JOIN pg_catalog.pg_roles r ON r.oid = x.grantee
WHERE d.defaclnamespace = 'hardening'::regnamespace
  AND coalesce(r.rolname, 'PUBLIC') = ANY(%(grantees)s)
ORDER BY 1, 2, 3
