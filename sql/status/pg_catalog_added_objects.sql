-- Objects initdb put in pg_catalog have OIDs below FirstNormalObjectId (16384) and belong to
-- the bootstrap superuser (OID 10). Anything else there was added or taken over later: a
-- function that shadows a built-in for every schema, or a replaced one.
SELECT kind, name, owner FROM (
    SELECT 'function' AS kind, p.oid::regprocedure::text AS name, p.proowner AS owner_oid,
           p.oid, 'pg_proc'::regclass AS catalog
    FROM pg_catalog.pg_proc p WHERE p.pronamespace = 'pg_catalog'::regnamespace
    UNION ALL
    SELECT CASE c.relkind WHEN 'v' THEN 'view' WHEN 'S' THEN 'sequence' ELSE 'relation' END,
           c.oid::regclass::text, c.relowner, c.oid, 'pg_class'::regclass
    FROM pg_catalog.pg_class c WHERE c.relnamespace = 'pg_catalog'::regnamespace
    UNION ALL
    SELECT 'type', t.oid::regtype::text, t.typowner, t.oid, 'pg_type'::regclass
    FROM pg_catalog.pg_type t WHERE t.typnamespace = 'pg_catalog'::regnamespace
    UNION ALL
    SELECT 'operator', o.oid::regoperator::text, o.oprowner, o.oid, 'pg_operator'::regclass
    FROM pg_catalog.pg_operator o WHERE o.oprnamespace = 'pg_catalog'::regnamespace
) o
CROSS JOIN LATERAL (SELECT pg_catalog.pg_get_userbyid(o.owner_oid) AS owner) w
WHERE (o.oid >= %(first)s OR o.owner_oid <> 10)
  -- an extension's own members (installed into pg_catalog by CREATE EXTENSION) are its
  -- business; extensions are listed by the migration plan.
  AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d
                  WHERE d.classid = o.catalog AND d.objid = o.oid AND d.deptype = 'e')
ORDER BY 1, 2
