-- 003_message_safety: every message belongs to a real unit, development and tenant that agree.
--
-- Safe on a live database: it first counts the legacy rows that would break the new rules and,
-- if there are any, stops with a report (how many of each kind, and the first ids) so nothing
-- changes; the migration runner applies each file in one transaction. Constraints are added
-- NOT VALID and then validated, under a lock_timeout, so a busy table fails fast instead of
-- queueing every writer behind this migration.
--
-- On an adopted database the app may already have foreign keys on these columns, often
-- ON DELETE CASCADE or SET NULL and under the names Postgres would pick. They are found by what
-- they are, not by name, dropped and replaced by RESTRICT keys in this same transaction (so
-- there is no moment without a key), and each replacement is written to hardening.adoption_log,
-- which hardening migrate prints. Every name this file adds is checked first, and an equivalent
-- constraint or index the app already has is used instead of adding a second one.

SET LOCAL lock_timeout = '10s';

DO $preflight$
DECLARE
    problems text := '';
    n bigint;
    sample text;
BEGIN
    SELECT count(*), string_agg(id::text, ', ' ORDER BY id) FILTER (WHERE rn <= 5)
    INTO n, sample
    FROM (SELECT id, row_number() OVER (ORDER BY id) AS rn FROM public.messages
          WHERE unit_id IS NULL OR development_id IS NULL) s;
    IF n > 0 THEN
        problems := problems || format(E'\n  %s message(s) without a unit or development (e.g. %s)', n, sample);
    END IF;

    SELECT count(*), string_agg(id::text, ', ' ORDER BY id) FILTER (WHERE rn <= 5)
    INTO n, sample
    FROM (SELECT m.id, row_number() OVER (ORDER BY m.id) AS rn FROM public.messages m
          WHERE NOT EXISTS (SELECT 1 FROM public.tenants t WHERE t.id = m.tenant_id)
             OR (m.development_id IS NOT NULL AND NOT EXISTS
                    (SELECT 1 FROM public.developments d WHERE d.id = m.development_id))
             OR (m.unit_id IS NOT NULL AND NOT EXISTS
                    (SELECT 1 FROM public.units u WHERE u.id = m.unit_id))) s;
    IF n > 0 THEN
        problems := problems || format(E'\n  %s orphaned message(s) whose unit, development or tenant is missing (e.g. %s)', n, sample);
    END IF;

    SELECT count(*), string_agg(id::text, ', ' ORDER BY id) FILTER (WHERE rn <= 5)
    INTO n, sample
    FROM (SELECT m.id, row_number() OVER (ORDER BY m.id) AS rn
          FROM public.messages m JOIN public.units u ON u.id = m.unit_id
          WHERE u.tenant_id <> m.tenant_id OR u.development_id <> m.development_id) s;
    IF n > 0 THEN
        problems := problems || format(E'\n  %s misaligned message(s) whose unit belongs to another development or tenant (e.g. %s)', n, sample);
    END IF;

    -- A unit whose development belongs to another tenant passes every check above (its
    -- messages agree with it) and is still in the wrong tenant's building.
    SELECT count(*), string_agg(id::text, ', ' ORDER BY id) FILTER (WHERE rn <= 5)
    INTO n, sample
    FROM (SELECT u.id, row_number() OVER (ORDER BY u.id) AS rn
          FROM public.units u JOIN public.developments d ON d.id = u.development_id
          WHERE d.tenant_id <> u.tenant_id) s;
    IF n > 0 THEN
        problems := problems || format(E'\n  %s misplaced unit(s) whose development belongs to another tenant (e.g. %s)', n, sample);
    END IF;

    SELECT count(*), string_agg(id::text, ', ' ORDER BY id) FILTER (WHERE rn <= 5)
    INTO n, sample
    FROM (SELECT m.id, row_number() OVER (ORDER BY m.id) AS rn
          FROM public.messages m JOIN public.units u ON u.id = m.unit_id
          JOIN public.developments d ON d.id = u.development_id
          WHERE d.tenant_id <> u.tenant_id) s;
    IF n > 0 THEN
        problems := problems || format(E'\n  %s message(s) in a unit whose development belongs to another tenant (e.g. %s)', n, sample);
    END IF;

    IF problems <> '' THEN
        RAISE EXCEPTION 'messages hold legacy rows that break 003_message_safety; nothing was changed:%', problems
            USING ERRCODE = 'check_violation',
                  HINT = 'Fix or remove these rows (see docs/runbook.md#legacy-messages), then run hardening migrate again.';
    END IF;
END
$preflight$;

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

DO $constraints$
DECLARE
    fk record;
    k record;
    ix record;
    name text;
    unit_check text;
    development_check text;
    added text[] := '{}';
BEGIN
    -- A message's unit, development and tenant must agree: the composite key below points at this.
    IF NOT hardening.has_unique('public.units', ARRAY['id', 'development_id', 'tenant_id']) THEN
        EXECUTE format('ALTER TABLE public.units ADD CONSTRAINT %I '
                       'UNIQUE (id, development_id, tenant_id)',
                       hardening.free_name('public.units', 'units_id_development_tenant_key'));
    END IF;

    -- NOT NULL through a validated CHECK first: SET NOT NULL then skips its own full-table scan.
    unit_check := hardening.free_name('public.messages', 'messages_unit_id_not_null');
    development_check := hardening.free_name('public.messages', 'messages_development_id_not_null');
    EXECUTE format('ALTER TABLE public.messages '
                   'ADD CONSTRAINT %I CHECK (unit_id IS NOT NULL) NOT VALID, '
                   'ADD CONSTRAINT %I CHECK (development_id IS NOT NULL) NOT VALID',
                   unit_check, development_check);
    EXECUTE format('ALTER TABLE public.messages VALIDATE CONSTRAINT %I', unit_check);
    EXECUTE format('ALTER TABLE public.messages VALIDATE CONSTRAINT %I', development_check);
    ALTER TABLE public.messages ALTER COLUMN unit_id SET NOT NULL,
                                ALTER COLUMN development_id SET NOT NULL;
    EXECUTE format('ALTER TABLE public.messages DROP CONSTRAINT %I, DROP CONSTRAINT %I',
                   unit_check, development_check);

    -- The app's own keys on the three columns, whatever their names and delete rules: dropped
    -- here and replaced below, in this transaction.
    FOR fk IN
        SELECT c.conname, pg_catalog.pg_get_constraintdef(c.oid) AS definition
        FROM pg_catalog.pg_constraint c
        JOIN pg_catalog.pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = c.conkey[1]
        WHERE c.conrelid = 'public.messages'::regclass AND c.contype = 'f'
          AND cardinality(c.conkey) = 1
          AND ((a.attname = 'unit_id' AND c.confrelid = 'public.units'::regclass)
               OR (a.attname = 'development_id' AND c.confrelid = 'public.developments'::regclass)
               OR (a.attname = 'tenant_id' AND c.confrelid = 'public.tenants'::regclass))
        ORDER BY c.conname
    LOOP
        EXECUTE format('ALTER TABLE public.messages DROP CONSTRAINT %I', fk.conname);
        INSERT INTO hardening.adoption_log (migration, object, action, detail)
        VALUES ('003_message_safety.sql', 'public.messages.' || fk.conname,
                'replaced foreign key', format('was %s; now ON DELETE RESTRICT', fk.definition));
    END LOOP;

    FOR k IN
        SELECT * FROM (VALUES
            ('messages_unit_id_fkey', ARRAY['unit_id'], 'public.units'::regclass, ARRAY['id']),
            ('messages_development_id_fkey', ARRAY['development_id'],
             'public.developments'::regclass, ARRAY['id']),
            ('messages_tenant_id_fkey', ARRAY['tenant_id'], 'public.tenants'::regclass, ARRAY['id']),
            ('messages_unit_development_tenant_fkey',
             ARRAY['unit_id', 'development_id', 'tenant_id'], 'public.units'::regclass,
             ARRAY['id', 'development_id', 'tenant_id'])
        ) AS wanted(base, columns, parent, parent_columns)
    LOOP
        CONTINUE WHEN hardening.has_foreign_key('public.messages', k.columns, k.parent,
                                                k.parent_columns);
        name := hardening.free_name('public.messages', k.base);
        EXECUTE format('ALTER TABLE public.messages ADD CONSTRAINT %I FOREIGN KEY (%s) '
                       'REFERENCES %s (%s) ON DELETE RESTRICT NOT VALID',
                       name,
                       (SELECT string_agg(quote_ident(c), ', ') FROM unnest(k.columns) AS c),
                       k.parent,
                       (SELECT string_agg(quote_ident(c), ', ') FROM unnest(k.parent_columns) AS c));
        added := added || name;
    END LOOP;
    FOREACH name IN ARRAY added LOOP
        EXECUTE format('ALTER TABLE public.messages VALIDATE CONSTRAINT %I', name);
    END LOOP;

    -- Foreign keys are checked on the referencing side by index; ON DELETE RESTRICT checks need
    -- these too, or deleting a unit scans every message. An index the app already leads with the
    -- column will do; a name the app already uses elsewhere is not taken over.
    FOR ix IN
        SELECT * FROM (VALUES
            ('public.messages'::regclass, 'unit_id', 'messages_unit_id_idx'),
            ('public.messages'::regclass, 'development_id', 'messages_development_id_idx'),
            ('public.units'::regclass, 'development_id', 'units_development_id_idx')
        ) AS wanted(target, column_name, base)
    LOOP
        CONTINUE WHEN EXISTS (
            SELECT 1 FROM pg_catalog.pg_index i
            JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
            WHERE i.indrelid = ix.target AND i.indisvalid AND i.indpred IS NULL
              AND a.attname = ix.column_name);
        EXECUTE format('CREATE INDEX %I ON %s (%I)',
                       hardening.free_name(ix.target, ix.base), ix.target, ix.column_name);
    END LOOP;
END
$constraints$;
