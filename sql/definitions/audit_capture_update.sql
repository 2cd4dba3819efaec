-- See audit_capture_insert for the arguments. Old and new images are paired by record key;
-- FULL JOIN, so an update that changes the key still leaves both images behind.
CREATE OR REPLACE FUNCTION hardening.audit_capture_update() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = ''
AS $fn$
DECLARE
    who record := hardening.statement_identity();
    text_tenant boolean := TG_NARGS > 1 AND TG_ARGV[1] <> 'uuid';
    keys text[] := CASE WHEN TG_NARGS > 2 THEN TG_ARGV[2:] ELSE ARRAY['id'] END;
BEGIN
    INSERT INTO public.audit_events
        (actor, tenant_id, table_name, operation, record_id, before, after, db_role)
    SELECT who.actor,
           CASE WHEN NOT text_tenant OR (coalesce(a.r, b.r) ->> TG_ARGV[0]) ~* '^[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}$'
                THEN (coalesce(a.r, b.r) ->> TG_ARGV[0])::uuid END,
           TG_TABLE_NAME, 'UPDATE', coalesce(a.k, b.k), b.r, a.r, who.db_role
    FROM (SELECT i.r, CASE WHEN cardinality(keys) = 1 THEN i.r ->> keys[1]
                           ELSE hardening.record_key(i.r, keys) END AS k
          FROM (SELECT to_jsonb(o) AS r FROM old_rows o) AS i) AS b
    FULL JOIN
         (SELECT i.r, CASE WHEN cardinality(keys) = 1 THEN i.r ->> keys[1]
                           ELSE hardening.record_key(i.r, keys) END AS k
          FROM (SELECT to_jsonb(n) AS r FROM new_rows n) AS i) AS a
    ON a.k = b.k;
    RETURN NULL;
END
$fn$;
GRANT CREATE ON SCHEMA hardening TO hardening_audit_owner;
ALTER FUNCTION hardening.audit_capture_update() OWNER TO hardening_audit_owner;
REVOKE CREATE ON SCHEMA hardening FROM hardening_audit_owner;
