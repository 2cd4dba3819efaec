"""DDL on audited tables is on the record (016): the table owner's rewrite and trigger switch-off
leave DDL rows naming the statement and the role; recording never gets in the way elsewhere.

The database here is the embedded PG16, migrated by a superuser, so the event triggers are
installed. tests/test_supabase_adoption.py covers the server that does not allow them.
"""

from __future__ import annotations

import os

import pytest
from psycopg import errors, sql

from hardening_pipeline.backup.crypto import Keyring
from hardening_pipeline.backup.store import FileStore
from hardening_pipeline.db.ddl_recording import EVENT_TRIGGERS, read_ddl_recording
from hardening_pipeline.hardening.seals import seal_audit_log, verify_audit_seals
from hardening_pipeline.hardening.status import run_checks
from tests.support import independent_seal_verifier as independent
from tests.support.db import acting_as, admin_connect, ensure_nologin_role, insert_tenant

TABLE_OWNER = "ddl_test_table_owner"


@pytest.fixture
def tenant(admin):
    return insert_tenant(admin, "alpha")


@pytest.fixture
def owner(admin):
    """A NOLOGIN role that owns messages (the role an app's migrations run as)."""
    ensure_nologin_role(admin, TABLE_OWNER)
    admin.execute(sql.SQL("ALTER TABLE messages OWNER TO {}").format(sql.Identifier(TABLE_OWNER)))
    admin.commit()
    return TABLE_OWNER


def ddl_rows(conn, after_id: int = 0) -> list[dict]:
    conn.execute("RESET ROLE")
    return conn.execute(
        "SELECT * FROM audit_events WHERE operation = 'DDL' AND id > %s ORDER BY id", (after_id,)
    ).fetchall()


def last_id(conn) -> int:
    return conn.execute("SELECT coalesce(max(id), 0) AS m FROM audit_events").fetchone()["m"]


def test_a_type_rewrite_by_the_table_owner_is_on_the_record(admin, tenant, owner):
    start = last_id(admin)
    with acting_as(admin, owner):
        admin.execute("ALTER TABLE messages ALTER COLUMN body TYPE text USING 'x'")
        rows = ddl_rows(admin, start)  # as the superuser: the owner is held by FORCE RLS
        assert admin.execute("SELECT DISTINCT body FROM messages").fetchall() == [{"body": "x"}]
    assert len(rows) == 1, rows
    row = rows[0]
    assert (row["table_name"], row["actor"], row["db_role"]) == ("messages", f"db:{owner}", owner)
    assert row["before"] is None and row["tenant_id"] is None and row["record_id"] is None
    after = row["after"]
    assert after["statement"] == "ALTER TABLE messages ALTER COLUMN body TYPE text USING 'x'"
    assert after["command_tags"] == ["ALTER TABLE"]
    assert after["owner"] == owner
    assert after["session_user"] == admin.info.user
    assert after["event"] == "ddl_command_end"


def test_capture_switched_off_around_a_delete_is_on_the_record(admin, tenant, owner):
    start = last_id(admin)
    with acting_as(admin, owner):
        admin.execute("ALTER TABLE messages DISABLE TRIGGER USER")
        # The owner is held by FORCE RLS; the superuser deletes the rows in between.
        admin.execute("RESET ROLE")
        assert admin.execute("DELETE FROM messages").rowcount >= 1
        admin.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(owner)))
        admin.execute("ALTER TABLE messages ENABLE ALWAYS TRIGGER messages_audit_delete")
        admin.execute("RESET ROLE")
        rows = admin.execute(
            "SELECT operation, table_name, db_role, after ->> 'statement' AS statement "
            "FROM audit_events WHERE id > %s ORDER BY id",
            (start,),
        ).fetchall()
    # The DELETE itself left no row (capture was off), but the switch-off and back are there.
    assert rows == [
        {
            "operation": "DDL",
            "table_name": "messages",
            "db_role": owner,
            "statement": "ALTER TABLE messages DISABLE TRIGGER USER",
        },
        {
            "operation": "DDL",
            "table_name": "messages",
            "db_role": owner,
            "statement": "ALTER TABLE messages ENABLE ALWAYS TRIGGER messages_audit_delete",
        },
    ]


@pytest.mark.parametrize(
    ("statement", "table", "tag"),
    [
        ("DROP TRIGGER messages_audit_insert ON messages", "messages", "DROP TRIGGER"),
        ("DROP POLICY messages_tenant_isolation ON messages", "messages", "DROP POLICY"),
        ("DROP TABLE onboarding_attempts", "onboarding_attempts", "DROP TABLE"),
        ("ALTER TABLE audit_events DISABLE TRIGGER audit_events_append_only", "audit_events", ""),
        ("ALTER SEQUENCE audit_events_id_seq RESTART WITH 1000000", "audit_events", ""),
        ("CREATE INDEX ON units (label)", "units", "CREATE INDEX"),
        ("ALTER TABLE tenants NO FORCE ROW LEVEL SECURITY", "tenants", "ALTER TABLE"),
        ("ALTER TABLE hardening.audit_seals DISABLE TRIGGER USER", "hardening.audit_seals", ""),
        ("CREATE TABLE public.invoices (id int, tenant_id uuid)", "invoices", "CREATE TABLE"),
    ],
)
def test_ddl_on_audited_tables_is_recorded(admin, statement, table, tag):
    start = last_id(admin)
    with acting_as(admin, None):
        admin.execute(statement)
        rows = ddl_rows(admin, start)
    assert [r["table_name"] for r in rows] == [table], rows
    assert rows[0]["after"]["statement"] == statement
    if tag:
        assert rows[0]["after"]["command_tags"] == [tag]


def test_replica_mode_does_not_skip_recording(admin, tenant):
    start = last_id(admin)
    with acting_as(admin, None):
        admin.execute("SET LOCAL session_replication_role = replica")
        admin.execute("ALTER TABLE messages DISABLE TRIGGER messages_audit_delete")
        assert [r["table_name"] for r in ddl_rows(admin, start)] == ["messages"]


def test_ddl_elsewhere_leaves_nothing_and_is_not_blocked(admin):
    start = last_id(admin)
    with acting_as(admin, None):
        admin.execute("CREATE SCHEMA scratch")
        admin.execute("CREATE TABLE scratch.notes (id int, owner_id uuid)")  # no tenant_id
        admin.execute("CREATE TABLE public.feature_flags (name text PRIMARY KEY)")
        admin.execute("ALTER TABLE public.feature_flags ADD COLUMN on_by_default boolean")
        admin.execute("CREATE INDEX ON public.feature_flags (on_by_default)")
        admin.execute("DROP TABLE public.feature_flags")
        admin.execute("CREATE FUNCTION scratch.one() RETURNS int LANGUAGE sql AS 'SELECT 1'")
        admin.execute("CREATE VIEW scratch.v AS SELECT 1 AS x")
        admin.execute("DROP SCHEMA scratch CASCADE")
        assert ddl_rows(admin, start) == []


def test_a_long_statement_is_cut_and_says_so(admin):
    padding = "x" * 5000
    start = last_id(admin)
    with acting_as(admin, None):
        admin.execute(f"COMMENT ON TABLE messages IS '{padding}'")
        rows = ddl_rows(admin, start)
    assert len(rows) == 1
    assert len(rows[0]["after"]["statement"]) == 4000
    assert rows[0]["after"]["statement_truncated"] is True


@pytest.mark.parametrize(
    ("before", "after"), [("{}", "{}"), (None, None), ("{}", None)], ids=["both", "none", "before"]
)
def test_a_ddl_row_has_only_an_after_image(admin, before, after):
    with pytest.raises(errors.CheckViolation):
        with acting_as(admin, "hardening_audit_owner"):
            admin.execute(
                "INSERT INTO audit_events (actor, table_name, operation, before, after, db_role) "
                "VALUES ('test:malformed', 'messages', 'DDL', %s, %s, 'x')",
                (before, after),
            )


@pytest.mark.parametrize("role", ["authenticated", "service_role", "anon"])
def test_api_roles_cannot_call_the_recording_functions(admin, role):
    for call in (
        "SELECT hardening.install_ddl_recording()",
        "SELECT hardening.ddl_audited_table('public.messages'::regclass)",
    ):
        with pytest.raises(errors.InsufficientPrivilege):
            with acting_as(admin, role, actor="service_role:test"):
                admin.execute(call)


def test_ddl_rows_seal_and_verify_like_any_other(db_url, admin, tenant, tmp_path):
    master = os.urandom(32)
    keyring = Keyring(master)
    admin.execute("ALTER TABLE messages ALTER COLUMN body TYPE text USING 'x'")
    admin.commit()
    assert ddl_rows(admin), "nothing to seal"
    admin.commit()
    store = FileStore(tmp_path / "store")
    seal_audit_log(db_url, store=store, keyring=keyring)
    assert verify_audit_seals(db_url, store=store, keyring=keyring).passed
    assert independent.verify(db_url, store.root, master) == []


# --- the status line ---------------------------------------------------------------------------


def ddl_line(url: str):
    with admin_connect(url) as conn:
        return run_checks(conn, names=["audit_ddl_recorded"])[0]


def test_the_status_line_is_green_when_installed(db_url):
    line = ddl_line(db_url)
    assert line.passed, line
    assert "ENABLE ALWAYS" in line.detail


@pytest.mark.parametrize(
    "breakage",
    [
        "ALTER EVENT TRIGGER hardening_record_ddl DISABLE",
        "ALTER EVENT TRIGGER hardening_record_ddl_drop DISABLE",
        "ALTER EVENT TRIGGER hardening_record_ddl ENABLE",  # skipped in replica mode
        "DROP EVENT TRIGGER hardening_record_ddl",
        "DROP EVENT TRIGGER hardening_record_ddl_drop",
    ],
)
def test_a_superuser_switching_recording_off_turns_the_line_red(db_url, admin, breakage):
    admin.execute(breakage)
    admin.commit()
    line = ddl_line(db_url)
    assert not line.passed, line
    assert "hardening_record_ddl" in line.detail and line.fix
    # and the fix the line prints puts it back
    admin.execute("SELECT hardening.install_ddl_recording()")
    admin.commit()
    assert ddl_line(db_url).passed


def test_not_installed_is_an_honest_green(db_url, admin):
    """What a migration role that may not create event triggers leaves behind: no triggers and
    no install on record (020; removing the record takes a superuser)."""
    for name in EVENT_TRIGGERS:
        admin.execute(sql.SQL("DROP EVENT TRIGGER {}").format(sql.Identifier(name)))
    admin.execute("DELETE FROM hardening.ddl_recording_installs")
    note = "not installed: the migration role app_owner may not create event triggers"
    admin.execute(
        sql.SQL("COMMENT ON FUNCTION hardening.record_ddl() IS {}").format(sql.Literal(note))
    )
    admin.commit()
    line = ddl_line(db_url)
    assert line.passed, line
    assert line.detail.startswith(note) and "not recorded" in line.detail
    assert not read_ddl_recording(admin).triggers


def test_install_as_a_non_superuser_records_why_not(db_url, admin):
    """The migration's path on a server that refuses event triggers, run for real."""
    role = f"ddl_nosuper_{os.urandom(3).hex()}"
    admin.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(role)))
    for name in EVENT_TRIGGERS:
        admin.execute(sql.SQL("DROP EVENT TRIGGER {}").format(sql.Identifier(name)))
    admin.execute("DELETE FROM hardening.ddl_recording_installs")  # a server that never allowed it
    admin.execute(sql.SQL("GRANT hardening_audit_owner TO {}").format(sql.Identifier(role)))
    admin.execute(sql.SQL("GRANT USAGE ON SCHEMA hardening TO {}").format(sql.Identifier(role)))
    admin.execute(
        sql.SQL("GRANT EXECUTE ON FUNCTION hardening.install_ddl_recording() TO {}").format(
            sql.Identifier(role)
        )
    )
    try:
        with admin.transaction():
            admin.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(role)))
            outcome = admin.execute("SELECT hardening.install_ddl_recording() AS o").fetchone()
        assert outcome["o"].startswith(f"not installed: the migration role {role} ")
        admin.commit()
        line = ddl_line(db_url)
        assert line.passed and line.detail.startswith(outcome["o"]), line
    finally:
        admin.rollback()
        admin.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
        admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))
        admin.commit()
