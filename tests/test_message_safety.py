"""Messages cannot lose their parents or point across tenants; deletes never cascade."""

from __future__ import annotations

import uuid

import pytest
from psycopg import errors

from tests.support.db import FK_REFUSED, acting_as, insert_tenant


@pytest.fixture
def two_tenants(admin):
    return insert_tenant(admin, "alpha"), insert_tenant(admin, "bravo")


def insert_message(conn, tenant_id, development_id, unit_id):
    conn.execute(
        "INSERT INTO messages (tenant_id, development_id, unit_id, sender, body) "
        "VALUES (%s, %s, %s, 'resident', 'hello')",
        (tenant_id, development_id, unit_id),
    )


@pytest.mark.parametrize(
    "table,column", [("units", "unit"), ("developments", "development"), ("tenants", "tenant")]
)
@pytest.mark.parametrize("role", [None, "service_role"])
def test_deleting_a_parent_with_messages_is_refused(admin, two_tenants, table, column, role):
    a, _ = two_tenants
    with pytest.raises(FK_REFUSED):
        with acting_as(admin, role, actor="service_role:test-delete-parent"):
            admin.execute(f"DELETE FROM {table} WHERE id = %s", (getattr(a, column),))  # noqa: S608
    counts = admin.execute(
        "SELECT (SELECT count(*) FROM messages WHERE tenant_id = %s) AS m, "
        "(SELECT count(*) FROM units WHERE tenant_id = %s) AS u",
        (a.tenant, a.tenant),
    ).fetchone()
    assert counts == {"m": 1, "u": 1}


def test_every_message_foreign_key_is_on_delete_restrict(admin):
    rows = admin.execute(
        "SELECT conname, confdeltype, convalidated FROM pg_constraint "
        "WHERE conrelid = 'messages'::regclass AND contype = 'f' ORDER BY conname"
    ).fetchall()
    assert {r["conname"] for r in rows} == {
        "messages_unit_id_fkey",
        "messages_development_id_fkey",
        "messages_tenant_id_fkey",
        "messages_unit_development_tenant_fkey",
    }
    assert all(r["confdeltype"] == "r" and r["convalidated"] for r in rows), rows


def test_message_without_unit_is_refused(admin, two_tenants):
    a, _ = two_tenants
    with pytest.raises(errors.NotNullViolation):
        with acting_as(admin, None, actor="test"):
            insert_message(admin, a.tenant, a.development, None)


def test_message_with_unknown_unit_is_refused(admin, two_tenants):
    a, _ = two_tenants
    with pytest.raises(FK_REFUSED):
        with acting_as(admin, None, actor="test"):
            insert_message(admin, a.tenant, a.development, uuid.uuid4())


def test_message_pointing_at_another_tenants_unit_is_refused(admin, two_tenants):
    """Even a role that bypasses RLS cannot file a message under another tenant's unit."""
    a, b = two_tenants
    with pytest.raises(FK_REFUSED):
        with acting_as(admin, "service_role", actor="service_role:test"):
            insert_message(admin, a.tenant, b.development, b.unit)
    with pytest.raises(FK_REFUSED):
        with acting_as(admin, "service_role", actor="service_role:test"):
            insert_message(admin, a.tenant, a.development, b.unit)


def test_message_whose_unit_is_in_another_development_is_refused(admin, two_tenants):
    a, _ = two_tenants
    other_dev = uuid.uuid4()
    with acting_as(admin, None, actor="test"):
        admin.execute(
            "INSERT INTO developments (id, tenant_id, name) VALUES (%s, %s, 'Second')",
            (other_dev, a.tenant),
        )
        with pytest.raises(FK_REFUSED):
            with admin.transaction():
                insert_message(admin, a.tenant, other_dev, a.unit)


def test_moving_a_message_to_another_tenant_breaks_the_composite_key(admin, two_tenants):
    a, b = two_tenants
    with pytest.raises(FK_REFUSED):
        with acting_as(admin, "service_role", actor="service_role:test"):
            admin.execute("UPDATE messages SET tenant_id = %s WHERE id = %s", (b.tenant, a.message))


def test_unit_cannot_join_another_tenants_development(admin, two_tenants):
    a, b = two_tenants
    with pytest.raises(FK_REFUSED):
        with acting_as(admin, "service_role", actor="service_role:test"):
            admin.execute(
                "INSERT INTO units (tenant_id, development_id, label) VALUES (%s, %s, '9Z')",
                (a.tenant, b.development),
            )
