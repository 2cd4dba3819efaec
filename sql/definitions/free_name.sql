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
