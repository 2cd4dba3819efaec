CREATE OR REPLACE FUNCTION hardening.lock_down_tenant_table(target regclass) RETURNS void
LANGUAGE plpgsql
SET search_path = ''
AS $fn$
DECLARE
    grantees text := concat_ws(', ', 'PUBLIC',
        (SELECT string_agg(quote_ident(r), ', ')
         FROM unnest(ARRAY['authenticated', 'service_role']) AS r
         WHERE EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = r)));
    lent_owner boolean := false;
BEGIN
    PERFORM hardening.refuse_open_policies(ARRAY[target]);

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
