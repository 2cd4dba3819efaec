-- The blocker fixes a team applies before adopting the kit on app.sql: the legacy rows and the
-- PUBLIC policy that `hardening migrate --plan` names. Run as postgres.

-- The orphaned message: its unit is gone and nobody can place it.
delete from public.messages where id = 'aaaaaaaa-0000-4000-8000-0000000000e8';

-- The misplaced unit belongs in tenant A's own development, and so does its message.
update public.units set development_id = 'aaaaaaaa-0000-4000-8000-0000000000d1'
  where id = 'aaaaaaaa-0000-4000-8000-0000000000c9';
update public.messages set development_id = 'aaaaaaaa-0000-4000-8000-0000000000d1'
  where id = 'aaaaaaaa-0000-4000-8000-0000000000e9';

-- The policy written without a role: for signed-in members only, as it was meant.
alter policy "members read developments" on public.developments to authenticated;
