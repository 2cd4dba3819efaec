"""Drill tests: run by the restore drill (``pytest -m drill``) against the restored database.

They check, on the restored copy, that the guarantees came back with the data: tenants are
still isolated, the audit log is still append-only and still captures writes, message keys still
hold, and the application can still write through TenantScopedClient. They run only when
HARDENING_DRILL_DATABASE_URL is set; the normal suite deselects the ``drill`` marker.
"""

from __future__ import annotations

import os
import uuid

import psycopg
import pytest
from psycopg import errors
from psycopg.rows import dict_row

from hardening_pipeline.db.tenant_scoped_client import TenantScopedClient

pytestmark = pytest.mark.drill


@pytest.fixture(scope="module")
def url() -> str:
    value = os.environ.get("HARDENING_DRILL_DATABASE_URL")
    if not value:
        pytest.fail("HARDENING_DRILL_DATABASE_URL is not set: nothing to verify")
    return value


@pytest.fixture
def conn(url):
    with psycopg.connect(url, row_factory=dict_row) as c:
        yield c
        c.rollback()


@pytest.fixture
def two_tenants(conn) -> list[uuid.UUID]:
    rows = conn.execute(
        "SELECT tenant_id FROM messages GROUP BY tenant_id ORDER BY tenant_id LIMIT 2"
    ).fetchall()
    if len(rows) < 2:
        pytest.fail("the restored database holds fewer than two tenants with messages")
    conn.rollback()
    return [r["tenant_id"] for r in rows]


def as_tenant(conn, role: str, tenant) -> None:
    conn.execute(f"SET LOCAL ROLE {role}")
    conn.execute("SELECT set_config('app.tenant_id', %s, true)", (str(tenant),))


def test_each_tenant_sees_only_its_rows(conn, two_tenants):
    for tenant in two_tenants:
        with conn.transaction(force_rollback=True):
            as_tenant(conn, "authenticated", tenant)
            seen = conn.execute("SELECT DISTINCT tenant_id FROM messages").fetchall()
            assert [r["tenant_id"] for r in seen] == [tenant]


def test_no_tenant_context_sees_nothing(conn):
    with conn.transaction(force_rollback=True):
        conn.execute("SET LOCAL ROLE authenticated")
        assert conn.execute("SELECT count(*) AS n FROM messages").fetchone()["n"] == 0


def test_anon_reads_nothing(conn):
    with pytest.raises(errors.InsufficientPrivilege):
        with conn.transaction(force_rollback=True):
            conn.execute("SET LOCAL ROLE anon")
            conn.execute("SELECT 1 FROM messages LIMIT 1")


@pytest.mark.parametrize(
    "statement",
    ["UPDATE audit_events SET actor = 'x'", "DELETE FROM audit_events", "TRUNCATE audit_events"],
)
def test_audit_log_is_still_append_only(conn, statement):
    with pytest.raises(errors.InsufficientPrivilege):
        with conn.transaction(force_rollback=True):
            conn.execute("SET LOCAL session_replication_role = replica")
            conn.execute(statement)


def test_cross_tenant_message_is_refused(conn, two_tenants):
    a, b = two_tenants
    unit = conn.execute(
        "SELECT id, development_id FROM units WHERE tenant_id = %s LIMIT 1", (b,)
    ).fetchone()
    with pytest.raises(errors.ForeignKeyViolation):
        with conn.transaction(force_rollback=True):
            conn.execute("SELECT set_config('app.actor', 'drill', true)")
            conn.execute(
                "INSERT INTO messages (tenant_id, development_id, unit_id, sender, body) "
                "VALUES (%s, %s, %s, 'drill', 'cross')",
                (a, unit["development_id"], unit["id"]),
            )


def test_application_writes_through_the_client_are_audited(url, conn, two_tenants):
    tenant = two_tenants[0]
    before = conn.execute("SELECT coalesce(max(id), 0) AS m FROM audit_events").fetchone()["m"]
    conn.rollback()
    client = TenantScopedClient(url, actor="drill:smoke")
    with client.transaction(tenant) as tx:
        row = tx.insert("onboarding_attempts", {"email": "drill@example.com"})
        tx.delete("onboarding_attempts", where={"id": row["id"]})
    events = conn.execute(
        "SELECT operation, actor, tenant_id FROM audit_events WHERE id > %s ORDER BY id",
        (before,),
    ).fetchall()
    assert [(e["operation"], e["actor"], e["tenant_id"]) for e in events] == [
        ("INSERT", "drill:smoke", tenant),
        ("DELETE", "drill:smoke", tenant),
    ]
    assert (
        events
        and min(
            r["id"] for r in conn.execute("SELECT id FROM audit_events WHERE id > %s", (before,))
        )
        > before
    )


def test_audit_triggers_are_enabled_always(conn):
    # The kit's triggers (functions in the hardening schema); the app's own keep their state.
    rows = conn.execute(
        "SELECT c.relname, t.tgname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "
        "JOIN pg_proc p ON p.oid = t.tgfoid "
        "WHERE NOT t.tgisinternal AND t.tgenabled <> 'A' "
        "AND p.pronamespace = 'hardening'::regnamespace"
    ).fetchall()
    assert rows == []
    count = conn.execute(
        "SELECT count(*) AS n FROM pg_trigger t JOIN pg_proc p ON p.oid = t.tgfoid "
        "WHERE p.pronamespace = 'hardening'::regnamespace"
    ).fetchone()["n"]
    assert count > 0
