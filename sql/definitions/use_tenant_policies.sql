-- Switches the kit's tenant policies (named in hardening.managed_tables by 001) between the
-- one-tenant form and the set form a membership resolver needs. hardening tenant-resolver calls
-- it in the same transaction that changes the resolver.
CREATE OR REPLACE FUNCTION hardening.use_tenant_policies(many_tenants boolean) RETURNS void
LANGUAGE plpgsql
SET search_path = ''
AS $fn$
DECLARE
    t record;
    tenant text;
BEGIN
    tenant := CASE WHEN many_tenants
                   THEN '= ANY ((SELECT hardening.current_tenant_ids())::uuid[])'
                   ELSE '= (SELECT hardening.current_tenant_id())' END;
    FOR t IN
        SELECT m.table_name, m.tenant_policy FROM hardening.managed_tables m
        WHERE m.tenant_policy IS NOT NULL AND EXISTS (
            SELECT 1 FROM pg_catalog.pg_policy p
            WHERE p.polrelid = to_regclass('public.' || quote_ident(m.table_name))
              AND p.polname = m.tenant_policy)
        ORDER BY m.table_name
    LOOP
        IF t.table_name = 'tenants' THEN
            EXECUTE format('ALTER POLICY %I ON public.tenants USING (id %s)',
                           t.tenant_policy, tenant);
        ELSE
            EXECUTE format('ALTER POLICY %I ON public.%I USING (tenant_id %s) '
                           'WITH CHECK (tenant_id %s)',
                           t.tenant_policy, t.table_name, tenant, tenant);
        END IF;
    END LOOP;
END
$fn$;
