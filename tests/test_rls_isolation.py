"""Row-level security: try to read and write another tenant's rows, and to get in as anon."""

from __future__ import annotations

import json
import uuid

import psycopg
import pytest
from psycopg import errors

from tests.support.db import acting_as, insert_tenant

TENANT_TABLES = ["developments", "units", "messages", "onboarding_attempts"]


@pytest.fixture
def two_tenants(admin):
    return insert_tenant(admin, "alpha"), insert_tenant(admin, "bravo")


def count_visible(conn: psycopg.Connection, table: str) -> int:
    return conn.execute(f"SELECT count(*) AS n FROM {table}").fetchone()["n"]  # noqa: S608


@pytest.mark.parametrize("table", TENANT_TABLES)
def test_authenticated_sees_only_its_own_tenant(admin, two_tenants, table):
    a, b = two_tenants
    with acting_as(admin, "authenticated", tenant=a.tenant):
        rows = admin.execute(f"SELECT tenant_id FROM {table}").fetchall()  # noqa: S608
        assert rows and {r["tenant_id"] for r in rows} == {a.tenant}


@pytest.mark.parametrize("table", TENANT_TABLES + ["tenants"])
def test_no_tenant_context_sees_nothing(admin, two_tenants, table):
    with acting_as(admin, "authenticated"):
        assert count_visible(admin, table) == 0
    # An empty setting (what a finished transaction leaves behind) is also "no tenant".
    with acting_as(admin, "authenticated", tenant=""):
        assert count_visible(admin, table) == 0


def test_tenants_table_shows_only_own_row(admin, two_tenants):
    a, _ = two_tenants
    with acting_as(admin, "authenticated", tenant=a.tenant):
        rows = admin.execute("SELECT id FROM tenants").fetchall()
        assert [r["id"] for r in rows] == [a.tenant]


def test_jwt_claims_carry_tenant_for_postgrest_requests(admin, two_tenants):
    a, _ = two_tenants
    claims = json.dumps({"sub": str(uuid.uuid4()), "app_metadata": {"tenant_id": str(a.tenant)}})
    with acting_as(admin, "authenticated", jwt_claims=claims):
        rows = admin.execute("SELECT DISTINCT tenant_id FROM messages").fetchall()
        assert [r["tenant_id"] for r in rows] == [a.tenant]


@pytest.mark.parametrize("table", TENANT_TABLES + ["tenants"])
def test_malformed_tenant_context_fails_closed(admin, two_tenants, table):
    # Sees nothing and does not raise: a raise would also break queries the app's own policies
    # allow on other tables in the same statement.
    with acting_as(admin, "authenticated", tenant="not-a-uuid"):
        assert count_visible(admin, table) == 0
    claims = json.dumps({"sub": str(uuid.uuid4()), "app_metadata": {"tenant_id": "acme-42"}})
    with acting_as(admin, "authenticated", jwt_claims=claims):
        assert count_visible(admin, table) == 0


def test_cross_tenant_insert_is_refused(admin, two_tenants):
    a, b = two_tenants
    with pytest.raises(errors.InsufficientPrivilege, match="row-level security"):
        with acting_as(admin, "authenticated", tenant=a.tenant):
            admin.execute(
                "INSERT INTO messages (tenant_id, development_id, unit_id, sender, body) "
                "VALUES (%s, %s, %s, 'x', 'planted')",
                (b.tenant, b.development, b.unit),
            )


def test_cross_tenant_update_and_delete_touch_nothing(admin, two_tenants):
    a, b = two_tenants
    for table, row_id in [
        ("messages", b.message),
        ("onboarding_attempts", b.onboarding),
        ("units", b.unit),
        ("developments", b.development),
    ]:
        with acting_as(admin, "authenticated", tenant=a.tenant):
            cur = admin.execute(
                f"UPDATE {table} SET created_at = now() WHERE id = %s",  # noqa: S608
                (row_id,),
            )
            assert cur.rowcount == 0
            cur = admin.execute(f"DELETE FROM {table} WHERE id = %s", (row_id,))  # noqa: S608
            assert cur.rowcount == 0
    # B's rows are intact, seen as the superuser.
    assert (
        admin.execute("SELECT count(*) AS n FROM messages WHERE id = %s", (b.message,)).fetchone()[
            "n"
        ]
        == 1
    )


def test_moving_own_row_to_another_tenant_is_refused(admin, two_tenants):
    a, b = two_tenants
    with pytest.raises(errors.InsufficientPrivilege, match="row-level security"):
        with acting_as(admin, "authenticated", tenant=a.tenant):
            admin.execute(
                "UPDATE onboarding_attempts SET tenant_id = %s WHERE id = %s",
                (b.tenant, a.onboarding),
            )


@pytest.mark.parametrize("table", TENANT_TABLES + ["tenants", "audit_events"])
@pytest.mark.parametrize(
    "statement",
    [
        "SELECT * FROM {t}",
        "DELETE FROM {t}",
        "UPDATE {t} SET created_at = now()",
        "TRUNCATE {t}",
    ],
)
def test_anon_has_no_access_at_all(admin, two_tenants, table, statement):
    a, _ = two_tenants
    with pytest.raises(errors.InsufficientPrivilege):
        with acting_as(admin, "anon", tenant=a.tenant):
            admin.execute(statement.format(t=table))


def test_anon_cannot_insert(admin, two_tenants):
    a, _ = two_tenants
    with pytest.raises(errors.InsufficientPrivilege):
        with acting_as(admin, "anon", tenant=a.tenant):
            admin.execute(
                "INSERT INTO onboarding_attempts (tenant_id, email) VALUES (%s, 'x@example.com')",
                (a.tenant,),
            )


@pytest.mark.parametrize("role", ["authenticated", "service_role"])
def test_truncate_of_tenant_tables_is_never_granted(admin, two_tenants, role):
    for table in TENANT_TABLES:
        with pytest.raises(errors.InsufficientPrivilege):
            with acting_as(admin, role, actor="service_role:test-truncate"):
                admin.execute(f"TRUNCATE {table} CASCADE")


def test_no_policy_applies_to_anon_or_public(admin):
    rows = admin.execute(
        "SELECT polname FROM pg_policy WHERE 0::oid = ANY(polroles) "
        "OR (SELECT oid FROM pg_roles WHERE rolname = 'anon') = ANY(polroles)"
    ).fetchall()
    assert rows == []


def test_rls_enabled_and_forced_on_every_table_with_tenant_id(admin):
    rows = admin.execute(
        "SELECT c.relname, c.relrowsecurity, c.relforcerowsecurity FROM pg_class c "
        "JOIN pg_namespace n ON n.oid = c.relnamespace "
        "JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = 'tenant_id' "
        "WHERE n.nspname = 'public' AND c.relkind = 'r'"
    ).fetchall()
    assert {r["relname"] for r in rows} >= set(TENANT_TABLES) | {"audit_events"}
    assert all(r["relrowsecurity"] and r["relforcerowsecurity"] for r in rows), rows
