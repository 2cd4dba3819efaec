-- 009_audit_capture_inline_actor: the same audit rows as 007, without parsing SQL per transaction.
--
-- 007 reads the actor and role once per statement by calling hardening.current_actor() and
-- hardening.statement_role(). Both are LANGUAGE sql functions with SET search_path, so Postgres
-- can neither inline them nor keep their parsed form across transactions: plpgsql evaluates a
-- DECLARE initializer in a per-transaction executor state, so every transaction that writes a
-- tenant row parsed, analysed and planned both function bodies again (perf showed the parser
-- and planner under fmgr_sql at about a fifth of a single-row INSERT's server time). Here the
-- same expressions are written out with built-in functions only, which cost nothing to set up.
--
-- The values are exactly what the two functions return (tests/test_audit_log.py compares the
-- recorded actor with hardening.current_actor() in each of its three cases); the functions stay,
-- for anyone who wants to ask "who is writing" from SQL, and the TRUNCATE capture (one row per
-- statement, and rare) still calls them. Columns, operations, images, ownership,
-- SECURITY DEFINER and the empty search_path are unchanged; CREATE OR REPLACE keeps the
-- triggers, grants and owner that 002 set up. bench/bench_audit_overhead.py has the figures.
--
-- One more per-statement cost goes: every INSERT into audit_events rebuilds each CHECK
-- constraint from its stored text (stringToNode) and plans it before the first row.
-- audit_events_operation_check (operation IN the four values) says nothing that
-- audit_events_images_match_operation does not already say: each of its branches requires
-- operation to equal one of the same four values, so any other value fails it. Only the
-- redundant one is dropped; tests/test_audit_log.py shows an unknown operation still refused.

CREATE OR REPLACE FUNCTION hardening.audit_capture_insert() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = ''
AS $fn$
DECLARE
    -- hardening.statement_role(), then hardening.current_actor(), written out (see above).
    statement_role text := coalesce(
        nullif(current_setting('hardening.statement_role', true), ''), session_user);
    statement_actor text := coalesce(
        nullif(current_setting('app.actor', true), ''),
        'jwt:' || (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'sub'),
        'db:' || statement_role);
BEGIN
    INSERT INTO public.audit_events
        (actor, tenant_id, table_name, operation, record_id, before, after, db_role)
    SELECT statement_actor, (r ->> TG_ARGV[0])::uuid, TG_TABLE_NAME, 'INSERT',
           r ->> 'id', NULL, r, statement_role
    FROM (SELECT to_jsonb(n) AS r FROM new_rows n) AS captured;
    RETURN NULL;
END
$fn$;

CREATE OR REPLACE FUNCTION hardening.audit_capture_update() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = ''
AS $fn$
DECLARE
    -- hardening.statement_role(), then hardening.current_actor(), written out (see above).
    statement_role text := coalesce(
        nullif(current_setting('hardening.statement_role', true), ''), session_user);
    statement_actor text := coalesce(
        nullif(current_setting('app.actor', true), ''),
        'jwt:' || (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'sub'),
        'db:' || statement_role);
BEGIN
    -- FULL JOIN so an update that changes a primary key still leaves both images behind.
    INSERT INTO public.audit_events
        (actor, tenant_id, table_name, operation, record_id, before, after, db_role)
    SELECT statement_actor,
           (coalesce(a.r, b.r) ->> TG_ARGV[0])::uuid, TG_TABLE_NAME, 'UPDATE',
           coalesce(a.r, b.r) ->> 'id', b.r, a.r, statement_role
    FROM (SELECT to_jsonb(o) AS r FROM old_rows o) AS b
    FULL JOIN (SELECT to_jsonb(n) AS r FROM new_rows n) AS a ON (a.r ->> 'id') = (b.r ->> 'id');
    RETURN NULL;
END
$fn$;

CREATE OR REPLACE FUNCTION hardening.audit_capture_delete() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = ''
AS $fn$
DECLARE
    -- hardening.statement_role(), then hardening.current_actor(), written out (see above).
    statement_role text := coalesce(
        nullif(current_setting('hardening.statement_role', true), ''), session_user);
    statement_actor text := coalesce(
        nullif(current_setting('app.actor', true), ''),
        'jwt:' || (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'sub'),
        'db:' || statement_role);
BEGIN
    INSERT INTO public.audit_events
        (actor, tenant_id, table_name, operation, record_id, before, after, db_role)
    SELECT statement_actor, (r ->> TG_ARGV[0])::uuid, TG_TABLE_NAME, 'DELETE',
           r ->> 'id', r, NULL, statement_role
    FROM (SELECT to_jsonb(o) AS r FROM old_rows o) AS captured;
    RETURN NULL;
END
$fn$;

SET LOCAL lock_timeout = '10s';

ALTER TABLE public.audit_events DROP CONSTRAINT IF EXISTS audit_events_operation_check;
