-- Since 018 a capture trigger names the record by the table's primary key, carried in its
-- arguments from the third on (none: the column id). A key changed after the triggers were
-- installed leaves them pairing and naming rows by the old one.
SELECT n.nspname, c.relname, t.tgname, encode(t.tgargs, 'escape') AS args,
       (SELECT array_agg(a.attname::text ORDER BY k.position)
        FROM pg_catalog.pg_index i
        CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, position)
        JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
        WHERE i.indrelid = t.tgrelid AND i.indisprimary) AS primary_key
FROM pg_catalog.pg_trigger t
JOIN pg_catalog.pg_class c ON c.oid = t.tgrelid
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
JOIN pg_catalog.pg_proc p ON p.oid = t.tgfoid
JOIN pg_catalog.pg_namespace pn ON pn.oid = p.pronamespace
WHERE NOT t.tgisinternal AND c.oid = ANY (%s::oid[]) AND pn.nspname = 'hardening'
  AND p.proname IN ('audit_capture_insert', 'audit_capture_update', 'audit_capture_delete')
  AND pg_catalog.to_regprocedure('hardening.audit_capture_arguments(regclass, text)')
      IS NOT NULL
ORDER BY n.nspname, c.relname, t.tgname
