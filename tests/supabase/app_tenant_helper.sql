-- A later change to the app (run as postgres, after app_fixes.sql, before the kit): the
-- membership lookup moved into a SECURITY DEFINER helper, the usual Supabase pattern for
-- policies that read another RLS table, and the messages policies call it. Supabase's default
-- privileges give anon, authenticated and service_role EXECUTE on it, so splinter 0028/0029
-- report it; revoking EXECUTE from authenticated would make every read of messages fail.

create function public.user_tenant_ids()
returns setof uuid
language sql stable security definer
set search_path = ''
as $$
  select m.tenant_id from public.memberships m where m.user_id = auth.uid()
$$;

alter policy "members read messages" on public.messages
  using (tenant_id in (select public.user_tenant_ids()));
alter policy "members post messages" on public.messages
  with check (author_id = auth.uid() and tenant_id in (select public.user_tenant_ids()));
