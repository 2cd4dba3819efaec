SELECT c.oid,
       EXISTS (SELECT 1 FROM pg_catalog.pg_index i
               JOIN pg_catalog.pg_attribute ia
                 ON ia.attrelid = i.indrelid AND ia.attnum = i.indkey[0]
               WHERE i.indrelid = c.oid AND ia.attname = 'tenant_id'
                 AND i.indisvalid AND i.indpred IS NULL) AS indexed
FROM pg_catalog.pg_class c
WHERE c.oid = ANY (%s::oid[])
