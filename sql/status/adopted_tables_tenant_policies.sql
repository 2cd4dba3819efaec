SELECT m.table_name, m.tenant_policy, p.polpermissive
FROM hardening.managed_tables m
LEFT JOIN pg_catalog.pg_policy p
    ON p.polrelid = pg_catalog.to_regclass('public.' || quote_ident(m.table_name))
   AND p.polname = m.tenant_policy
WHERE NOT m.created_by_kit AND m.rls_was_enabled
ORDER BY m.table_name
