-- A login role that is a member (directly or through other roles) and may SET ROLE to it or
-- inherits it. PG16 added the SET option; before it, membership alone allows SET ROLE.
SELECT r.rolname
FROM pg_catalog.pg_roles r
WHERE r.rolcanlogin AND NOT r.rolsuper AND r.rolname <> %(owner)s
  AND (pg_catalog.pg_has_role(r.oid, %(owner)s, 'USAGE')
       OR pg_catalog.pg_has_role(r.oid, %(owner)s,
              CASE WHEN current_setting('server_version_num')::int >= 160000
                   THEN 'SET' ELSE 'MEMBER' END))
ORDER BY 1
