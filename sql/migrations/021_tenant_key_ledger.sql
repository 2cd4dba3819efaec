-- 021_tenant_key_ledger: the database's copy of the tenant key ledger, and erasures on the record.
--
-- Each tenant's backup objects are encrypted under the tenant's own data key, wrapped by the
-- master key and kept in the key ledger (backup/tenant_keys.py, docs/backup-format.md). The
-- ledger lives in the backup store and, as a second copy, in this one-row table: the signed
-- ledger document exactly as the store holds it. Backups leave this table out of every backup
-- object (a wrapped tenant key inside a locked backup could never be destroyed).
--
-- hardening.record_tenant_erasure() puts an erasure on the audit log: one row, operation
-- DELETE on hardening.tenant_key_ledger, whose before image names the tenant, the destroyed key
-- id and the backups affected (never key material). It runs as the audit owner, the one role
-- that may insert audit rows, and only the role that migrates may call it.

DO $member$
BEGIN
    IF NOT (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user) THEN
        EXECUTE format('GRANT hardening_audit_owner TO %I', current_user);
    END IF;
END
$member$;

CREATE TABLE hardening.tenant_key_ledger (
    id          smallint PRIMARY KEY CHECK (id = 1),
    version     bigint NOT NULL CHECK (version > 0),
    document    text NOT NULL,
    written_at  timestamptz NOT NULL DEFAULT pg_catalog.now()
);

CREATE FUNCTION hardening.record_tenant_erasure(erased_tenant uuid, details jsonb) RETURNS bigint
LANGUAGE sql SECURITY DEFINER
SET search_path = ''
AS $fn$
    INSERT INTO public.audit_events
        (actor, tenant_id, table_name, operation, record_id, before, after, db_role)
    VALUES ('hardening:erase-tenant', erased_tenant, 'hardening.tenant_key_ledger', 'DELETE',
            erased_tenant::text, details, NULL, session_user)
    RETURNING id;
$fn$;

GRANT CREATE ON SCHEMA hardening TO hardening_audit_owner;
ALTER FUNCTION hardening.record_tenant_erasure(uuid, jsonb) OWNER TO hardening_audit_owner;
REVOKE CREATE ON SCHEMA hardening FROM hardening_audit_owner;

DO $close$
DECLARE
    grantees text := concat_ws(', ', 'PUBLIC',
        (SELECT string_agg(quote_ident(r), ', ')
         FROM unnest(ARRAY['anon', 'authenticated', 'service_role']) AS r
         WHERE EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = r)));
BEGIN
    EXECUTE format('REVOKE ALL ON hardening.tenant_key_ledger FROM %s', grantees);
    EXECUTE format('REVOKE ALL ON FUNCTION hardening.record_tenant_erasure(uuid, jsonb) FROM %s',
                   grantees);
    EXECUTE format('GRANT EXECUTE ON FUNCTION hardening.record_tenant_erasure(uuid, jsonb) TO %I',
                   current_user);
END
$close$;

DO $member$
BEGIN
    IF NOT (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user) THEN
        EXECUTE format('REVOKE hardening_audit_owner FROM %I', current_user);
    END IF;
END
$member$;
