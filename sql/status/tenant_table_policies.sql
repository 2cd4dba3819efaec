SELECT c.oid, p.polname, p.polcmd, p.polpermissive,
       ARRAY(SELECT CASE WHEN r = 0 THEN 'PUBLIC' ELSE pg_catalog.pg_get_userbyid(r)::text END
             FROM unnest(p.polroles) r) AS roles,
       p.polqual::text AS qual, p.polwithcheck::text AS with_check,
       pg_catalog.pg_get_expr(p.polqual, p.polrelid) AS qual_sql,
       pg_catalog.pg_get_expr(p.polwithcheck, p.polrelid) AS with_check_sql,
       (SELECT a.attnum FROM pg_catalog.pg_attribute a
        WHERE a.attrelid = c.oid AND NOT a.attisdropped
          AND a.attname = CASE WHEN c.oid = pg_catalog.to_regclass('public.tenants')
                               THEN 'id' ELSE 'tenant_id' END)
           AS tenant_attnum
FROM pg_catalog.pg_policy p
JOIN pg_catalog.pg_class c ON c.oid = p.polrelid
WHERE c.oid = ANY (%(tables)s::oid[])
ORDER BY c.oid, p.polname
