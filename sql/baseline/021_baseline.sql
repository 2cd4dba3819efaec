-- 021_baseline: migrations 001 to 021 in one pass, for a database that has none of them.
--
-- Each section does what the versioned file of its name does, and is recorded under that
-- file's name and checksum (applied_by reads "<who> from the baseline as <role>"); the
-- versioned file's comments say why. What differs is how it gets there (db/baseline.py):
--   * every kit function comes from sql/definitions, once, where it is first needed (\ir, as
--     psql reads it), instead of each generation a versioned file defined;
--   * audit_events, audit_seals and audit_seal_checks are created in their final shape (008,
--     009, 014 and 016 changed them after 002, 006 and 010);
--   * the capture triggers 002 installs already carry today's arguments, so 011 and 018 only
--     note on the adoption log what they changed on upgraded databases;
--   * today's current_tenant_id needs the resolver (011) and request_claims (018): they come in
--     001, with the audit owner (002), so the app's policies work from the first section on;
--     015 keeps request_claims' grants;
--   * each function the audit owner owns is given to it where its definition is applied (the
--     guard in 002, not 018; request_claims too, which the versioned files leave to the
--     migration role and the definitions step hands over);
--   * 004 and 019 refuse open policies through one function, refuse_open_policies;
--   * sections marked "as the audit owner" run with the migration role lent the audit owner for
--     their transaction (db/migrations.py), where the files grant and revoke it themselves;
--   * the roles 001 creates are named outright in grants, where the files ask whether they
--     exist, and the audit owner is given CREATE on hardening only for the length of a change
--     of owner, where the files first ask whether it has it;
--   * 020's table and its note come in 016, where today's install_ddl_recording needs them,
--     and 016 gives tenant_schema (019) to the audit owner, since ddl_audited_table calls it.
-- tests/test_upgrade_paths.py checks that a database built here ends with the catalog and the
-- adoption log of one built by the versioned files. Released: never edited; a new baseline is
-- a new file.

-- section: 001_core_schema.sql

DO $roles$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'anon') THEN
        CREATE ROLE anon NOLOGIN NOINHERIT;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'authenticated') THEN
        CREATE ROLE authenticated NOLOGIN NOINHERIT;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'service_role') THEN
        CREATE ROLE service_role NOLOGIN NOINHERIT BYPASSRLS;
    END IF;
END
$roles$;

CREATE SCHEMA IF NOT EXISTS hardening;
REVOKE ALL ON SCHEMA hardening FROM PUBLIC;
GRANT USAGE ON SCHEMA hardening TO authenticated, service_role;
GRANT USAGE ON SCHEMA public TO anon, authenticated, service_role;

DO $owner$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'hardening_audit_owner') THEN
        CREATE ROLE hardening_audit_owner NOLOGIN NOINHERIT;
    END IF;
    IF NOT (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN
        EXECUTE format('GRANT hardening_audit_owner TO %I', current_user);
    END IF;
END
$owner$;

CREATE TABLE hardening.tenant_resolver (
    singleton       boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    kind            text NOT NULL DEFAULT 'claim' CHECK (kind IN ('claim', 'membership')),
    claim_paths     text[] NOT NULL DEFAULT ARRAY['tenant_id', 'app_metadata.tenant_id']
                    CHECK (cardinality(claim_paths) > 0),
    membership_schema  text,
    membership_table   text,
    user_column        text,
    tenant_column      text,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    CHECK ((kind = 'membership') = (membership_table IS NOT NULL AND user_column IS NOT NULL
                                    AND tenant_column IS NOT NULL
                                    AND membership_schema IS NOT NULL))
);
INSERT INTO hardening.tenant_resolver DEFAULT VALUES;
REVOKE ALL ON hardening.tenant_resolver FROM PUBLIC;
GRANT SELECT ON hardening.tenant_resolver TO authenticated, service_role;

\ir ../definitions/request_claims.sql
REVOKE ALL ON FUNCTION hardening.request_claims() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION hardening.request_claims()
    TO hardening_audit_owner, authenticated, service_role;

\ir ../definitions/as_uuid.sql
REVOKE ALL ON FUNCTION hardening.as_uuid(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION hardening.as_uuid(text) TO authenticated, service_role;

\ir ../definitions/membership_tenant_ids.sql
REVOKE ALL ON FUNCTION hardening.membership_tenant_ids() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION hardening.membership_tenant_ids() TO authenticated, service_role;

\ir ../definitions/current_tenant_ids.sql
REVOKE ALL ON FUNCTION hardening.current_tenant_ids() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION hardening.current_tenant_ids() TO authenticated, service_role;

\ir ../definitions/current_tenant_id.sql
REVOKE ALL ON FUNCTION hardening.current_tenant_id() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION hardening.current_tenant_id() TO authenticated, service_role;

CREATE TABLE IF NOT EXISTS hardening.managed_tables (
    table_name          text PRIMARY KEY,
    created_by_kit      boolean NOT NULL,
    adopted_at          timestamptz,
    rls_was_enabled     boolean NOT NULL DEFAULT false,
    tenant_policy       text,
    CHECK (created_by_kit = (adopted_at IS NULL))
);
REVOKE ALL ON hardening.managed_tables FROM PUBLIC;

CREATE TABLE IF NOT EXISTS hardening.adoption_log (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    migration   text NOT NULL,
    object      text NOT NULL,
    action      text NOT NULL,
    detail      text NOT NULL,
    logged_at   timestamptz NOT NULL DEFAULT now()
);
REVOKE ALL ON hardening.adoption_log FROM PUBLIC;

INSERT INTO hardening.managed_tables (table_name, created_by_kit, adopted_at, rls_was_enabled)
SELECT t, c.oid IS NULL, CASE WHEN c.oid IS NOT NULL THEN now() END,
       coalesce(c.relrowsecurity, false)
FROM unnest(ARRAY['tenants', 'developments', 'units', 'messages', 'onboarding_attempts']) AS t
LEFT JOIN pg_catalog.pg_class c ON c.oid = to_regclass('public.' || t)
ON CONFLICT (table_name) DO NOTHING;

INSERT INTO hardening.adoption_log (migration, object, action, detail)
SELECT '001_core_schema.sql', 'public.' || table_name, 'adopted table',
       'found before the kit: not created, nothing granted, tenant policy '
       || CASE WHEN rls_was_enabled THEN 'AS RESTRICTIVE (narrows the app''s own policies)'
               ELSE 'permissive (RLS was off, so it narrows every row to the tenant''s)' END
FROM hardening.managed_tables WHERE NOT created_by_kit;

CREATE TABLE IF NOT EXISTS public.tenants (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    slug        text NOT NULL UNIQUE CHECK (slug ~ '^[a-z0-9][a-z0-9-]{1,62}$'),
    name        text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS public.developments (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id   uuid NOT NULL REFERENCES public.tenants (id) ON DELETE RESTRICT,
    name        text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT developments_id_tenant_key UNIQUE (id, tenant_id)
);

CREATE TABLE IF NOT EXISTS public.units (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id       uuid NOT NULL REFERENCES public.tenants (id) ON DELETE RESTRICT,
    development_id  uuid NOT NULL,
    label           text NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT units_development_tenant_fkey FOREIGN KEY (development_id, tenant_id)
        REFERENCES public.developments (id, tenant_id) ON DELETE RESTRICT
);

CREATE TABLE IF NOT EXISTS public.messages (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id       uuid NOT NULL,
    development_id  uuid,
    unit_id         uuid,
    sender          text NOT NULL,
    body            text NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS public.onboarding_attempts (
    id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id    uuid NOT NULL REFERENCES public.tenants (id) ON DELETE RESTRICT,
    email        text NOT NULL,
    status       text NOT NULL DEFAULT 'started'
                 CHECK (status IN ('started', 'succeeded', 'failed')),
    error        text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    finished_at  timestamptz,
    CONSTRAINT onboarding_attempts_error_when_failed
        CHECK ((status = 'failed') = (error IS NOT NULL))
);

REVOKE ALL ON public.tenants, public.developments, public.units, public.messages,
    public.onboarding_attempts FROM anon, PUBLIC;

DO $grants_and_policies$
DECLARE
    t record;
    policy_name text;
    tenant_type text;
    column_name text;
BEGIN
    FOR t IN SELECT * FROM hardening.managed_tables ORDER BY table_name LOOP
        IF t.created_by_kit THEN
            IF t.table_name = 'tenants' THEN
                GRANT SELECT ON public.tenants TO authenticated;
                GRANT SELECT, INSERT, UPDATE, DELETE ON public.tenants TO service_role;
            ELSE
                EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON public.%I '
                               'TO authenticated, service_role', t.table_name);
            END IF;
        END IF;
        EXECUTE format('ALTER TABLE public.%I ENABLE ROW LEVEL SECURITY', t.table_name);

        column_name := CASE WHEN t.table_name = 'tenants' THEN 'id' ELSE 'tenant_id' END;
        SELECT format_type(a.atttypid, a.atttypmod) INTO tenant_type
        FROM pg_catalog.pg_attribute a
        WHERE a.attrelid = format('public.%I', t.table_name)::regclass
          AND a.attname = column_name AND NOT a.attisdropped;
        IF tenant_type IS DISTINCT FROM 'uuid' THEN
            RAISE EXCEPTION 'public.%.% is %, not uuid, so the kit''s tenant policy cannot '
                            'compare it with the tenant id; nothing was changed',
                    t.table_name, column_name, coalesce(tenant_type, 'missing')
                USING ERRCODE = 'datatype_mismatch',
                      HINT = 'Convert the column to uuid (ALTER TABLE ... ALTER COLUMN ... TYPE '
                             'uuid USING ...), then run hardening migrate again.';
        END IF;

        policy_name := CASE WHEN t.table_name = 'tenants' THEN 'tenants_own_row'
                            ELSE t.table_name || '_tenant_isolation' END;
        IF EXISTS (SELECT 1 FROM pg_catalog.pg_policy
                   WHERE polrelid = format('public.%I', t.table_name)::regclass
                     AND polname = policy_name) THEN
            policy_name := 'hardening_' || policy_name;
        END IF;
        IF t.table_name = 'tenants' THEN
            EXECUTE format(
                'CREATE POLICY %I ON public.tenants AS %s FOR SELECT TO authenticated '
                'USING (id = (SELECT hardening.current_tenant_id()))',
                policy_name,
                CASE WHEN t.rls_was_enabled THEN 'RESTRICTIVE' ELSE 'PERMISSIVE' END);
        ELSE
            EXECUTE format(
                'CREATE POLICY %I ON public.%I AS %s FOR ALL TO authenticated '
                'USING (tenant_id = (SELECT hardening.current_tenant_id())) '
                'WITH CHECK (tenant_id = (SELECT hardening.current_tenant_id()))',
                policy_name, t.table_name,
                CASE WHEN t.rls_was_enabled THEN 'RESTRICTIVE' ELSE 'PERMISSIVE' END);
        END IF;
        UPDATE hardening.managed_tables SET tenant_policy = policy_name
        WHERE table_name = t.table_name;
    END LOOP;
END
$grants_and_policies$;

-- section: 002_audit_events.sql

GRANT USAGE ON SCHEMA hardening TO hardening_audit_owner;

CREATE TABLE public.audit_events (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    actor       text NOT NULL,
    tenant_id   uuid,
    table_name  text NOT NULL,
    operation   text NOT NULL,
    record_id   text,
    before      jsonb,
    after       jsonb,
    created_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    db_role     text NOT NULL,
    txid        bigint NOT NULL DEFAULT txid_current(),
    CONSTRAINT audit_events_images_match_operation CHECK (
        (operation = 'INSERT' AND before IS NULL AND after IS NOT NULL)
        OR (operation = 'UPDATE' AND (before IS NOT NULL OR after IS NOT NULL))
        OR (operation = 'DELETE' AND before IS NOT NULL AND after IS NULL)
        OR (operation = 'TRUNCATE' AND before IS NULL AND after IS NULL)
        OR (operation = 'DDL' AND before IS NULL AND after IS NOT NULL)
    )
);

CREATE INDEX audit_events_created_at_brin ON public.audit_events USING brin (created_at);
CREATE INDEX audit_events_tenant_op_time_idx
    ON public.audit_events (tenant_id, operation, created_at);
CREATE INDEX audit_events_record_hash_idx ON public.audit_events USING hash (record_id);

ALTER TABLE public.audit_events ENABLE ROW LEVEL SECURITY;
CREATE POLICY audit_events_capture_insert ON public.audit_events
    FOR INSERT TO hardening_audit_owner WITH CHECK (true);
CREATE POLICY audit_events_capture_read ON public.audit_events
    FOR SELECT TO hardening_audit_owner USING (true);

\ir ../definitions/audit_events_append_only.sql

CREATE TRIGGER audit_events_append_only
    BEFORE UPDATE OR DELETE OR TRUNCATE ON public.audit_events
    FOR EACH STATEMENT EXECUTE FUNCTION hardening.audit_events_append_only();
ALTER TABLE public.audit_events ENABLE ALWAYS TRIGGER audit_events_append_only;

GRANT CREATE ON SCHEMA public TO hardening_audit_owner;
ALTER TABLE public.audit_events OWNER TO hardening_audit_owner;
REVOKE CREATE ON SCHEMA public FROM hardening_audit_owner;
REVOKE ALL ON public.audit_events FROM PUBLIC, anon, authenticated, service_role;
REVOKE ALL ON SEQUENCE public.audit_events_id_seq FROM PUBLIC, anon, authenticated, service_role;
REVOKE ALL ON public.audit_events FROM hardening_audit_owner;
GRANT SELECT, INSERT ON public.audit_events TO hardening_audit_owner;
GRANT SELECT ON public.audit_events TO service_role;

\ir ../definitions/statement_identity.sql
\ir ../definitions/statement_role.sql
REVOKE ALL ON FUNCTION hardening.statement_role() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION hardening.statement_role() TO hardening_audit_owner;

\ir ../definitions/current_actor.sql
REVOKE ALL ON FUNCTION hardening.current_actor() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION hardening.current_actor() TO hardening_audit_owner;

\ir ../definitions/audit_write_guard.sql
GRANT EXECUTE ON FUNCTION hardening.audit_write_guard() TO authenticated, service_role;

\ir ../definitions/record_key.sql
\ir ../definitions/audit_capture_insert.sql

\ir ../definitions/audit_capture_update.sql

\ir ../definitions/audit_capture_delete.sql

\ir ../definitions/audit_capture_truncate.sql

REVOKE ALL ON FUNCTION hardening.audit_capture_insert(), hardening.audit_capture_update(),
    hardening.audit_capture_delete(), hardening.audit_capture_truncate() FROM PUBLIC;

\ir ../definitions/audit_capture_arguments.sql
\ir ../definitions/install_audit_capture.sql
REVOKE ALL ON FUNCTION hardening.install_audit_capture(regclass, text) FROM PUBLIC;

SELECT hardening.install_audit_capture('public.tenants'::regclass, 'id');
SELECT hardening.install_audit_capture(c.oid::regclass, 'tenant_id')
FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attname = 'tenant_id'
    AND NOT a.attisdropped
WHERE c.relkind IN ('r', 'p') AND n.nspname = 'public' AND c.relname <> 'audit_events'
ORDER BY c.relname;

-- section: 003_message_safety.sql

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

\ir ../definitions/free_name.sql
REVOKE ALL ON FUNCTION hardening.free_name(regclass, text) FROM PUBLIC;

\ir ../definitions/has_unique.sql
REVOKE ALL ON FUNCTION hardening.has_unique(regclass, text[]) FROM PUBLIC;

\ir ../definitions/has_foreign_key.sql
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
    IF NOT hardening.has_unique('public.units', ARRAY['id', 'development_id', 'tenant_id']) THEN
        EXECUTE format('ALTER TABLE public.units ADD CONSTRAINT %I '
                       'UNIQUE (id, development_id, tenant_id)',
                       hardening.free_name('public.units', 'units_id_development_tenant_key'));
    END IF;

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

-- section: 004_rls_lockdown.sql

\ir ../definitions/refuse_open_policies.sql

DO $lockdown$
DECLARE
    t record;
BEGIN
    PERFORM hardening.refuse_open_policies(ARRAY(
        SELECT c.oid::regclass FROM pg_catalog.pg_class c
        WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'p')));

    FOR t IN
        SELECT c.oid::regclass AS rel, c.relname
        FROM pg_catalog.pg_class c
        JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
        JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attname = 'tenant_id'
            AND NOT a.attisdropped
        WHERE c.relkind IN ('r', 'p') AND n.nspname = 'public'
        ORDER BY c.relname
    LOOP
        EXECUTE format('ALTER TABLE %s ENABLE ROW LEVEL SECURITY', t.rel);
        EXECUTE format('ALTER TABLE %s FORCE ROW LEVEL SECURITY', t.rel);
        EXECUTE format('REVOKE ALL ON %s FROM anon', t.rel);
        EXECUTE format('REVOKE TRUNCATE ON %s FROM PUBLIC, authenticated, service_role', t.rel);
        IF NOT EXISTS (
            SELECT 1 FROM pg_catalog.pg_index i
            JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
            WHERE i.indrelid = t.rel AND a.attname = 'tenant_id'
        ) THEN
            EXECUTE format('CREATE INDEX %I ON %s (tenant_id)', t.relname || '_tenant_id_idx', t.rel);
        END IF;
    END LOOP;
END
$lockdown$;

ALTER TABLE public.tenants FORCE ROW LEVEL SECURITY;
REVOKE ALL ON public.tenants FROM anon;
REVOKE TRUNCATE ON public.tenants FROM PUBLIC, authenticated, service_role;

-- section: 005_canary_indexes.sql

SET LOCAL lock_timeout = '10s';

CREATE INDEX IF NOT EXISTS messages_unit_development_tenant_idx
    ON public.messages (unit_id, development_id, tenant_id);

CREATE INDEX IF NOT EXISTS audit_events_deletes_idx
    ON public.audit_events (created_at, tenant_id, table_name) INCLUDE (record_id)
    WHERE operation = 'DELETE';

CREATE INDEX IF NOT EXISTS onboarding_attempts_failed_idx
    ON public.onboarding_attempts (created_at, tenant_id) INCLUDE (error)
    WHERE status = 'failed';

CREATE TABLE IF NOT EXISTS hardening.alert_state (
    alert_key         text PRIMARY KEY,
    fingerprint       text NOT NULL,
    magnitude         bigint NOT NULL CHECK (magnitude >= 0),
    summary           text NOT NULL,
    first_alerted_at  timestamptz NOT NULL DEFAULT now(),
    last_alerted_at   timestamptz NOT NULL DEFAULT now()
);
REVOKE ALL ON hardening.alert_state FROM PUBLIC;

-- section: 006_audit_seals.sql

CREATE TABLE hardening.audit_seals (
    seq              bigint PRIMARY KEY CHECK (seq >= 1),
    from_id          bigint NOT NULL CHECK (from_id >= 1),
    to_id            bigint NOT NULL,
    row_count        bigint NOT NULL CHECK (row_count >= 0),
    digest           bytea NOT NULL CHECK (octet_length(digest) = 32),
    previous_digest  bytea NOT NULL CHECK (octet_length(previous_digest) = 32),
    fingerprints     bytea NOT NULL,
    sealed_at        timestamptz NOT NULL,
    sealed_by        text NOT NULL,
    key_id           text,
    mac              bytea,
    version          smallint NOT NULL DEFAULT 1 CHECK (version IN (1, 2)),
    high_water       bigint,
    pending          bytea,
    last_created_at  timestamptz,
    CONSTRAINT audit_seals_range CHECK (to_id >= from_id - 1),
    CONSTRAINT audit_seals_mac_pair CHECK ((key_id IS NULL) = (mac IS NULL)),
    CONSTRAINT audit_seals_v2_marks CHECK (
        version = 1
        OR (high_water IS NOT NULL AND high_water >= to_id AND pending IS NOT NULL)
    )
);

COMMENT ON TABLE hardening.audit_seals IS
    'Hash-chain seals over public.audit_events; append-only; verified by the audit_seal_chain '
    'status line. See hardening_pipeline/hardening/seals.py.';

\ir ../definitions/audit_seals_append_only.sql
REVOKE ALL ON FUNCTION hardening.audit_seals_append_only() FROM PUBLIC;

CREATE TRIGGER audit_seals_append_only
    BEFORE UPDATE OR DELETE OR TRUNCATE ON hardening.audit_seals
    FOR EACH STATEMENT EXECUTE FUNCTION hardening.audit_seals_append_only();
ALTER TABLE hardening.audit_seals ENABLE ALWAYS TRIGGER audit_seals_append_only;

GRANT CREATE ON SCHEMA hardening TO hardening_audit_owner;
ALTER TABLE hardening.audit_seals OWNER TO hardening_audit_owner;
REVOKE CREATE ON SCHEMA hardening FROM hardening_audit_owner;
REVOKE ALL ON hardening.audit_seals FROM PUBLIC, anon, authenticated, service_role;
REVOKE ALL ON hardening.audit_seals FROM hardening_audit_owner;
GRANT SELECT, INSERT ON hardening.audit_seals TO hardening_audit_owner;
GRANT SELECT ON hardening.audit_seals TO service_role;

-- section: 007_audit_capture_per_statement.sql

-- Nothing left: the capture functions are today's definitions, applied in 002.

-- section: 008_audit_record_hash_index.sql

-- Nothing left: 002 creates audit_events with the hash index on record_id.

-- section: 009_audit_capture_inline_actor.sql

-- Nothing left: 002 creates audit_events without the redundant CHECK, and the capture
-- functions are today's definitions.

-- section: 010_audit_seal_checks.sql

CREATE TABLE hardening.audit_seal_checks (
    seq              bigint NOT NULL,
    seal_digest      bytea NOT NULL CHECK (octet_length(seal_digest) = 32),
    versions_digest  bytea NOT NULL CHECK (octet_length(versions_digest) = 32),
    checked_at       timestamptz NOT NULL,
    checked_by       text NOT NULL,
    key_id           text,
    mac              bytea,
    version          smallint NOT NULL DEFAULT 1 CHECK (version IN (1, 2)),
    PRIMARY KEY (seq, checked_at),
    CONSTRAINT audit_seal_checks_mac_pair CHECK ((key_id IS NULL) = (mac IS NULL))
);

COMMENT ON TABLE hardening.audit_seal_checks IS
    'Full re-hashes of audit seals and the row versions they saw; append-only; lets the '
    'audit_seal_chain status line skip unchanged seals. See hardening_pipeline/hardening/seals.py.';

\ir ../definitions/audit_seal_checks_append_only.sql
REVOKE ALL ON FUNCTION hardening.audit_seal_checks_append_only() FROM PUBLIC;

CREATE TRIGGER audit_seal_checks_append_only
    BEFORE UPDATE OR DELETE OR TRUNCATE ON hardening.audit_seal_checks
    FOR EACH STATEMENT EXECUTE FUNCTION hardening.audit_seal_checks_append_only();
ALTER TABLE hardening.audit_seal_checks ENABLE ALWAYS TRIGGER audit_seal_checks_append_only;

GRANT CREATE ON SCHEMA hardening TO hardening_audit_owner;
ALTER TABLE hardening.audit_seal_checks OWNER TO hardening_audit_owner;
REVOKE CREATE ON SCHEMA hardening FROM hardening_audit_owner;
REVOKE ALL ON hardening.audit_seal_checks FROM PUBLIC, anon, authenticated, service_role;
REVOKE ALL ON hardening.audit_seal_checks FROM hardening_audit_owner;
GRANT SELECT, INSERT ON hardening.audit_seal_checks TO hardening_audit_owner;
GRANT SELECT ON hardening.audit_seal_checks TO service_role;

-- section: 011_tenant_resolver_and_adoption.sql

\ir ../definitions/use_tenant_policies.sql
REVOKE ALL ON FUNCTION hardening.use_tenant_policies(boolean) FROM PUBLIC;

SET LOCAL lock_timeout = '10s';

DO $unit_development$
DECLARE
    n bigint;
    sample text;
    name text;
BEGIN
    IF hardening.has_foreign_key('public.units', ARRAY['development_id', 'tenant_id'],
                                 'public.developments', ARRAY['id', 'tenant_id']) THEN
        RETURN;
    END IF;
    SELECT count(*), string_agg(id::text, ', ' ORDER BY id) FILTER (WHERE rn <= 5)
    INTO n, sample
    FROM (SELECT u.id, row_number() OVER (ORDER BY u.id) AS rn
          FROM public.units u JOIN public.developments d ON d.id = u.development_id
          WHERE d.tenant_id <> u.tenant_id) s;
    IF n > 0 THEN
        RAISE EXCEPTION '% misplaced unit(s) whose development belongs to another tenant (e.g. %); nothing was changed', n, sample
            USING ERRCODE = 'check_violation',
                  HINT = 'Move each unit (and its messages) to its development''s tenant or to a development of its own tenant, then run hardening migrate again.';
    END IF;
    IF NOT hardening.has_unique('public.developments', ARRAY['id', 'tenant_id']) THEN
        name := hardening.free_name('public.developments', 'developments_id_tenant_key');
        EXECUTE format('ALTER TABLE public.developments ADD CONSTRAINT %I UNIQUE (id, tenant_id)',
                       name);
        INSERT INTO hardening.adoption_log (migration, object, action, detail)
        VALUES ('011_tenant_resolver_and_adoption.sql', 'public.developments.' || name,
                'added unique key', 'UNIQUE (id, tenant_id), which the units key below needs');
    END IF;
    name := hardening.free_name('public.units', 'units_development_tenant_fkey');
    EXECUTE format('ALTER TABLE public.units ADD CONSTRAINT %I FOREIGN KEY (development_id, tenant_id) '
                   'REFERENCES public.developments (id, tenant_id) ON DELETE RESTRICT NOT VALID',
                   name);
    EXECUTE format('ALTER TABLE public.units VALIDATE CONSTRAINT %I', name);
    INSERT INTO hardening.adoption_log (migration, object, action, detail)
    VALUES ('011_tenant_resolver_and_adoption.sql', 'public.units.' || name, 'added foreign key',
            'units (development_id, tenant_id) -> developments (id, tenant_id): a unit cannot '
            'sit in another tenant''s development');
END
$unit_development$;

DO $restrict$
DECLARE
    k record;
    fk record;
    definition text;
    name text;
    label text;
BEGIN
    FOR k IN
        SELECT * FROM (VALUES
            ('public.developments'::regclass, 'tenant_id', 'public.tenants'::regclass, true),
            ('public.units'::regclass, 'tenant_id', 'public.tenants'::regclass, true),
            ('public.units'::regclass, 'development_id', 'public.developments'::regclass, false),
            ('public.onboarding_attempts'::regclass, 'tenant_id', 'public.tenants'::regclass, true)
        ) AS wanted(target, column_name, parent, add_if_missing)
    LOOP
        label := (SELECT format('%s.%s', n.nspname, c.relname) FROM pg_catalog.pg_class c
                  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = k.target);
        FOR fk IN
            SELECT c.conname, c.confdeltype, pg_catalog.pg_get_constraintdef(c.oid) AS definition
            FROM pg_catalog.pg_constraint c
            JOIN pg_catalog.pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = c.conkey[1]
            WHERE c.conrelid = k.target AND c.contype = 'f' AND c.confrelid = k.parent
              AND cardinality(c.conkey) = 1 AND a.attname = k.column_name
              AND c.confdeltype <> 'r'
            ORDER BY c.conname
        LOOP
            definition := regexp_replace(fk.definition, ' NOT VALID$', '');
            IF definition ~ ' ON DELETE (CASCADE|SET NULL|SET DEFAULT|NO ACTION)( \([^)]*\))?' THEN
                definition := regexp_replace(
                    definition, ' ON DELETE (CASCADE|SET NULL|SET DEFAULT|NO ACTION)( \([^)]*\))?',
                    ' ON DELETE RESTRICT');
            ELSIF definition ~ ' DEFERRABLE| NOT DEFERRABLE' THEN
                definition := regexp_replace(definition, '( NOT)? DEFERRABLE',
                                             ' ON DELETE RESTRICT\&');
            ELSE
                definition := definition || ' ON DELETE RESTRICT';
            END IF;
            EXECUTE format('ALTER TABLE %s DROP CONSTRAINT %I', k.target, fk.conname);
            EXECUTE format('ALTER TABLE %s ADD CONSTRAINT %I %s NOT VALID',
                           k.target, fk.conname, definition);
            EXECUTE format('ALTER TABLE %s VALIDATE CONSTRAINT %I', k.target, fk.conname);
            INSERT INTO hardening.adoption_log (migration, object, action, detail)
            VALUES ('011_tenant_resolver_and_adoption.sql', label || '.' || fk.conname,
                    'replaced foreign key', format('was %s; now %s', fk.definition, definition));
        END LOOP;
        IF k.add_if_missing AND NOT hardening.has_foreign_key(k.target, ARRAY[k.column_name],
                                                             k.parent, ARRAY['id']) THEN
            name := hardening.free_name(k.target, (SELECT relname FROM pg_catalog.pg_class
                                                   WHERE oid = k.target)
                                                  || '_' || k.column_name || '_fkey');
            EXECUTE format('ALTER TABLE %s ADD CONSTRAINT %I FOREIGN KEY (%I) REFERENCES %s (id) '
                           'ON DELETE RESTRICT NOT VALID', k.target, name, k.column_name, k.parent);
            EXECUTE format('ALTER TABLE %s VALIDATE CONSTRAINT %I', k.target, name);
            INSERT INTO hardening.adoption_log (migration, object, action, detail)
            VALUES ('011_tenant_resolver_and_adoption.sql', label || '.' || name,
                    'added foreign key',
                    format('%s -> %s (id) ON DELETE RESTRICT', k.column_name, k.parent));
        END IF;
    END LOOP;
END
$restrict$;

INSERT INTO hardening.adoption_log (migration, object, action, detail)
SELECT '011_tenant_resolver_and_adoption.sql', tg.tgrelid::regclass::text,
       'audit capture for text tenant',
       format('%s is not a uuid: audit_events.tenant_id is NULL for its rows unless the value '
              'reads as a uuid; the row images keep it',
              split_part(encode(tg.tgargs, 'escape'), '\000', 1))
FROM pg_catalog.pg_trigger tg
JOIN pg_catalog.pg_class c ON c.oid = tg.tgrelid
WHERE tg.tgfoid = 'hardening.audit_capture_insert()'::regprocedure
  AND split_part(encode(tg.tgargs, 'escape'), '\000', 2) = 'text'
ORDER BY c.relname;

-- section: 012_service_role_mode.sql

CREATE TABLE hardening.service_role_mode (
    singleton  boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    mode       text NOT NULL CHECK (mode IN ('report', 'enforce')),
    set_at     timestamptz NOT NULL DEFAULT now(),
    set_by     text NOT NULL DEFAULT current_user,
    reason     text NOT NULL
);
REVOKE ALL ON hardening.service_role_mode FROM PUBLIC, anon, authenticated, service_role;
GRANT SELECT ON hardening.service_role_mode TO hardening_audit_owner;

CREATE TABLE hardening.unattributed_writes (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    created_at        timestamptz NOT NULL DEFAULT clock_timestamp(),
    table_name        text NOT NULL,
    operation         text NOT NULL,
    application_name  text NOT NULL,
    jwt_role          text,
    client_info       text,
    request_path      text,
    client_addr       text,
    txid              bigint NOT NULL DEFAULT txid_current()
);
CREATE INDEX unattributed_writes_created_at_idx ON hardening.unattributed_writes (created_at);
REVOKE ALL ON hardening.unattributed_writes FROM PUBLIC, anon, authenticated, service_role;
GRANT INSERT ON hardening.unattributed_writes TO hardening_audit_owner;

\ir ../definitions/allow_unattributed_write.sql
REVOKE ALL ON FUNCTION hardening.allow_unattributed_write(text, text)
    FROM PUBLIC, anon, authenticated;
GRANT EXECUTE ON FUNCTION hardening.allow_unattributed_write(text, text) TO service_role;


DO $mode$
DECLARE
    tbl regclass;
    held boolean := false;
    guarded boolean := false;
    prior_row_security text := current_setting('row_security');
BEGIN
    PERFORM set_config('row_security', 'off', true);
    BEGIN
        guarded := EXISTS (SELECT 1 FROM public.audit_events);
    EXCEPTION WHEN insufficient_privilege THEN
        guarded := false;
    END;
    IF NOT guarded THEN
        FOR tbl IN
            SELECT c.oid::regclass
            FROM pg_catalog.pg_class c
            JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
            WHERE c.relkind IN ('r', 'p') AND n.nspname = 'public' AND c.relname <> 'audit_events'
              AND (c.relname = 'tenants'
                   OR EXISTS (SELECT 1 FROM pg_catalog.pg_attribute a
                              WHERE a.attrelid = c.oid AND a.attname = 'tenant_id'
                                AND NOT a.attisdropped))
        LOOP
            BEGIN
                EXECUTE format('SELECT EXISTS (SELECT 1 FROM %s)', tbl) INTO held;
            EXCEPTION WHEN insufficient_privilege THEN
                held := true;
            END;
            EXIT WHEN held;
        END LOOP;
    END IF;
    PERFORM set_config('row_security', prior_row_security, true);
    INSERT INTO hardening.service_role_mode (mode, reason)
    VALUES (CASE WHEN held THEN 'report' ELSE 'enforce' END,
            CASE WHEN held
                 THEN 'set by 012: the database already held tenant data the audit log never saw'
                 ELSE 'set by 012: no pre-existing tenant data' END);
END
$mode$;

-- section: 013_job_locks.sql

CREATE TABLE IF NOT EXISTS hardening.job_locks (
    job  text PRIMARY KEY CHECK (job ~ '^[a-z_]+$')
);
INSERT INTO hardening.job_locks (job) VALUES ('backup'), ('seal') ON CONFLICT DO NOTHING;

REVOKE ALL ON hardening.job_locks FROM PUBLIC;
DO $revoke$
DECLARE
    r text;
BEGIN
    FOREACH r IN ARRAY ARRAY['anon', 'authenticated', 'service_role'] LOOP
        IF EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = r) THEN
            EXECUTE format('REVOKE ALL ON hardening.job_locks FROM %I', r);
        END IF;
    END LOOP;
END
$revoke$;

-- section: 014_audit_seal_v2.sql

-- Nothing left: 006 and 010 create the seal tables with the format 2 columns.

-- section: 015_attribution_and_privileges.sql

DO $close$
DECLARE
    api_roles text := (SELECT string_agg(quote_ident(r), ', ')
                       FROM unnest(ARRAY['anon', 'authenticated', 'service_role']) AS r
                       WHERE EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = r));
    grantees text := concat_ws(', ', 'PUBLIC', api_roles);
    obj record;
BEGIN
    FOR obj IN
        SELECT p.oid::regprocedure AS fn
        FROM pg_catalog.pg_proc p
        WHERE p.pronamespace = 'hardening'::regnamespace
        ORDER BY 1
    LOOP
        EXECUTE format('REVOKE ALL ON FUNCTION %s FROM %s', obj.fn, grantees);
    END LOOP;
    FOR obj IN
        SELECT c.oid::regclass AS seq
        FROM pg_catalog.pg_class c
        WHERE c.relkind = 'S'
          AND (c.relnamespace = 'hardening'::regnamespace
               OR c.oid = pg_catalog.pg_get_serial_sequence('public.audit_events', 'id')::regclass)
        ORDER BY 1
    LOOP
        EXECUTE format('REVOKE ALL ON SEQUENCE %s FROM %s', obj.seq, grantees);
    END LOOP;
    FOR obj IN
        SELECT DISTINCT pg_catalog.pg_get_userbyid(d.defaclrole) AS owner
        FROM pg_catalog.pg_default_acl d
        WHERE d.defaclnamespace = 'hardening'::regnamespace
    LOOP
        EXECUTE format('ALTER DEFAULT PRIVILEGES FOR ROLE %I IN SCHEMA hardening '
                       'REVOKE ALL ON TABLES FROM %s', obj.owner, grantees);
        EXECUTE format('ALTER DEFAULT PRIVILEGES FOR ROLE %I IN SCHEMA hardening '
                       'REVOKE ALL ON SEQUENCES FROM %s', obj.owner, grantees);
        EXECUTE format('ALTER DEFAULT PRIVILEGES FOR ROLE %I IN SCHEMA hardening '
                       'REVOKE ALL ON FUNCTIONS FROM %s', obj.owner, grantees);
    END LOOP;
    ALTER DEFAULT PRIVILEGES FOR ROLE hardening_audit_owner REVOKE EXECUTE ON FUNCTIONS FROM PUBLIC;
    IF api_roles IS NOT NULL THEN
        FOR obj IN
            SELECT p.oid::regprocedure AS fn
            FROM pg_catalog.pg_proc p
            WHERE p.pronamespace = 'hardening'::regnamespace
              AND p.proname IN ('current_tenant_id', 'current_tenant_ids',
                                'membership_tenant_ids', 'as_uuid', 'request_claims')
        LOOP
            EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO %s', obj.fn,
                           (SELECT string_agg(quote_ident(r), ', ')
                            FROM unnest(ARRAY['authenticated', 'service_role']) AS r
                            WHERE EXISTS (SELECT 1 FROM pg_catalog.pg_roles
                                          WHERE rolname = r)));
        END LOOP;
    END IF;
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'service_role') THEN
        GRANT EXECUTE ON FUNCTION hardening.allow_unattributed_write(text, text) TO service_role;
    END IF;
END
$close$;

DO $membership$
DECLARE
    me text := current_user;
    member record;
BEGIN
    IF NOT (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = me) THEN
        EXECUTE format('GRANT SELECT ON public.audit_events TO %I', me);
        EXECUTE format('GRANT SELECT ON SEQUENCE public.audit_events_id_seq TO %I', me);
        EXECUTE format('GRANT SELECT, INSERT ON hardening.audit_seals TO %I', me);
        EXECUTE format('GRANT SELECT, INSERT ON hardening.audit_seal_checks TO %I', me);
        IF NOT (SELECT rolbypassrls FROM pg_catalog.pg_roles WHERE rolname = me)
           AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_policy
                       WHERE polrelid = 'public.audit_events'::regclass
                         AND polname = 'audit_events_jobs_read') THEN
            EXECUTE format('CREATE POLICY audit_events_jobs_read ON public.audit_events '
                           'FOR SELECT TO %I USING (true)', me);
        END IF;
    END IF;
    FOR member IN
        SELECT r.rolname
        FROM pg_catalog.pg_auth_members m
        JOIN pg_catalog.pg_roles r ON r.oid = m.member
        WHERE m.roleid = 'hardening_audit_owner'::regrole AND r.rolcanlogin
          AND (r.rolname = me OR (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = me))
        ORDER BY 1
    LOOP
        EXECUTE format('REVOKE hardening_audit_owner FROM %I', member.rolname);
    END LOOP;
END
$membership$;

-- section: 016_ddl_on_the_record.sql as the audit owner

\ir ../definitions/tenant_schema.sql
\ir ../definitions/ddl_audited_table.sql

\ir ../definitions/ddl_object_table.sql

\ir ../definitions/write_ddl_records.sql
\ir ../definitions/record_ddl.sql

\ir ../definitions/record_ddl_drop.sql

\ir ../definitions/install_ddl_recording.sql

GRANT SELECT ON hardening.managed_tables TO hardening_audit_owner;
GRANT EXECUTE ON FUNCTION hardening.tenant_schema(name) TO CURRENT_USER;

REVOKE ALL ON FUNCTION hardening.ddl_audited_table(oid), hardening.ddl_object_table(oid, oid),
    hardening.record_ddl(), hardening.record_ddl_drop(), hardening.install_ddl_recording()
    FROM PUBLIC, anon, authenticated, service_role;

CREATE TABLE hardening.ddl_recording_installs (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    installed_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
    installed_by text NOT NULL DEFAULT session_user
);

\ir ../definitions/note_ddl_recording_installed.sql

GRANT CREATE ON SCHEMA hardening TO hardening_audit_owner;
ALTER TABLE hardening.ddl_recording_installs OWNER TO hardening_audit_owner;
REVOKE CREATE ON SCHEMA hardening FROM hardening_audit_owner;

REVOKE ALL ON hardening.ddl_recording_installs FROM PUBLIC, anon, authenticated, service_role;
REVOKE ALL ON FUNCTION hardening.note_ddl_recording_installed() FROM PUBLIC, anon, authenticated, service_role;
GRANT EXECUTE ON FUNCTION hardening.note_ddl_recording_installed() TO CURRENT_USER;
GRANT SELECT ON hardening.ddl_recording_installs TO CURRENT_USER, service_role;

SELECT hardening.install_ddl_recording();

DO $api_roles$
DECLARE
    r text;
BEGIN
    IF current_setting('server_version_num')::int < 160000
       OR (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user) THEN
        RETURN;
    END IF;
    FOREACH r IN ARRAY ARRAY['anon', 'authenticated', 'service_role'] LOOP
        IF EXISTS (SELECT 1 FROM pg_catalog.pg_auth_members m
                   WHERE m.roleid = (SELECT oid FROM pg_catalog.pg_roles WHERE rolname = r)
                     AND m.member = (SELECT oid FROM pg_catalog.pg_roles
                                     WHERE rolname = current_user)
                     AND m.admin_option)
           AND NOT pg_catalog.pg_has_role(current_user, r, 'SET') THEN
            EXECUTE format('GRANT %I TO %I WITH INHERIT FALSE, SET TRUE', r, current_user);
        END IF;
    END LOOP;
END
$api_roles$;

-- section: 017_api_roles_no_trigger_privilege.sql

DO $revoke$
DECLARE
    t record;
    grantees text := concat_ws(', ', 'PUBLIC',
        (SELECT string_agg(quote_ident(r), ', ')
         FROM unnest(ARRAY['authenticated', 'service_role']) AS r
         WHERE EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = r)));
BEGIN
    FOR t IN
        SELECT c.oid::regclass AS rel
        FROM pg_catalog.pg_class c
        JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p')
          AND (c.relname = 'tenants'
               OR EXISTS (SELECT 1 FROM pg_catalog.pg_attribute a
                          WHERE a.attrelid = c.oid AND a.attname = 'tenant_id'
                            AND NOT a.attisdropped))
    LOOP
        EXECUTE format('REVOKE TRIGGER, REFERENCES, TRUNCATE ON %s FROM %s', t.rel, grantees);
    END LOOP;
END
$revoke$;

-- section: 018_capture_keys_and_claims.sql as the audit owner

DO $pause$
DECLARE
    empty_log boolean;
    prior_row_security text := current_setting('row_security');
BEGIN
    PERFORM set_config('row_security', 'off', true);
    BEGIN
        empty_log := NOT EXISTS (SELECT 1 FROM public.audit_events);
    EXCEPTION WHEN insufficient_privilege THEN
        empty_log := false;
    END;
    PERFORM set_config('row_security', prior_row_security, true);
    IF empty_log
       AND (SELECT count(*) FROM pg_catalog.pg_event_trigger e
            WHERE e.evtname IN ('hardening_record_ddl', 'hardening_record_ddl_drop')
              AND e.evtenabled = 'A'
              AND pg_catalog.pg_has_role(current_user, e.evtowner, 'USAGE')) = 2 THEN
        ALTER EVENT TRIGGER hardening_record_ddl DISABLE;
        ALTER EVENT TRIGGER hardening_record_ddl_drop DISABLE;
        PERFORM set_config('hardening.ddl_recording_paused', 'on', true);
    END IF;
END
$pause$;

INSERT INTO hardening.adoption_log (migration, object, action, detail)
SELECT '018_capture_keys_and_claims.sql', tg.tgrelid::regclass::text,
       'audit capture keyed on primary key',
       format('its primary key is not id: audit rows name the record by (%s) and an '
              'UPDATE pairs its images by it',
              hardening.audit_capture_arguments(tg.tgrelid::regclass,
                                                split_part(encode(tg.tgargs, 'escape'), '\000', 1)))
FROM pg_catalog.pg_trigger tg
JOIN pg_catalog.pg_class c ON c.oid = tg.tgrelid
WHERE tg.tgfoid = 'hardening.audit_capture_insert()'::regprocedure AND tg.tgnargs > 2
ORDER BY c.relname;


REVOKE ALL ON FUNCTION hardening.request_claims(), hardening.audit_capture_arguments(regclass, text),
    hardening.audit_write_guard() FROM PUBLIC, anon, authenticated, service_role;
GRANT EXECUTE ON FUNCTION hardening.request_claims()
    TO hardening_audit_owner, authenticated, service_role;

DO $resume$
BEGIN
    IF current_setting('hardening.ddl_recording_paused', true) = 'on' THEN
        ALTER EVENT TRIGGER hardening_record_ddl ENABLE ALWAYS;
        ALTER EVENT TRIGGER hardening_record_ddl_drop ENABLE ALWAYS;
        PERFORM set_config('hardening.ddl_recording_paused', '', true);
    END IF;
END
$resume$;

-- section: 019_tenant_tables_every_schema.sql as the audit owner

\ir ../definitions/tenant_tables.sql

\ir ../definitions/lock_down_tenant_table.sql

REVOKE ALL ON FUNCTION hardening.tenant_schema(name), hardening.tenant_tables(),
    hardening.lock_down_tenant_table(regclass) FROM PUBLIC, anon, authenticated, service_role;

SELECT hardening.lock_down_tenant_table(t)
FROM hardening.tenant_tables() AS t
JOIN pg_catalog.pg_class c ON c.oid = t
WHERE c.relnamespace <> 'public'::regnamespace;

-- section: 020_ddl_recording_installs.sql

-- Nothing left: 016 creates the installs table and runs today's install_ddl_recording(),
-- which notes the install.

-- section: 021_tenant_key_ledger.sql as the audit owner

CREATE TABLE hardening.tenant_key_ledger (
    id          smallint PRIMARY KEY CHECK (id = 1),
    version     bigint NOT NULL CHECK (version > 0),
    document    text NOT NULL,
    written_at  timestamptz NOT NULL DEFAULT pg_catalog.now()
);

\ir ../definitions/record_tenant_erasure.sql


REVOKE ALL ON hardening.tenant_key_ledger FROM PUBLIC, anon, authenticated, service_role;
REVOKE ALL ON FUNCTION hardening.record_tenant_erasure(uuid, jsonb) FROM PUBLIC, anon, authenticated, service_role;
GRANT EXECUTE ON FUNCTION hardening.record_tenant_erasure(uuid, jsonb) TO CURRENT_USER;

