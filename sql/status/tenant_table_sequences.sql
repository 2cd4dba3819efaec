SELECT pg_catalog.format('%%I.%%I', sn.nspname, s.relname) AS qualified, t.relname AS tbl,
       ARRAY(SELECT role || ' ' || priv
             FROM unnest(%(roles)s::text[]) role,
                  unnest(ARRAY['USAGE', 'SELECT', 'UPDATE']) priv
             -- authenticated needs USAGE (nextval) to insert; SELECT shows every tenant's
             -- volume (last_value) and UPDATE (setval) breaks every tenant's inserts.
             WHERE NOT (role = 'authenticated' AND priv = 'USAGE')
               AND pg_catalog.has_sequence_privilege(role, s.oid, priv)
             ORDER BY 1) AS api_privileges
FROM pg_catalog.pg_class s
JOIN pg_catalog.pg_namespace sn ON sn.oid = s.relnamespace
JOIN pg_catalog.pg_depend d
  ON d.classid = 'pg_catalog.pg_class'::regclass AND d.objid = s.oid
 AND d.refclassid = 'pg_catalog.pg_class'::regclass AND d.deptype IN ('a', 'i')
JOIN pg_catalog.pg_class t ON t.oid = d.refobjid
WHERE s.relkind = 'S' AND t.oid = ANY (%(tables)s::oid[])
ORDER BY 1
