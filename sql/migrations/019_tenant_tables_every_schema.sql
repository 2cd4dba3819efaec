-- 019_tenant_tables_every_schema: tenant tables outside public get what public's got.
--
-- 002 (audit capture), 004 (RLS lockdown) and 017 (no TRIGGER/REFERENCES/TRUNCATE for the API
-- roles) found tenant tables in public only. An app that keeps some in a schema of its own
-- (billing.payouts with a tenant_id) and exposes that schema to the API kept them open: RLS
-- off, anon's grants in place, writes not audited, DDL not recorded. A tenant table is now
-- every table with a tenant_id column in any schema of the app: not Postgres' own (pg_*,
-- information_schema), not those Supabase manages, not the kit's; not an extension's table.
-- hardening.tenant_schema() says which schemas count; hardening_pipeline/db/tenant_tables.py
-- (NOT_APP_SCHEMAS) holds the same list for status, the backup and the restore, and a test
-- keeps the two equal.
--
-- hardening.lock_down_tenant_table(table) does for one table what 002, 004 and 017 do for
-- public's: refuses (and changes nothing) when a policy applies to anon or PUBLIC; enables and
-- forces RLS; takes every privilege from anon and TRIGGER, REFERENCES, TRUNCATE from PUBLIC,
-- authenticated and service_role; indexes tenant_id; installs the audit guard and capture
-- triggers unless they are there. It adds no policy (like 004 for a table it did not create):
-- authenticated sees no rows until the app gives it one, and status says so. It runs here for
-- every tenant table outside public, and status prints it as the fix for one created later.
-- Invoker rights: only the migration role (the tables' owner) may run it.
--
-- DDL: hardening.ddl_audited_table() (016) now counts a table with a tenant_id in any of these
-- schemas, so DDL on it is on the record where 016's event triggers are installed.

-- As in 016: a migration role that is not a superuser acts through the audit owner for the
-- length of this file, to hand the new DDL filter to it.
DO $member$
BEGIN
    IF NOT (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user) THEN
        EXECUTE format('GRANT hardening_audit_owner TO %I', current_user);
    END IF;
END
$member$;

CREATE FUNCTION hardening.tenant_schema(schema_name name) RETURNS boolean
LANGUAGE sql IMMUTABLE
SET search_path = ''
AS $fn$
    SELECT schema_name NOT LIKE 'pg\_%'
       AND NOT (schema_name = ANY (ARRAY[
           'pg_catalog', 'information_schema', 'pg_toast',
           'auth', 'storage', 'realtime', 'extensions', 'graphql', 'graphql_public', 'pgbouncer',
           'vault', 'supabase_functions', 'supabase_migrations', 'net', 'pgsodium',
           'pgsodium_masks', 'cron',
           'hardening']::name[]))
$fn$;

-- Every tenant table, public's included (audit_events too: it has a tenant_id).
CREATE FUNCTION hardening.tenant_tables() RETURNS SETOF regclass
LANGUAGE sql STABLE
SET search_path = ''
AS $fn$
    SELECT c.oid::regclass
    FROM pg_catalog.pg_class c
    JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
    JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attname = 'tenant_id'
        AND NOT a.attisdropped
    WHERE c.relkind IN ('r', 'p') AND hardening.tenant_schema(n.nspname)
      AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d
                      WHERE d.classid = 'pg_catalog.pg_class'::regclass AND d.objid = c.oid
                        AND d.deptype = 'e')
    ORDER BY n.nspname, c.relname
$fn$;

CREATE FUNCTION hardening.lock_down_tenant_table(target regclass) RETURNS void
LANGUAGE plpgsql
SET search_path = ''
AS $fn$
DECLARE
    offending text;
    grantees text := concat_ws(', ', 'PUBLIC',
        (SELECT string_agg(quote_ident(r), ', ')
         FROM unnest(ARRAY['authenticated', 'service_role']) AS r
         WHERE EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = r)));
    lent_owner boolean := false;
BEGIN
    SELECT string_agg(format('%I on %s', p.polname, target), ', ')
    INTO offending
    FROM pg_catalog.pg_policy p
    WHERE p.polrelid = target
      AND (0::oid = ANY (p.polroles)
           OR (SELECT oid FROM pg_catalog.pg_roles WHERE rolname = 'anon') = ANY (p.polroles));
    IF offending IS NOT NULL THEN
        RAISE EXCEPTION 'policies apply to anon or PUBLIC and would keep tenant data open: %; nothing was changed', offending
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'Recreate each policy with TO authenticated (or drop it), then run hardening migrate again.';
    END IF;

    EXECUTE format('ALTER TABLE %s ENABLE ROW LEVEL SECURITY', target);
    EXECUTE format('ALTER TABLE %s FORCE ROW LEVEL SECURITY', target);
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'anon') THEN
        EXECUTE format('REVOKE ALL ON %s FROM anon', target);
    END IF;
    EXECUTE format('REVOKE TRIGGER, REFERENCES, TRUNCATE ON %s FROM %s', target, grantees);
    IF NOT EXISTS (
        SELECT 1 FROM pg_catalog.pg_index i
        JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
        WHERE i.indrelid = target AND a.attname = 'tenant_id'
    ) THEN
        EXECUTE format('CREATE INDEX %I ON %s (tenant_id)',
                       hardening.free_name(target,
                           (SELECT relname FROM pg_catalog.pg_class WHERE oid = target)
                           || '_tenant_id_idx'),
                       target);
    END IF;

    IF NOT EXISTS (
        SELECT 1 FROM pg_catalog.pg_trigger t
        JOIN pg_catalog.pg_proc p ON p.oid = t.tgfoid
        WHERE t.tgrelid = target AND p.pronamespace = 'hardening'::regnamespace
          AND p.proname = 'audit_write_guard'
    ) THEN
        -- Creating a trigger takes EXECUTE on its function, which only the audit owner holds
        -- (015); a migration role that is not a superuser borrows it for this call, as 016 does
        -- for a file, and gives it back before returning.
        IF NOT (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user)
           AND NOT pg_catalog.pg_has_role(current_user, 'hardening_audit_owner', 'USAGE') THEN
            EXECUTE format('GRANT hardening_audit_owner TO %I', current_user);
            lent_owner := true;
        END IF;
        PERFORM hardening.install_audit_capture(target, 'tenant_id');
        IF lent_owner THEN
            EXECUTE format('REVOKE hardening_audit_owner FROM %I', current_user);
        END IF;
    END IF;
END
$fn$;

DO $close$
DECLARE
    grantees text := concat_ws(', ', 'PUBLIC',
        (SELECT string_agg(quote_ident(r), ', ')
         FROM unnest(ARRAY['anon', 'authenticated', 'service_role']) AS r
         WHERE EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = r)));
BEGIN
    EXECUTE format('REVOKE ALL ON FUNCTION hardening.tenant_schema(name), '
                   'hardening.tenant_tables(), hardening.lock_down_tenant_table(regclass) '
                   'FROM %s', grantees);
END
$close$;

-- Public's tenant tables were locked down by 002, 004 and 017.
SELECT hardening.lock_down_tenant_table(t)
FROM hardening.tenant_tables() AS t
JOIN pg_catalog.pg_class c ON c.oid = t
WHERE c.relnamespace <> 'public'::regnamespace;

-- 016's filter, with tenant tables found in every schema of the app. The audit owner runs it
-- (from the SECURITY DEFINER event trigger functions), so it owns hardening.tenant_schema()
-- as well.
GRANT CREATE ON SCHEMA hardening TO hardening_audit_owner;
ALTER FUNCTION hardening.tenant_schema(name) OWNER TO hardening_audit_owner;
REVOKE CREATE ON SCHEMA hardening FROM hardening_audit_owner;
-- hardening.tenant_tables() and lock_down_tenant_table's callers run as the migration role.
GRANT EXECUTE ON FUNCTION hardening.tenant_schema(name) TO CURRENT_USER;

CREATE OR REPLACE FUNCTION hardening.ddl_audited_table(rel oid) RETURNS oid
LANGUAGE sql STABLE
SET search_path = ''
AS $fn$
    WITH owning AS (
        SELECT coalesce(
            (SELECT i.indrelid FROM pg_catalog.pg_index i WHERE i.indexrelid = rel),
            (SELECT d.refobjid FROM pg_catalog.pg_depend d
             WHERE d.classid = 'pg_catalog.pg_class'::regclass AND d.objid = rel
               AND d.refclassid = 'pg_catalog.pg_class'::regclass AND d.refobjsubid > 0
               AND d.deptype IN ('a', 'i')
             LIMIT 1),
            (SELECT c.oid FROM pg_catalog.pg_class c WHERE c.reltoastrelid = rel),
            rel) AS oid
    )
    SELECT c.oid
    FROM owning o
    JOIN pg_catalog.pg_class c ON c.oid = o.oid
    JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
    WHERE (n.nspname = 'public' AND c.relname = 'audit_events')
       OR (n.nspname = 'hardening' AND c.relname IN ('audit_seals', 'audit_seal_checks'))
       OR (n.nspname = 'public' AND c.relkind IN ('r', 'p')
           AND EXISTS (SELECT 1 FROM hardening.managed_tables m WHERE m.table_name = c.relname))
       OR (c.relkind IN ('r', 'p') AND hardening.tenant_schema(n.nspname)
           AND EXISTS (SELECT 1 FROM pg_catalog.pg_attribute a
                       WHERE a.attrelid = c.oid AND a.attname = 'tenant_id'
                         AND NOT a.attisdropped))
       OR EXISTS (SELECT 1 FROM pg_catalog.pg_trigger t
                  JOIN pg_catalog.pg_proc p ON p.oid = t.tgfoid
                  JOIN pg_catalog.pg_namespace pn ON pn.oid = p.pronamespace
                  WHERE t.tgrelid = c.oid AND pn.nspname = 'hardening'
                    AND p.proname IN ('audit_write_guard', 'audit_capture_insert',
                                      'audit_capture_update', 'audit_capture_delete',
                                      'audit_capture_truncate'))
$fn$;

DO $member$
BEGIN
    IF NOT (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user) THEN
        EXECUTE format('REVOKE hardening_audit_owner FROM %I', current_user);
    END IF;
END
$member$;
