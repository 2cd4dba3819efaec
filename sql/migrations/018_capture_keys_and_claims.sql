-- 018_capture_keys_and_claims: one reading of the JWT claims that never raises, audit rows keyed
-- on the table's primary key, and the service-role rule applied to the role that issued the
-- statement. The guard and the four capture functions are defined here in full; this is the
-- version a migrated database runs (002, 007, 009, 011 and 015 hold their history).
--
-- Claims. request.jwt.claims was cast to jsonb in five places; text that is not JSON made every
-- query on a tenant table raise. hardening.request_claims() reads it once: NULL when there are
-- no claims, an empty object when the text is not a JSON object. Present but unreadable claims
-- still win over app.tenant_id and app.actor, so they resolve to no tenant (the kit's policies
-- see no rows and refuse every write) and the actor is db:<role>, as for claims without a sub.
--
-- Record keys. The capture paired the old and new images of an UPDATE by a column named id, so
-- a table keyed otherwise (memberships (tenant_id, user_id)) got two half rows with record_id
-- NULL. The capture triggers of such a table now carry its primary key:
--   arguments  (tenant column, 'uuid' | 'text', key column, ...); one or two arguments (002,
--              011) mean the key is the column id, as before;
--   record_id  one key column: its value as text (an id primary key reads exactly as before);
--              several: the key as a JSON object, e.g. {"user_id": "…", "tenant_id": "…"}, in
--              jsonb's own text form (keys ordered by length, then bytes), so equal keys are
--              equal text; no primary key: the column id, as before.
-- The key is read from the trigger's arguments, not from the catalog per statement, and a table
-- keyed by id (one or two arguments) runs 015's statement unchanged: its capture costs the same.
--
-- Service-role rule. The guard ran with invoker rights and tested current_user, which a
-- SECURITY DEFINER function changes to its owner: service_role calling such a function wrote
-- without an actor in enforce mode, audited as service_role:unattributed and noted nowhere.
-- The guard now tests the statement's role, the same one the capture records (015: the role
-- setting, else session_user; a SECURITY DEFINER function changes neither), and runs as the
-- audit owner so it can consult the mode whoever owns the function in between.

-- A migration role that is not a superuser acts through the audit owner for the length of this
-- file (as in 016; taken away again at the end).
DO $member$
BEGIN
    IF NOT (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user) THEN
        EXECUTE format('GRANT hardening_audit_owner TO %I', current_user);
    END IF;
END
$member$;

-- Replacing the capture functions is DDL on every audited table (016). Where the audit log
-- already holds rows it goes on the record like any other; on a log still empty (a new install)
-- the event triggers are paused for this file's transaction, so a new database starts with an
-- empty log. Paused only if both are ENABLE ALWAYS and this role may alter them; resumed at the
-- end of the file. The log is read with row security off (015 lets this role read it); a log
-- this role cannot read counts as holding rows.
DO $pause$
DECLARE
    empty_log boolean;
    prior_row_security text := current_setting('row_security');
BEGIN
    PERFORM set_config('row_security', 'off', true);
    BEGIN
        empty_log := NOT EXISTS (SELECT 1 FROM public.audit_events);
    EXCEPTION WHEN insufficient_privilege THEN
        empty_log := false;
    END;
    PERFORM set_config('row_security', prior_row_security, true);
    IF empty_log
       AND (SELECT count(*) FROM pg_catalog.pg_event_trigger e
            WHERE e.evtname IN ('hardening_record_ddl', 'hardening_record_ddl_drop')
              AND e.evtenabled = 'A'
              AND pg_catalog.pg_has_role(current_user, e.evtowner, 'USAGE')) = 2 THEN
        ALTER EVENT TRIGGER hardening_record_ddl DISABLE;
        ALTER EVENT TRIGGER hardening_record_ddl_drop DISABLE;
        PERFORM set_config('hardening.ddl_recording_paused', 'on', true);
    END IF;
END
$pause$;

CREATE FUNCTION hardening.request_claims() RETURNS jsonb
LANGUAGE plpgsql STABLE
SET search_path = ''
AS $fn$
DECLARE
    raw text := nullif(current_setting('request.jwt.claims', true), '');
    parsed jsonb;
BEGIN
    IF raw IS NULL THEN
        RETURN NULL;
    END IF;
    BEGIN
        parsed := raw::jsonb;
    EXCEPTION WHEN data_exception OR program_limit_exceeded THEN
        RETURN '{}'::jsonb;
    END;
    RETURN CASE WHEN pg_catalog.jsonb_typeof(parsed) = 'object' THEN parsed ELSE '{}'::jsonb END;
END
$fn$;

CREATE OR REPLACE FUNCTION hardening.current_actor() RETURNS text
LANGUAGE sql STABLE
SET search_path = ''
AS $fn$
    SELECT CASE
        WHEN hardening.statement_role() = 'service_role' THEN
            CASE WHEN current_setting('app.actor', true)
                      ~ '^service_role:[A-Za-z0-9._:@/+#=-]{1,200}$'
                 THEN current_setting('app.actor', true)
                 ELSE 'service_role:unattributed' END
        WHEN nullif(current_setting('request.jwt.claims', true), '') IS NOT NULL THEN
            coalesce('jwt:' || (hardening.request_claims() ->> 'sub'),
                     'db:' || hardening.statement_role())
        ELSE coalesce(nullif(pg_catalog.regexp_replace(current_setting('app.actor', true),
                                                       '^service_role:.*', ''), ''),
                      'db:' || hardening.statement_role())
    END
$fn$;

-- The resolver (011), reading the claims through hardening.request_claims().
CREATE OR REPLACE FUNCTION hardening.membership_tenant_ids() RETURNS uuid[]
LANGUAGE plpgsql STABLE
SET search_path = ''
AS $fn$
DECLARE
    r hardening.tenant_resolver;
    sub text := hardening.request_claims() ->> 'sub';
    user_type text;
    found text[];
BEGIN
    SELECT * INTO r FROM hardening.tenant_resolver;
    IF sub IS NULL OR r.kind IS DISTINCT FROM 'membership' THEN
        RETURN '{}';
    END IF;
    SELECT format_type(a.atttypid, a.atttypmod) INTO user_type
    FROM pg_catalog.pg_attribute a
    WHERE a.attrelid = to_regclass(format('%I.%I', r.membership_schema, r.membership_table))
      AND a.attname = r.user_column AND NOT a.attisdropped;
    IF user_type IS NULL THEN
        RETURN '{}';  -- the table or column went away: fail closed
    END IF;
    IF user_type = 'uuid' THEN
        -- Compared as uuid so the membership key's index is used; a sub that is no uuid matches
        -- no one.
        IF hardening.as_uuid(sub) IS NULL THEN
            RETURN '{}';
        END IF;
        EXECUTE format('SELECT array_agg(DISTINCT m.%I::text) FROM %I.%I m WHERE m.%I = $1::uuid',
                       r.tenant_column, r.membership_schema, r.membership_table, r.user_column)
        INTO found USING sub;
    ELSE
        EXECUTE format('SELECT array_agg(DISTINCT m.%I::text) FROM %I.%I m WHERE m.%I::text = $1',
                       r.tenant_column, r.membership_schema, r.membership_table, r.user_column)
        INTO found USING sub;
    END IF;
    RETURN coalesce((SELECT array_agg(hardening.as_uuid(t)) FROM unnest(found) AS t
                     WHERE hardening.as_uuid(t) IS NOT NULL), '{}');
END
$fn$;

CREATE OR REPLACE FUNCTION hardening.current_tenant_ids() RETURNS uuid[]
LANGUAGE plpgsql STABLE
SET search_path = ''
AS $fn$
DECLARE
    claims jsonb := hardening.request_claims();
    r hardening.tenant_resolver;
    path text;
    value text;
BEGIN
    -- The uuid test is written out rather than calling hardening.as_uuid: a LANGUAGE sql
    -- function with SET search_path is parsed and planned again in every transaction.
    IF claims IS NULL THEN
        value := nullif(current_setting('app.tenant_id', true), '');
        RETURN CASE WHEN value ~* '^[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}$'
                    THEN ARRAY[value::uuid] ELSE '{}'::uuid[] END;
    END IF;
    SELECT * INTO r FROM hardening.tenant_resolver;
    IF r.kind = 'membership' THEN
        RETURN hardening.membership_tenant_ids();
    END IF;
    -- The first path present decides: a malformed value there is no tenant, not a fallthrough.
    FOREACH path IN ARRAY coalesce(r.claim_paths, ARRAY['tenant_id', 'app_metadata.tenant_id'])
    LOOP
        value := claims #>> string_to_array(path, '.');
        IF value IS NOT NULL THEN
            RETURN CASE WHEN value ~* '^[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}$'
                        THEN ARRAY[value::uuid] ELSE '{}'::uuid[] END;
        END IF;
    END LOOP;
    RETURN '{}';
END
$fn$;
-- current_tenant_id() (011) only tests whether claims are present, and leaves reading them to
-- current_tenant_ids(): it is unchanged.

-- The guard: see the head of this file. 'service_role:unattributed' is the marker report mode
-- leaves in app.actor for the rest of the transaction; set by hand it is no actor (012, 015).
CREATE OR REPLACE FUNCTION hardening.audit_write_guard() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = ''
AS $fn$
DECLARE
    statement_role text := CASE current_setting('role') WHEN 'none' THEN session_user::text
                                ELSE current_setting('role') END;
BEGIN
    IF statement_role = 'service_role'
       AND (coalesce(current_setting('app.actor', true), '')
                !~ '^service_role:[A-Za-z0-9._:@/+#=-]{1,200}$'
            OR current_setting('app.actor', true) = 'service_role:unattributed') THEN
        IF NOT hardening.allow_unattributed_write(TG_TABLE_NAME, TG_OP) THEN
            RAISE EXCEPTION 'service_role write to %.% without an actor is refused',
                    TG_TABLE_SCHEMA, TG_TABLE_NAME
                USING ERRCODE = 'insufficient_privilege',
                      HINT = 'Write through TenantScopedClient, which sets app.actor to '
                             'service_role:<name> (the service-role rule is in enforce mode; '
                             'it holds inside SECURITY DEFINER functions too).';
        END IF;
        PERFORM set_config('app.actor', 'service_role:unattributed', true);
    END IF;
    RETURN NULL;
END
$fn$;

-- The capture. Role and actor are written out inline (hardening.statement_role() and
-- hardening.current_actor() above), read once per statement with built-in functions only: a
-- LANGUAGE sql function call here is parsed again in every transaction (009). The claims are
-- read through hardening.request_claims() only when there are claims.
CREATE OR REPLACE FUNCTION hardening.audit_capture_insert() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = ''
AS $fn$
DECLARE
    statement_role text := CASE current_setting('role') WHEN 'none' THEN session_user::text
                                ELSE current_setting('role') END;
    statement_actor text := CASE
        WHEN statement_role = 'service_role' THEN
            CASE WHEN current_setting('app.actor', true)
                      ~ '^service_role:[A-Za-z0-9._:@/+#=-]{1,200}$'
                 THEN current_setting('app.actor', true)
                 ELSE 'service_role:unattributed' END
        WHEN nullif(current_setting('request.jwt.claims', true), '') IS NOT NULL THEN
            coalesce('jwt:' || (hardening.request_claims() ->> 'sub'), 'db:' || statement_role)
        ELSE coalesce(nullif(pg_catalog.regexp_replace(current_setting('app.actor', true),
                                               '^service_role:.*', ''), ''),
                      'db:' || statement_role)
    END;
    uuid_tenant boolean := TG_NARGS < 2 OR TG_ARGV[1] = 'uuid';
    key_columns text[];
BEGIN
    IF TG_NARGS <= 2 THEN
        INSERT INTO public.audit_events
            (actor, tenant_id, table_name, operation, record_id, before, after, db_role)
        SELECT statement_actor,
               CASE WHEN uuid_tenant OR (r ->> TG_ARGV[0]) ~* '^[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}$'
                    THEN (r ->> TG_ARGV[0])::uuid END,
               TG_TABLE_NAME, 'INSERT', r ->> 'id', NULL, r, statement_role
        FROM (SELECT to_jsonb(n) AS r FROM new_rows n) AS captured;
        RETURN NULL;
    END IF;
    key_columns := TG_ARGV[2:];
    INSERT INTO public.audit_events
        (actor, tenant_id, table_name, operation, record_id, before, after, db_role)
    SELECT statement_actor,
           CASE WHEN uuid_tenant OR (r ->> TG_ARGV[0]) ~* '^[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}$'
                THEN (r ->> TG_ARGV[0])::uuid END,
           TG_TABLE_NAME, 'INSERT',
           CASE WHEN cardinality(key_columns) = 1 THEN r ->> key_columns[1]
                     ELSE (SELECT pg_catalog.jsonb_object_agg(c, r -> c)
                           FROM pg_catalog.unnest(key_columns) AS c)::text END,
           NULL, r, statement_role
    FROM (SELECT to_jsonb(n) AS r FROM new_rows n) AS captured;
    RETURN NULL;
END
$fn$;

CREATE OR REPLACE FUNCTION hardening.audit_capture_update() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = ''
AS $fn$
DECLARE
    statement_role text := CASE current_setting('role') WHEN 'none' THEN session_user::text
                                ELSE current_setting('role') END;
    statement_actor text := CASE
        WHEN statement_role = 'service_role' THEN
            CASE WHEN current_setting('app.actor', true)
                      ~ '^service_role:[A-Za-z0-9._:@/+#=-]{1,200}$'
                 THEN current_setting('app.actor', true)
                 ELSE 'service_role:unattributed' END
        WHEN nullif(current_setting('request.jwt.claims', true), '') IS NOT NULL THEN
            coalesce('jwt:' || (hardening.request_claims() ->> 'sub'), 'db:' || statement_role)
        ELSE coalesce(nullif(pg_catalog.regexp_replace(current_setting('app.actor', true),
                                               '^service_role:.*', ''), ''),
                      'db:' || statement_role)
    END;
    uuid_tenant boolean := TG_NARGS < 2 OR TG_ARGV[1] = 'uuid';
    key_columns text[];
BEGIN
    -- Old and new images are paired by record key; FULL JOIN so an update that changes the key
    -- still leaves both images behind.
    IF TG_NARGS <= 2 THEN
        INSERT INTO public.audit_events
            (actor, tenant_id, table_name, operation, record_id, before, after, db_role)
        SELECT statement_actor,
               CASE WHEN uuid_tenant OR (coalesce(a.r, b.r) ->> TG_ARGV[0]) ~* '^[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}$'
                    THEN (coalesce(a.r, b.r) ->> TG_ARGV[0])::uuid END,
               TG_TABLE_NAME, 'UPDATE', coalesce(a.r, b.r) ->> 'id', b.r, a.r, statement_role
        FROM (SELECT to_jsonb(o) AS r FROM old_rows o) AS b
        FULL JOIN (SELECT to_jsonb(n) AS r FROM new_rows n) AS a ON (a.r ->> 'id') = (b.r ->> 'id');
        RETURN NULL;
    END IF;
    key_columns := TG_ARGV[2:];
    INSERT INTO public.audit_events
        (actor, tenant_id, table_name, operation, record_id, before, after, db_role)
    SELECT statement_actor,
           CASE WHEN uuid_tenant OR (coalesce(a.r, b.r) ->> TG_ARGV[0]) ~* '^[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}$'
                THEN (coalesce(a.r, b.r) ->> TG_ARGV[0])::uuid END,
           TG_TABLE_NAME, 'UPDATE', coalesce(a.k, b.k), b.r, a.r, statement_role
    FROM (SELECT r, CASE WHEN cardinality(key_columns) = 1 THEN r ->> key_columns[1]
                     ELSE (SELECT pg_catalog.jsonb_object_agg(c, r -> c)
                           FROM pg_catalog.unnest(key_columns) AS c)::text END AS k
          FROM (SELECT to_jsonb(o) AS r FROM old_rows o) AS o) AS b
    FULL JOIN
         (SELECT r, CASE WHEN cardinality(key_columns) = 1 THEN r ->> key_columns[1]
                     ELSE (SELECT pg_catalog.jsonb_object_agg(c, r -> c)
                           FROM pg_catalog.unnest(key_columns) AS c)::text END AS k
          FROM (SELECT to_jsonb(n) AS r FROM new_rows n) AS n) AS a
    ON a.k = b.k;
    RETURN NULL;
END
$fn$;

CREATE OR REPLACE FUNCTION hardening.audit_capture_delete() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = ''
AS $fn$
DECLARE
    statement_role text := CASE current_setting('role') WHEN 'none' THEN session_user::text
                                ELSE current_setting('role') END;
    statement_actor text := CASE
        WHEN statement_role = 'service_role' THEN
            CASE WHEN current_setting('app.actor', true)
                      ~ '^service_role:[A-Za-z0-9._:@/+#=-]{1,200}$'
                 THEN current_setting('app.actor', true)
                 ELSE 'service_role:unattributed' END
        WHEN nullif(current_setting('request.jwt.claims', true), '') IS NOT NULL THEN
            coalesce('jwt:' || (hardening.request_claims() ->> 'sub'), 'db:' || statement_role)
        ELSE coalesce(nullif(pg_catalog.regexp_replace(current_setting('app.actor', true),
                                               '^service_role:.*', ''), ''),
                      'db:' || statement_role)
    END;
    uuid_tenant boolean := TG_NARGS < 2 OR TG_ARGV[1] = 'uuid';
    key_columns text[];
BEGIN
    IF TG_NARGS <= 2 THEN
        INSERT INTO public.audit_events
            (actor, tenant_id, table_name, operation, record_id, before, after, db_role)
        SELECT statement_actor,
               CASE WHEN uuid_tenant OR (r ->> TG_ARGV[0]) ~* '^[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}$'
                    THEN (r ->> TG_ARGV[0])::uuid END,
               TG_TABLE_NAME, 'DELETE', r ->> 'id', r, NULL, statement_role
        FROM (SELECT to_jsonb(o) AS r FROM old_rows o) AS captured;
        RETURN NULL;
    END IF;
    key_columns := TG_ARGV[2:];
    INSERT INTO public.audit_events
        (actor, tenant_id, table_name, operation, record_id, before, after, db_role)
    SELECT statement_actor,
           CASE WHEN uuid_tenant OR (r ->> TG_ARGV[0]) ~* '^[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}$'
                THEN (r ->> TG_ARGV[0])::uuid END,
           TG_TABLE_NAME, 'DELETE',
           CASE WHEN cardinality(key_columns) = 1 THEN r ->> key_columns[1]
                     ELSE (SELECT pg_catalog.jsonb_object_agg(c, r -> c)
                           FROM pg_catalog.unnest(key_columns) AS c)::text END,
           r, NULL, statement_role
    FROM (SELECT to_jsonb(o) AS r FROM old_rows o) AS captured;
    RETURN NULL;
END
$fn$;

-- TRUNCATE leaves one row per statement, so it calls the two functions instead of inlining them.
CREATE OR REPLACE FUNCTION hardening.audit_capture_truncate() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = ''
AS $fn$
BEGIN
    INSERT INTO public.audit_events
        (actor, tenant_id, table_name, operation, record_id, before, after, db_role)
    VALUES (hardening.current_actor(), NULL, TG_TABLE_NAME, 'TRUNCATE', NULL, NULL, NULL,
            hardening.statement_role());
    RETURN NULL;
END
$fn$;

-- The capture triggers' arguments for a table: the tenant column, its kind, and the primary key
-- unless that is the column id (then the two arguments 011 gave, which mean exactly that).
CREATE FUNCTION hardening.audit_capture_arguments(target regclass, tenant_column text)
RETURNS text
LANGUAGE plpgsql STABLE
SET search_path = ''
AS $fn$
DECLARE
    tenant_type oid := (SELECT atttypid FROM pg_catalog.pg_attribute
                        WHERE attrelid = target AND attname = tenant_column
                          AND NOT attisdropped);
    key_columns text[] := (SELECT array_agg(a.attname::text ORDER BY k.position)
                           FROM pg_catalog.pg_index i
                           CROSS JOIN LATERAL unnest(i.indkey::int2[])
                                WITH ORDINALITY AS k(attnum, position)
                           JOIN pg_catalog.pg_attribute a
                             ON a.attrelid = i.indrelid AND a.attnum = k.attnum
                           WHERE i.indrelid = target AND i.indisprimary);
    kind text := CASE WHEN tenant_type = 'uuid'::regtype THEN 'uuid' ELSE 'text' END;
BEGIN
    IF tenant_type IS NULL THEN
        RAISE EXCEPTION '% has no column %', target, tenant_column
            USING ERRCODE = 'undefined_column';
    END IF;
    IF key_columns IS NULL OR key_columns = ARRAY['id'] THEN
        RETURN CASE kind WHEN 'uuid' THEN format('%L', tenant_column)
                         ELSE format('%L, %L', tenant_column, kind) END;
    END IF;
    RETURN format('%L, %L, ', tenant_column, kind)
        || (SELECT string_agg(format('%L', c), ', ') FROM unnest(key_columns) AS c);
END
$fn$;

CREATE OR REPLACE FUNCTION hardening.install_audit_capture(target regclass, tenant_column text)
RETURNS void
LANGUAGE plpgsql
SET search_path = ''
AS $fn$
DECLARE
    base text := (SELECT relname FROM pg_catalog.pg_class WHERE oid = target);
    args text := hardening.audit_capture_arguments(target, tenant_column);
BEGIN
    EXECUTE format('CREATE TRIGGER %I BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE ON %s '
                   'FOR EACH STATEMENT EXECUTE FUNCTION hardening.audit_write_guard()',
                   base || '_audit_guard', target);
    EXECUTE format('CREATE TRIGGER %I AFTER INSERT ON %s REFERENCING NEW TABLE AS new_rows '
                   'FOR EACH STATEMENT EXECUTE FUNCTION hardening.audit_capture_insert(%s)',
                   base || '_audit_insert', target, args);
    EXECUTE format('CREATE TRIGGER %I AFTER UPDATE ON %s '
                   'REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows '
                   'FOR EACH STATEMENT EXECUTE FUNCTION hardening.audit_capture_update(%s)',
                   base || '_audit_update', target, args);
    EXECUTE format('CREATE TRIGGER %I AFTER DELETE ON %s REFERENCING OLD TABLE AS old_rows '
                   'FOR EACH STATEMENT EXECUTE FUNCTION hardening.audit_capture_delete(%s)',
                   base || '_audit_delete', target, args);
    EXECUTE format('CREATE TRIGGER %I AFTER TRUNCATE ON %s '
                   'FOR EACH STATEMENT EXECUTE FUNCTION hardening.audit_capture_truncate()',
                   base || '_audit_truncate', target);
    EXECUTE format('ALTER TABLE %s ENABLE ALWAYS TRIGGER %I', target, base || '_audit_guard');
    EXECUTE format('ALTER TABLE %s ENABLE ALWAYS TRIGGER %I', target, base || '_audit_insert');
    EXECUTE format('ALTER TABLE %s ENABLE ALWAYS TRIGGER %I', target, base || '_audit_update');
    EXECUTE format('ALTER TABLE %s ENABLE ALWAYS TRIGGER %I', target, base || '_audit_delete');
    EXECUTE format('ALTER TABLE %s ENABLE ALWAYS TRIGGER %I', target, base || '_audit_truncate');
END
$fn$;

-- Captured tables whose primary key is not the column id: their three row triggers are rebuilt
-- with the key (same names, so the same firing order; ENABLE ALWAYS as before).
DO $rekey$
DECLARE
    t record;
    args text;
BEGIN
    FOR t IN
        SELECT tg.tgrelid::regclass AS rel, c.relname,
               split_part(encode(tg.tgargs, 'escape'), '\000', 1) AS tenant_column
        FROM pg_catalog.pg_trigger tg
        JOIN pg_catalog.pg_class c ON c.oid = tg.tgrelid
        JOIN pg_catalog.pg_proc p ON p.oid = tg.tgfoid
        JOIN pg_catalog.pg_index i ON i.indrelid = tg.tgrelid AND i.indisprimary
        WHERE p.oid = 'hardening.audit_capture_insert()'::regprocedure
          AND tg.tgnargs <= 2
          AND NOT (i.indnatts = 1
                   AND (SELECT a.attname FROM pg_catalog.pg_attribute a
                        WHERE a.attrelid = i.indrelid AND a.attnum = i.indkey[0]) = 'id')
        ORDER BY c.relname
    LOOP
        args := hardening.audit_capture_arguments(t.rel, t.tenant_column);
        EXECUTE format('DROP TRIGGER %I ON %s', t.relname || '_audit_insert', t.rel);
        EXECUTE format('DROP TRIGGER %I ON %s', t.relname || '_audit_update', t.rel);
        EXECUTE format('DROP TRIGGER %I ON %s', t.relname || '_audit_delete', t.rel);
        EXECUTE format('CREATE TRIGGER %I AFTER INSERT ON %s REFERENCING NEW TABLE AS new_rows '
                       'FOR EACH STATEMENT EXECUTE FUNCTION hardening.audit_capture_insert(%s)',
                       t.relname || '_audit_insert', t.rel, args);
        EXECUTE format('CREATE TRIGGER %I AFTER UPDATE ON %s '
                       'REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows '
                       'FOR EACH STATEMENT EXECUTE FUNCTION hardening.audit_capture_update(%s)',
                       t.relname || '_audit_update', t.rel, args);
        EXECUTE format('CREATE TRIGGER %I AFTER DELETE ON %s REFERENCING OLD TABLE AS old_rows '
                       'FOR EACH STATEMENT EXECUTE FUNCTION hardening.audit_capture_delete(%s)',
                       t.relname || '_audit_delete', t.rel, args);
        EXECUTE format('ALTER TABLE %s ENABLE ALWAYS TRIGGER %I', t.rel, t.relname || '_audit_insert');
        EXECUTE format('ALTER TABLE %s ENABLE ALWAYS TRIGGER %I', t.rel, t.relname || '_audit_update');
        EXECUTE format('ALTER TABLE %s ENABLE ALWAYS TRIGGER %I', t.rel, t.relname || '_audit_delete');
        INSERT INTO hardening.adoption_log (migration, object, action, detail)
        VALUES ('018_capture_keys_and_claims.sql', t.rel::text, 'audit capture keyed on primary key',
                format('its primary key is not id: audit rows name the record by (%s) and an '
                       'UPDATE pairs its images by it', args));
    END LOOP;
END
$rekey$;

-- The guard and the capture belong to the audit owner; the guard now too, so that it reads the
-- mode through allow_unattributed_write (which the owner owns) whoever the current user is.
-- CREATE on the schema for the hand-over only, as in 002.
DO $owner$
BEGIN
    IF has_schema_privilege('hardening_audit_owner', 'hardening', 'CREATE') THEN
        ALTER FUNCTION hardening.audit_write_guard() OWNER TO hardening_audit_owner;
    ELSE
        GRANT CREATE ON SCHEMA hardening TO hardening_audit_owner;
        ALTER FUNCTION hardening.audit_write_guard() OWNER TO hardening_audit_owner;
        REVOKE CREATE ON SCHEMA hardening FROM hardening_audit_owner;
    END IF;
END
$owner$;

-- What this file created is closed (015); the claims reader is opened to the roles the
-- resolver runs as (every tenant policy calls it as the querying role) and to the audit owner
-- the capture runs as.
DO $close$
DECLARE
    grantees text := concat_ws(', ', 'PUBLIC',
        (SELECT string_agg(quote_ident(r), ', ')
         FROM unnest(ARRAY['anon', 'authenticated', 'service_role']) AS r
         WHERE EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = r)));
    resolver_roles text := (SELECT string_agg(quote_ident(r), ', ')
                            FROM unnest(ARRAY['authenticated', 'service_role']) AS r
                            WHERE EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = r));
BEGIN
    EXECUTE format('REVOKE ALL ON FUNCTION hardening.request_claims(), '
                   'hardening.audit_capture_arguments(regclass, text), '
                   'hardening.audit_write_guard() FROM %s', grantees);
    GRANT EXECUTE ON FUNCTION hardening.request_claims() TO hardening_audit_owner;
    IF resolver_roles IS NOT NULL THEN
        EXECUTE format('GRANT EXECUTE ON FUNCTION hardening.request_claims() TO %s',
                       resolver_roles);
    END IF;
END
$close$;

DO $resume$
BEGIN
    IF current_setting('hardening.ddl_recording_paused', true) = 'on' THEN
        ALTER EVENT TRIGGER hardening_record_ddl ENABLE ALWAYS;
        ALTER EVENT TRIGGER hardening_record_ddl_drop ENABLE ALWAYS;
        PERFORM set_config('hardening.ddl_recording_paused', '', true);
    END IF;
END
$resume$;

DO $member$
BEGIN
    IF NOT (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user) THEN
        EXECUTE format('REVOKE hardening_audit_owner FROM %I', current_user);
    END IF;
END
$member$;
