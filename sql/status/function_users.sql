-- What calls a function as the querying role, and which of the roles a fix could touch need
-- EXECUTE for it to keep working. From the dependencies Postgres itself records: a policy's roles
-- (RLS is not evaluated for BYPASSRLS roles), who may read a view, who may insert (a column
-- default) or write (a CHECK, a trigger's WHEN), who may execute a function with a SQL-standard
-- body. And, since SQL and PL/pgSQL bodies are stored as text, bodies that name it (by_name): a
-- trigger function runs as whoever writes its tables, any other as whoever may execute it. A name
-- found there only makes the fix more careful; it never turns a line green.
SELECT d.refobjid AS fn,
       CASE d.classid
           WHEN 'pg_catalog.pg_policy'::regclass THEN
               (SELECT pg_catalog.format('policy %%I on %%s (to %%s)', p.polname,
                                         p.polrelid::regclass,
                                         array_to_string(ARRAY(
                                             SELECT CASE WHEN r = 0 THEN 'PUBLIC'
                                                         ELSE pg_catalog.pg_get_userbyid(r)
                                                    END FROM unnest(p.polroles) r), ', '))
                FROM pg_catalog.pg_policy p WHERE p.oid = d.objid)
           WHEN 'pg_catalog.pg_rewrite'::regclass THEN
               (SELECT 'view ' || r.ev_class::regclass::text
                FROM pg_catalog.pg_rewrite r WHERE r.oid = d.objid)
           ELSE pg_catalog.pg_describe_object(d.classid, d.objid, d.objsubid)
       END AS used_by,
       ARRAY(
           SELECT role FROM unnest(%(roles)s::text[]) role
           JOIN pg_catalog.pg_roles pr ON pr.rolname = role
           WHERE CASE d.classid
               WHEN 'pg_catalog.pg_policy'::regclass THEN
                   NOT pr.rolbypassrls AND EXISTS (
                       SELECT 1 FROM pg_catalog.pg_policy p WHERE p.oid = d.objid
                         AND (0 = ANY (p.polroles) OR pr.oid = ANY (p.polroles)))
               WHEN 'pg_catalog.pg_rewrite'::regclass THEN EXISTS (
                   SELECT 1 FROM pg_catalog.pg_rewrite r WHERE r.oid = d.objid
                     AND pg_catalog.has_table_privilege(pr.oid, r.ev_class,
                                                        'SELECT, INSERT, UPDATE, DELETE'))
               WHEN 'pg_catalog.pg_attrdef'::regclass THEN EXISTS (
                   SELECT 1 FROM pg_catalog.pg_attrdef a WHERE a.oid = d.objid
                     AND pg_catalog.has_any_column_privilege(pr.oid, a.adrelid, 'INSERT'))
               WHEN 'pg_catalog.pg_constraint'::regclass THEN EXISTS (
                   SELECT 1 FROM pg_catalog.pg_constraint c WHERE c.oid = d.objid
                     AND c.conrelid <> 0
                     AND pg_catalog.has_any_column_privilege(pr.oid, c.conrelid,
                                                             'INSERT, UPDATE'))
               WHEN 'pg_catalog.pg_trigger'::regclass THEN EXISTS (
                   SELECT 1 FROM pg_catalog.pg_trigger t WHERE t.oid = d.objid
                     AND pg_catalog.has_table_privilege(pr.oid, t.tgrelid,
                                                        'INSERT, UPDATE, DELETE'))
               WHEN 'pg_catalog.pg_proc'::regclass THEN
                   pg_catalog.has_function_privilege(pr.oid, d.objid, 'EXECUTE')
               ELSE false
           END
           ORDER BY 1) AS needed_by,
       false AS by_name
FROM pg_catalog.pg_depend d
WHERE d.refclassid = 'pg_catalog.pg_proc'::regclass AND d.refobjid = ANY (%(fns)s::oid[])
  AND d.deptype = 'n'
UNION ALL
SELECT f.oid,
       'the body of ' || b.oid::regprocedure::text || ' (by name)',
       ARRAY(
           SELECT role FROM unnest(%(roles)s::text[]) role
           JOIN pg_catalog.pg_roles pr ON pr.rolname = role
           WHERE CASE WHEN b.prorettype = 'pg_catalog.trigger'::regtype
                      THEN EXISTS (
                          SELECT 1 FROM pg_catalog.pg_trigger t WHERE t.tgfoid = b.oid
                            AND pg_catalog.has_table_privilege(pr.oid, t.tgrelid,
                                                               'INSERT, UPDATE, DELETE'))
                      ELSE pg_catalog.has_function_privilege(pr.oid, b.oid, 'EXECUTE') END
           ORDER BY 1),
       true
FROM pg_catalog.pg_proc f
JOIN pg_catalog.pg_proc b ON b.oid <> f.oid
 AND b.prosrc ~ ('\m' || regexp_replace(f.proname, '([^[:alnum:]_])', '\\\1', 'g')
                 || '\M')
JOIN pg_catalog.pg_namespace bn ON bn.oid = b.pronamespace
JOIN pg_catalog.pg_language l ON l.oid = b.prolang AND l.lanname IN ('sql', 'plpgsql')
WHERE f.oid = ANY (%(fns)s::oid[])
  AND NOT (bn.nspname = ANY (%(system)s)) AND bn.nspname NOT LIKE 'pg\_%%'
ORDER BY 1, 2
