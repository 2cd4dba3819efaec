SELECT c.conname, ch.relname AS tbl, pa.relname AS parent, c.convalidated, c.confdeltype,
       ARRAY(SELECT a.attname::text FROM unnest(c.conkey) WITH ORDINALITY k(num, pos)
             JOIN pg_catalog.pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.num
             ORDER BY k.pos) AS cols,
       ARRAY(SELECT a.attname::text FROM unnest(c.confkey) WITH ORDINALITY k(num, pos)
             JOIN pg_catalog.pg_attribute a ON a.attrelid = c.confrelid AND a.attnum = k.num
             ORDER BY k.pos) AS parent_cols,
       -- ALTER TABLE ... DISABLE TRIGGER ALL switches a key off while it still "exists"
       NOT EXISTS (SELECT 1 FROM pg_catalog.pg_trigger t
                   WHERE t.tgconstraint = c.oid AND t.tgenabled = 'D') AS enforced
FROM pg_catalog.pg_constraint c
JOIN pg_catalog.pg_class ch ON ch.oid = c.conrelid
JOIN pg_catalog.pg_class pa ON pa.oid = c.confrelid
JOIN pg_catalog.pg_namespace n ON n.oid = ch.relnamespace
WHERE c.contype = 'f' AND n.nspname = %s
