SELECT c.oid, c.relname, t.tgname, p.proname, t.tgenabled, t.tgtype
FROM pg_catalog.pg_trigger t
JOIN pg_catalog.pg_class c ON c.oid = t.tgrelid
JOIN pg_catalog.pg_proc p ON p.oid = t.tgfoid
JOIN pg_catalog.pg_namespace pn ON pn.oid = p.pronamespace
WHERE NOT t.tgisinternal AND c.oid = ANY (%s::oid[]) AND pn.nspname = 'hardening'
