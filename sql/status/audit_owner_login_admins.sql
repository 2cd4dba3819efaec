-- Login roles that could grant themselves the membership: ADMIN OPTION on it, or (before PG16)
-- CREATEROLE. That is the migration role on Supabase; the trust model trusts it like the owner.
SELECT r.rolname
FROM pg_catalog.pg_roles r
WHERE r.rolcanlogin AND NOT r.rolsuper
  AND (EXISTS (SELECT 1 FROM pg_catalog.pg_auth_members m
               WHERE m.roleid = %(owner)s::regrole AND m.member = r.oid AND m.admin_option)
       OR (r.rolcreaterole AND current_setting('server_version_num')::int < 160000))
ORDER BY 1
