"""Privileges and ownership (015): the API roles reach none of the kit's functions and sequences
beyond what policies need, no login role can act as the audit owner, and status names whoever
opens them again, switches a guard off or adds to pg_catalog.
"""

from __future__ import annotations

import uuid

import psycopg
import pytest
from psycopg import errors, sql

from hardening_pipeline.db.migrations import apply_migrations
from hardening_pipeline.hardening.status import run_status_check
from hardening_pipeline.hardening.status.kit_objects import KIT_FUNCTIONS_FOR_API_ROLES
from tests.support.db import acting_as

GRANTEES = ["PUBLIC", "anon", "authenticated", "service_role"]


def status_line(db_url: str, name: str):
    report = run_status_check(db_url)
    return next(line for line in report.lines if line.name == name)


def commit(admin, statement: str) -> None:
    admin.execute(statement)
    admin.commit()


def test_api_roles_execute_only_the_resolver_and_the_report_hook(admin):
    rows = admin.execute(
        "SELECT p.proname, p.oid::regprocedure::text AS fn, coalesce(r.rolname, 'PUBLIC') AS g "
        "FROM pg_proc p "
        "CROSS JOIN LATERAL aclexplode(coalesce(p.proacl, acldefault('f', p.proowner))) x "
        "LEFT JOIN pg_roles r ON r.oid = x.grantee "
        "WHERE p.pronamespace = 'hardening'::regnamespace"
    ).fetchall()
    assert rows, "the kit has functions"
    opened = [
        (r["fn"], r["g"])
        for r in rows
        if r["g"] in GRANTEES and r["g"] not in KIT_FUNCTIONS_FOR_API_ROLES.get(r["proname"], ())
    ]
    assert opened == []


def test_api_roles_hold_nothing_on_the_kits_sequences(admin):
    rows = admin.execute(
        "SELECT c.oid::regclass::text AS seq, coalesce(r.rolname, 'PUBLIC') AS g "
        "FROM pg_class c "
        "CROSS JOIN LATERAL aclexplode(coalesce(c.relacl, acldefault('s', c.relowner))) x "
        "LEFT JOIN pg_roles r ON r.oid = x.grantee "
        "WHERE c.relkind = 'S' AND (c.relnamespace = 'hardening'::regnamespace "
        "OR c.relname = 'audit_events_id_seq')"
    ).fetchall()
    assert [r for r in rows if r["g"] in GRANTEES] == []


@pytest.mark.parametrize("role", ["anon", "authenticated", "service_role"])
def test_api_roles_cannot_rewind_the_audit_sequence(admin, role):
    with pytest.raises(errors.InsufficientPrivilege):
        with acting_as(admin, role):
            admin.execute("SELECT setval('public.audit_events_id_seq', 1)")


def test_the_resolver_still_works_for_authenticated(admin):
    tenant = uuid.uuid4()
    with acting_as(admin, "authenticated", tenant=tenant):
        got = admin.execute("SELECT hardening.current_tenant_id() AS t").fetchone()["t"]
    assert str(got) == str(tenant)


def test_a_guard_function_is_no_longer_callable_by_public(admin):
    with pytest.raises(errors.InsufficientPrivilege):
        with acting_as(admin, "authenticated"):
            admin.execute("SELECT hardening.install_audit_capture('public.messages', 'tenant_id')")


def test_status_is_green_on_a_migrated_database(db_url):
    for name in (
        "kit_objects_closed_to_api_roles",
        "audit_owner_unreachable",
        "pg_catalog_untouched",
    ):
        line = status_line(db_url, name)
        assert line.passed, (name, line.detail)


@pytest.mark.parametrize(
    "grant, named",
    [
        # What Supabase's default privileges would do to a sequence created in public.
        (
            "GRANT USAGE, SELECT, UPDATE ON SEQUENCE public.audit_events_id_seq TO authenticated",
            "authenticated USAGE on sequence audit_events_id_seq",
        ),
        (
            "GRANT EXECUTE ON FUNCTION hardening.install_audit_capture(regclass, text) TO anon",
            "anon EXECUTE on hardening.install_audit_capture(regclass,text)",
        ),
        (
            "GRANT EXECUTE ON FUNCTION hardening.allow_unattributed_write(text, text) TO PUBLIC",
            "PUBLIC EXECUTE on hardening.allow_unattributed_write(text,text)",
        ),
        (
            "ALTER DEFAULT PRIVILEGES IN SCHEMA hardening GRANT ALL ON SEQUENCES TO anon",
            "give anon new SEQUENCES",
        ),
    ],
    ids=["audit-sequence", "function", "hook-to-public", "default-privileges"],
)
def test_status_names_a_kit_object_opened_again(db_url, admin, grant, named):
    commit(admin, grant)
    line = status_line(db_url, "kit_objects_closed_to_api_roles")
    assert not line.passed
    assert named in line.detail
    assert "REVOKE" in line.fix


@pytest.fixture
def login_role(admin):
    name = f"mallory_{uuid.uuid4().hex[:8]}"
    group = f"ops_{uuid.uuid4().hex[:8]}"
    commit(admin, f"CREATE ROLE {name} LOGIN; CREATE ROLE {group} NOLOGIN")
    yield name, group
    admin.rollback()
    admin.execute(f"DROP OWNED BY {name}; DROP ROLE {name}; DROP ROLE {group}")
    admin.commit()


def test_status_names_a_login_member_of_the_audit_owner(db_url, admin, login_role):
    name, _ = login_role
    commit(admin, f"GRANT hardening_audit_owner TO {name}")
    line = status_line(db_url, "audit_owner_unreachable")
    assert not line.passed
    assert name in line.detail


def test_status_names_a_login_role_that_reaches_the_owner_through_a_group(
    db_url, admin, login_role
):
    name, group = login_role
    commit(admin, f"GRANT hardening_audit_owner TO {group}; GRANT {group} TO {name}")
    line = status_line(db_url, "audit_owner_unreachable")
    assert not line.passed
    assert name in line.detail


@pytest.mark.parametrize(
    "statement, line_name",
    [
        ("ALTER TABLE public.messages DISABLE TRIGGER USER", "audit_capture_triggers"),
        ("ALTER TABLE public.units DISABLE TRIGGER units_audit_guard", "audit_capture_triggers"),
        (
            "ALTER TABLE public.audit_events DISABLE TRIGGER audit_events_append_only",
            "audit_append_only_guard",
        ),
        (
            "ALTER TABLE public.audit_events ENABLE TRIGGER audit_events_append_only",
            "audit_append_only_guard",
        ),
    ],
    ids=["capture-off", "guard-off", "append-only-off", "append-only-not-always"],
)
def test_status_names_a_guard_or_capture_trigger_switched_off(db_url, admin, statement, line_name):
    commit(admin, statement)
    line = status_line(db_url, line_name)
    assert not line.passed, line.detail


def test_status_names_a_function_added_to_pg_catalog(db_url, admin):
    commit(
        admin,
        "CREATE FUNCTION pg_catalog.hardening_test_shadow(bytea) RETURNS bytea "
        "LANGUAGE sql AS 'SELECT $1'",
    )
    try:
        line = status_line(db_url, "pg_catalog_untouched")
        assert not line.passed
        assert "hardening_test_shadow" in line.detail
    finally:
        commit(admin, "DROP FUNCTION pg_catalog.hardening_test_shadow(bytea)")


# --- as Supabase's postgres, which is not a superuser ------------------------------------------


def test_after_migrate_the_migration_role_cannot_act_as_the_audit_owner(supabase_db_url):
    apply_migrations(supabase_db_url)
    with psycopg.connect(supabase_db_url, autocommit=True) as conn:
        me, superuser = conn.execute(
            "SELECT current_user, rolsuper FROM pg_roles WHERE rolname = current_user"
        ).fetchone()
        assert (me, superuser) == ("postgres", False)
        assert conn.execute(
            "SELECT count(*) FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.member "
            "WHERE m.roleid = 'hardening_audit_owner'::regrole AND r.rolcanlogin"
        ).fetchone() == (0,)
        with pytest.raises(errors.InsufficientPrivilege):
            conn.execute("SET ROLE hardening_audit_owner")
        for attack in (
            "ALTER TABLE public.audit_events DISABLE TRIGGER audit_events_append_only",
            "ALTER TABLE public.audit_events NO FORCE ROW LEVEL SECURITY",
            "ALTER FUNCTION hardening.audit_capture_insert() SECURITY INVOKER",
            # Who the log says wrote comes from here, for every capture and DDL record.
            "CREATE OR REPLACE FUNCTION hardening.statement_identity(OUT db_role text, "
            "OUT actor text) LANGUAGE sql AS $$ SELECT 'authenticated', 'jwt:someone' $$",
        ):
            with pytest.raises(errors.InsufficientPrivilege):
                conn.execute(attack)
        # A GRANT on someone else's table only warns "no privileges were granted".
        conn.execute("GRANT DELETE ON public.audit_events TO postgres")
        assert conn.execute(
            "SELECT has_table_privilege('public.audit_events', 'DELETE')"
        ).fetchone() == (False,)
        # What the jobs need it still has: the log, its high-water mark, the seal tables.
        conn.execute("SELECT count(*) FROM public.audit_events")
        conn.execute("SELECT pg_sequence_last_value('public.audit_events_id_seq')")
        conn.execute("SELECT count(*) FROM hardening.audit_seals")
        conn.execute("SELECT count(*) FROM hardening.audit_seal_checks")
    line = status_line(supabase_db_url, "audit_owner_unreachable")
    assert line.passed, line.detail
    assert "postgres" in line.detail.split(";")[1]
    closed = status_line(supabase_db_url, "kit_objects_closed_to_api_roles")
    assert closed.passed, closed.detail


def test_a_migrate_with_nothing_pending_leaves_no_membership_behind(supabase_db_url):
    apply_migrations(supabase_db_url)
    apply_migrations(supabase_db_url)
    with psycopg.connect(supabase_db_url) as conn:
        held = conn.execute(
            sql.SQL("SELECT pg_has_role(current_user, {}, 'MEMBER')").format(
                sql.Literal("hardening_audit_owner")
            )
        ).fetchone()
    assert held == (False,)
