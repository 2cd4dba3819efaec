-- The relation an object of the given catalog belongs to (a table, index, trigger, policy,
-- constraint, rule or column default), or NULL.
CREATE OR REPLACE FUNCTION hardening.ddl_object_table(catalog oid, object oid) RETURNS oid
LANGUAGE sql STABLE
SET search_path = ''
AS $fn$
    SELECT CASE
        WHEN catalog = 'pg_catalog.pg_class'::regclass THEN object
        WHEN catalog = 'pg_catalog.pg_trigger'::regclass THEN
            (SELECT t.tgrelid FROM pg_catalog.pg_trigger t WHERE t.oid = object)
        WHEN catalog = 'pg_catalog.pg_policy'::regclass THEN
            (SELECT p.polrelid FROM pg_catalog.pg_policy p WHERE p.oid = object)
        WHEN catalog = 'pg_catalog.pg_constraint'::regclass THEN
            (SELECT k.conrelid FROM pg_catalog.pg_constraint k WHERE k.oid = object)
        WHEN catalog = 'pg_catalog.pg_rewrite'::regclass THEN
            (SELECT r.ev_class FROM pg_catalog.pg_rewrite r WHERE r.oid = object)
        WHEN catalog = 'pg_catalog.pg_attrdef'::regclass THEN
            (SELECT a.adrelid FROM pg_catalog.pg_attrdef a WHERE a.oid = object)
    END
$fn$;
GRANT CREATE ON SCHEMA hardening TO hardening_audit_owner;
ALTER FUNCTION hardening.ddl_object_table(oid, oid) OWNER TO hardening_audit_owner;
REVOKE CREATE ON SCHEMA hardening FROM hardening_audit_owner;
