-- What a team changes in its own app after `hardening status` names the app's findings on
-- app.sql (each red line's fix column), run as postgres. With these and
-- `hardening service-role-mode enforce`, status is all green.

-- anon/authenticated_security_definer_function_executable: the printed fix, as printed.
REVOKE EXECUTE ON FUNCTION "public"."tenant_stats"(p_tenant uuid) FROM PUBLIC, anon; GRANT EXECUTE ON FUNCTION "public"."tenant_stats"(p_tenant uuid) TO service_role;
REVOKE EXECUTE ON FUNCTION "public"."tenant_stats"(p_tenant uuid) FROM PUBLIC, authenticated; GRANT EXECUTE ON FUNCTION "public"."tenant_stats"(p_tenant uuid) TO service_role;

-- tenant_views_security_invoker and api_roles_reach_no_tenant_data: the printed fixes.
ALTER VIEW public.message_counts SET (security_invoker = true);
REVOKE ALL ON TABLE public.message_counts FROM PUBLIC, anon;
REVOKE ALL ON SEQUENCE public.invoices_id_seq FROM PUBLIC, anon;
REVOKE SELECT, UPDATE ON SEQUENCE public.invoices_id_seq FROM PUBLIC, authenticated;
REVOKE ALL ON SEQUENCE public.legacy_accounts_id_seq FROM PUBLIC, anon;
REVOKE SELECT, UPDATE ON SEQUENCE public.legacy_accounts_id_seq FROM PUBLIC, authenticated;

-- auth_rls_initplan: auth.uid() / auth.jwt() once per statement, as (SELECT ...).
ALTER POLICY "users read their memberships" ON public.memberships
  USING (user_id = (SELECT auth.uid()));
ALTER POLICY "users read their profile" ON public.profiles
  USING (id = (SELECT auth.uid()));
ALTER POLICY "users edit their profile" ON public.profiles
  USING (id = (SELECT auth.uid())) WITH CHECK (id = (SELECT auth.uid()));
ALTER POLICY "members post messages" ON public.messages
  WITH CHECK (author_id = (SELECT auth.uid())
              AND tenant_id IN (SELECT m.tenant_id FROM public.memberships m
                                WHERE m.user_id = (SELECT auth.uid())));
ALTER POLICY "authors or admins edit messages" ON public.messages
  USING (author_id = (SELECT auth.uid())
         OR tenant_id IN (SELECT m.tenant_id FROM public.memberships m
                          WHERE m.user_id = (SELECT auth.uid()) AND m.role = 'admin'))
  WITH CHECK (tenant_id IN (SELECT m.tenant_id FROM public.memberships m
                            WHERE m.user_id = (SELECT auth.uid())));
ALTER POLICY "authors or admins delete messages" ON public.messages
  USING (author_id = (SELECT auth.uid())
         OR tenant_id IN (SELECT m.tenant_id FROM public.memberships m
                          WHERE m.user_id = (SELECT auth.uid()) AND m.role = 'admin'));
ALTER POLICY "tenant staff read onboarding" ON public.onboarding_attempts
  USING (tenant_id = ((SELECT auth.jwt()) -> 'app_metadata' ->> 'tenant_id')::uuid);
ALTER POLICY "legacy accounts by claim" ON public.legacy_accounts
  USING (tenant_id = (SELECT auth.jwt()) -> 'app_metadata' ->> 'legacy_account');

-- multiple_permissive_policies: reading stays with "members read ...", the admins' policies
-- keep only the writes, so one permissive policy answers each SELECT.
DROP POLICY "admins manage developments" ON public.developments;
DROP POLICY "admins manage units" ON public.units;
DO $split$
DECLARE
    t text;
    cmd text;
    admin_of text := 'tenant_id IN (SELECT m.tenant_id FROM public.memberships m '
                     'WHERE m.user_id = (SELECT auth.uid()) AND m.role = ''admin'')';
BEGIN
    FOREACH t IN ARRAY ARRAY['developments', 'units'] LOOP
        FOREACH cmd IN ARRAY ARRAY['insert', 'update', 'delete'] LOOP
            EXECUTE format('CREATE POLICY %I ON public.%I FOR %s TO authenticated %s',
                           'admins ' || cmd || ' ' || t, t, cmd,
                           CASE cmd
                               WHEN 'insert' THEN format('WITH CHECK (%s)', admin_of)
                               WHEN 'update' THEN format('USING (%s) WITH CHECK (%s)', admin_of, admin_of)
                               ELSE format('USING (%s)', admin_of)
                           END);
        END LOOP;
    END LOOP;
END
$split$;
