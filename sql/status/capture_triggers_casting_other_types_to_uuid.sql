-- Capture triggers with one argument cast the tenant column to uuid (011 marks the others with a
-- second argument): on a column of another type every write to the table fails.
SELECT n.nspname, c.relname, t.tgname, a.attname,
       format_type(a.atttypid, a.atttypmod) AS type
FROM pg_catalog.pg_trigger t
JOIN pg_catalog.pg_class c ON c.oid = t.tgrelid
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
JOIN pg_catalog.pg_proc p ON p.oid = t.tgfoid
JOIN pg_catalog.pg_namespace pn ON pn.oid = p.pronamespace
JOIN pg_catalog.pg_attribute a ON a.attrelid = t.tgrelid
    AND a.attname = split_part(encode(t.tgargs, 'escape'), '\000', 1)
WHERE NOT t.tgisinternal AND c.oid = ANY (%s::oid[]) AND pn.nspname = 'hardening'
  AND p.proname IN ('audit_capture_insert', 'audit_capture_update', 'audit_capture_delete')
  AND t.tgnargs = 1 AND a.atttypid <> 'uuid'::regtype
ORDER BY n.nspname, c.relname, t.tgname
