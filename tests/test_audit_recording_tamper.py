"""Switching audit recording off without removing its parts is red too.

Each attack keeps what a name-based check looks for (the event triggers, the functions they
name, the capture triggers) and makes it record nothing: the function replaced by a no-op, the
event trigger re-created to fire for one command, the triggers dropped with a note claiming
they never were. The reference is the kit's migration files (db/shipped_functions.py).
"""

from __future__ import annotations

import pytest
from psycopg import sql

from hardening_pipeline.db.ddl_recording import EVENT_TRIGGERS
from hardening_pipeline.db.shipped_functions import changed_functions, shipped_functions
from hardening_pipeline.hardening.status import run_checks
from tests.support.db import admin_connect


def line(url: str, name: str):
    with admin_connect(url) as conn:
        return run_checks(conn, names=[name])[0]


NOOP_RECORD_DDL = """
    CREATE OR REPLACE FUNCTION hardening.record_ddl() RETURNS event_trigger
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = '' AS $fn$ BEGIN END $fn$
"""


def test_a_fresh_database_matches_the_shipped_digests(db_url):
    assert line(db_url, "audit_ddl_recorded").passed
    assert line(db_url, "audit_capture_triggers").passed
    with admin_connect(db_url) as conn:
        assert changed_functions(conn, list(shipped_functions())) == []


@pytest.mark.parametrize(
    ("attack", "named"),
    [
        pytest.param([NOOP_RECORD_DDL], "record_ddl() differs", id="record-ddl-no-op"),
        pytest.param(
            [
                "CREATE OR REPLACE FUNCTION hardening.ddl_audited_table(rel oid) RETURNS oid "
                "LANGUAGE sql STABLE SET search_path = '' AS $fn$ SELECT NULL::oid $fn$"
            ],
            "ddl_audited_table() differs",
            id="nothing-counts-as-audited",
        ),
        pytest.param(
            ["ALTER FUNCTION hardening.record_ddl_drop() SET search_path = public, pg_catalog"],
            "record_ddl_drop() differs",
            id="search-path-opened",
        ),
        pytest.param(
            [
                "DROP EVENT TRIGGER hardening_record_ddl",
                "CREATE EVENT TRIGGER hardening_record_ddl ON ddl_command_end "
                "WHEN TAG IN ('CREATE TABLE') EXECUTE FUNCTION hardening.record_ddl()",
                "ALTER EVENT TRIGGER hardening_record_ddl ENABLE ALWAYS",
            ],
            "fires only for CREATE TABLE",
            id="when-tag-filter",
        ),
        pytest.param(
            [
                *(f"DROP EVENT TRIGGER {name}" for name in EVENT_TRIGGERS),
                "COMMENT ON FUNCTION hardening.record_ddl() IS 'not installed: the migration "
                "role app_owner may not create event triggers (it is not a superuser)'",
            ],
            "both event triggers are gone",
            id="dropped-and-noted-not-installed",
        ),
    ],
)
def test_recording_switched_off_in_place_turns_the_line_red(db_url, admin, attack, named):
    for statement in attack:
        admin.execute(statement)
    admin.commit()
    result = line(db_url, "audit_ddl_recorded")
    assert not result.passed, result
    assert named in result.detail and result.fix


def test_the_fix_the_line_prints_puts_recording_back(db_url, admin):
    admin.execute("DROP EVENT TRIGGER hardening_record_ddl")
    admin.execute(
        "CREATE EVENT TRIGGER hardening_record_ddl ON ddl_command_end "
        "WHEN TAG IN ('CREATE TABLE') EXECUTE FUNCTION hardening.record_ddl()"
    )
    admin.commit()
    assert not line(db_url, "audit_ddl_recorded").passed
    admin.execute("SELECT hardening.install_ddl_recording()")
    admin.commit()
    assert line(db_url, "audit_ddl_recorded").passed


def test_a_no_op_capture_function_turns_the_capture_line_red(db_url, admin):
    admin.execute(
        "CREATE OR REPLACE FUNCTION hardening.audit_capture_delete() RETURNS trigger "
        "LANGUAGE plpgsql SECURITY DEFINER SET search_path = '' AS $fn$ BEGIN RETURN NULL; END "
        "$fn$"
    )
    admin.commit()
    result = line(db_url, "audit_capture_triggers")
    assert not result.passed, result
    assert "audit_capture_delete() differs" in result.detail


FORGED_IDENTITY = """
    CREATE OR REPLACE FUNCTION hardening.statement_identity(OUT db_role text, OUT actor text)
    LANGUAGE plpgsql STABLE SET search_path = '' AS $fn$
    BEGIN db_role := 'authenticated'; actor := 'jwt:someone-else'; END $fn$
"""
FORGED_CLAIMS = """
    CREATE OR REPLACE FUNCTION hardening.request_claims() RETURNS jsonb
    LANGUAGE sql STABLE SET search_path = '' AS $fn$ SELECT '{"sub": "someone-else"}'::jsonb $fn$
"""


@pytest.mark.parametrize(
    ("forgery", "lines"),
    [
        pytest.param(
            FORGED_IDENTITY, ("audit_capture_triggers", "audit_ddl_recorded"), id="identity"
        ),
        pytest.param(FORGED_CLAIMS, ("audit_capture_triggers",), id="jwt-claims"),
    ],
)
def test_a_forged_writer_identity_turns_the_lines_that_record_it_red(db_url, admin, forgery, lines):
    """The capture, the guard and the DDL record take who wrote from these functions; one
    replaced by a superuser (the migration role cannot: test_kit_privileges.py) is named."""
    admin.execute(forgery)
    admin.commit()
    for name in lines:
        result = line(db_url, name)
        assert not result.passed, result
        assert "differs" in result.detail and result.fix, result


def test_a_superuser_only_can_erase_the_install_record(db_url, admin):
    """The event triggers' owner on Supabase (postgres, not a superuser) cannot unsay it."""
    admin.execute("CREATE ROLE tamper_not_super NOLOGIN")
    admin.execute("GRANT USAGE ON SCHEMA hardening TO tamper_not_super")
    try:
        with admin.transaction(force_rollback=True):
            admin.execute("SET LOCAL ROLE tamper_not_super")
            with pytest.raises(Exception, match="permission denied"):
                admin.execute("DELETE FROM hardening.ddl_recording_installs")
        with admin.transaction(force_rollback=True):
            admin.execute("SET LOCAL ROLE tamper_not_super")
            with pytest.raises(Exception, match="permission denied"):
                admin.execute("SELECT hardening.note_ddl_recording_installed()")
    finally:
        admin.execute(sql.SQL("DROP OWNED BY tamper_not_super"))
        admin.execute("DROP ROLE tamper_not_super")
        admin.commit()
