SELECT c.oid::regclass::text AS seq, coalesce(r.rolname, 'PUBLIC') AS grantee,
       x.privilege_type,
       c.oid = pg_catalog.pg_get_serial_sequence('public.audit_events', 'id')::regclass AS audit
FROM pg_catalog.pg_class c
CROSS JOIN LATERAL aclexplode(coalesce(c.relacl, acldefault('s', c.relowner))) x
LEFT JOIN pg_catalog.pg_roles r ON r.oid = x.grantee
WHERE c.relkind = 'S'
  AND (c.relnamespace = 'hardening'::regnamespace
       OR c.oid = pg_catalog.pg_get_serial_sequence('public.audit_events', 'id')::regclass)
  AND coalesce(r.rolname, 'PUBLIC') = ANY(%(grantees)s)
ORDER BY 1, 2, 3
