SELECT r.rulename, r.is_instead,
       (SELECT pg_catalog.format('%%I.%%I', n.nspname, c.relname)
        FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
        WHERE c.oid = r.ev_class) AS on_rel,
       CASE r.ev_type WHEN '1' THEN 'SELECT' WHEN '2' THEN 'UPDATE' WHEN '3' THEN 'INSERT'
                      ELSE 'DELETE' END AS event,
       pg_catalog.format('%%I', r.rulename) AS quoted,
       ARRAY(SELECT DISTINCT d.refobjid::regclass::text
             FROM pg_catalog.pg_depend d
             WHERE d.classid = 'pg_catalog.pg_rewrite'::regclass AND d.objid = r.oid
               AND d.refclassid = 'pg_catalog.pg_class'::regclass
               AND d.refobjid = ANY (%(tables)s::oid[])
               AND d.refobjid <> r.ev_class) AS touches
FROM pg_catalog.pg_rewrite r
WHERE r.rulename <> '_RETURN'
  AND (r.ev_class = ANY (%(tables)s::oid[])
       OR EXISTS (SELECT 1 FROM pg_catalog.pg_depend d
                  WHERE d.classid = 'pg_catalog.pg_rewrite'::regclass AND d.objid = r.oid
                    AND d.refclassid = 'pg_catalog.pg_class'::regclass
                    AND d.refobjid = ANY (%(tables)s::oid[])))
ORDER BY 3, 1
