-- Catch-up for a database whose record holds the first released text of 003_message_safety.sql.
--
-- The revision finds an adopted app's keys by what they are rather than by name, with three
-- helper functions that later migrations (011) use too. The constraints and indexes the first
-- text created are the ones the revision creates on a database the kit built, so only the
-- helpers are added here, exactly as the revision defines them.

-- A name that is free both as a constraint on the table and as a relation in its schema (the
-- index behind a UNIQUE constraint takes the constraint's name): base, else base_2, base_3, ...
CREATE OR REPLACE FUNCTION hardening.free_name(target regclass, base text) RETURNS text
LANGUAGE plpgsql STABLE
SET search_path = ''
AS $fn$
DECLARE
    candidate text := base;
    n integer := 1;
    schema_oid oid := (SELECT relnamespace FROM pg_catalog.pg_class WHERE oid = target);
BEGIN
    WHILE EXISTS (SELECT 1 FROM pg_catalog.pg_constraint
                  WHERE conrelid = target AND conname = candidate)
       OR EXISTS (SELECT 1 FROM pg_catalog.pg_class
                  WHERE relnamespace = schema_oid AND relname = candidate) LOOP
        n := n + 1;
        candidate := left(base, 58) || '_' || n;
    END LOOP;
    RETURN candidate;
END
$fn$;
REVOKE ALL ON FUNCTION hardening.free_name(regclass, text) FROM PUBLIC;

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
REVOKE ALL ON FUNCTION hardening.has_unique(regclass, text[]) FROM PUBLIC;

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
REVOKE ALL ON FUNCTION hardening.has_foreign_key(regclass, text[], regclass, text[]) FROM PUBLIC;
