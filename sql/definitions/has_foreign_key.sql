-- True when target has a foreign key on exactly these columns (in this order) onto parent.
CREATE OR REPLACE FUNCTION hardening.has_foreign_key(target regclass, columns text[],
                                                     parent regclass, parent_columns text[])
RETURNS boolean
LANGUAGE sql STABLE
SET search_path = ''
AS $fn$
    SELECT EXISTS (
        SELECT 1 FROM pg_catalog.pg_constraint c
        WHERE c.conrelid = target AND c.contype = 'f' AND c.confrelid = parent
          AND (SELECT array_agg(a.attname::text ORDER BY k.ord)
               FROM unnest(c.conkey) WITH ORDINALITY AS k(attnum, ord)
               JOIN pg_catalog.pg_attribute a ON a.attrelid = target AND a.attnum = k.attnum)
              = columns
          AND (SELECT array_agg(a.attname::text ORDER BY k.ord)
               FROM unnest(c.confkey) WITH ORDINALITY AS k(attnum, ord)
               JOIN pg_catalog.pg_attribute a ON a.attrelid = parent AND a.attnum = k.attnum)
              = parent_columns)
$fn$;
