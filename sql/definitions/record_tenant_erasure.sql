CREATE OR REPLACE FUNCTION hardening.record_tenant_erasure(erased_tenant uuid, details jsonb) RETURNS bigint
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
