-- True when target has a UNIQUE constraint, primary key or valid unique index on exactly these
-- columns (in any order): what a foreign key onto them needs.
CREATE OR REPLACE FUNCTION hardening.has_unique(target regclass, columns text[]) RETURNS boolean
LANGUAGE sql STABLE
SET search_path = ''
AS $fn$
    SELECT EXISTS (
        SELECT 1 FROM pg_catalog.pg_index i
        WHERE i.indrelid = target AND i.indisunique AND i.indisvalid AND i.indpred IS NULL
          AND i.indexprs IS NULL AND i.indnkeyatts = cardinality(columns)
          AND (SELECT array_agg(a.attname::text ORDER BY a.attname)
               FROM pg_catalog.pg_attribute a
               WHERE a.attrelid = target AND a.attnum = ANY (i.indkey[0:i.indnkeyatts - 1]))
              = (SELECT array_agg(c ORDER BY c) FROM unnest(columns) AS c))
$fn$;
