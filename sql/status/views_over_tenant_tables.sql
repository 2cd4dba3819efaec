WITH RECURSIVE view_deps AS (
    SELECT DISTINCT r.ev_class AS view_oid, d.refobjid AS dep_oid
    FROM pg_catalog.pg_rewrite r
    JOIN pg_catalog.pg_depend d
      ON d.classid = 'pg_catalog.pg_rewrite'::regclass AND d.objid = r.oid
     AND d.refclassid = 'pg_catalog.pg_class'::regclass AND d.refobjid <> r.ev_class
),
over_tenant (view_oid, base_oid) AS (
    SELECT view_oid, dep_oid FROM view_deps WHERE dep_oid = ANY (%(tables)s::oid[])
    UNION
    SELECT vd.view_oid, o.base_oid
    FROM view_deps vd JOIN over_tenant o ON vd.dep_oid = o.view_oid
)
SELECT c.oid, c.relkind, n.nspname, c.relname,
       pg_catalog.format('%%I.%%I', n.nspname, c.relname) AS qualified,
       array_agg(DISTINCT b.relname::text ORDER BY b.relname::text) AS bases,
       EXISTS (SELECT 1 FROM unnest(coalesce(c.reloptions, '{}')) opt
               WHERE opt ~* %(invoker)s) AS security_invoker,
       ARRAY(SELECT role || ' ' || priv
             FROM unnest(%(roles)s::text[]) role,
                  unnest(ARRAY['SELECT', 'INSERT', 'UPDATE', 'DELETE', 'TRUNCATE',
                               'REFERENCES', 'TRIGGER']) priv
             WHERE pg_catalog.has_table_privilege(role, c.oid, priv)
             ORDER BY 1) AS api_privileges
FROM over_tenant o
JOIN pg_catalog.pg_class c ON c.oid = o.view_oid
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
JOIN pg_catalog.pg_class b ON b.oid = o.base_oid
WHERE c.relkind IN ('v', 'm')
  AND NOT (n.nspname = ANY (%(system)s)) AND n.nspname NOT LIKE 'pg\_%%'
GROUP BY c.oid, c.relkind, n.nspname, c.relname, c.reloptions
ORDER BY n.nspname, c.relname
