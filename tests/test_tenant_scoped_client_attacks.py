"""TenantScopedClient against inputs that change under it and connections someone dirtied first.

Three ways a write used to leave its tenant or its audit trail:

* a ``Mapping`` that answers differently the second time it is read;
* session-level settings (``request.jwt.claims``, ``app.tenant_id``, ``app.actor``, ``role``,
  ``row_security``) left on a pooled connection;
* a ``TEMP TABLE`` on the connection with the name of a tenant table.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Mapping
from typing import Any

import pytest
from psycopg_pool import ConnectionPool

from hardening_pipeline.db.tenant_scoped_client import TenantScopedClient, TenantScopeError
from tests import test_tenant_scoped_client as client_tests

# Fixtures shared with the client's own tests. `pool` holds one connection, so whatever a
# previous borrower left on it is what the client gets.
tenants = client_tests.tenants
pool = client_tests.pool

# -- 1. a mapping that changes between reads ----------------------------------------------------


class SpoofedKey(str):
    """Spells ``tenant_id`` but hashes differently, so ``"tenant_id" in row`` misses it."""

    def __hash__(self) -> int:
        return hash("spoofed:" + str(self))

    def __eq__(self, other: object) -> bool:
        return other is self


class ShiftingMapping(Mapping):
    """Shows ``views[0]`` on the first read and ``views[1]`` on every later one.

    A read is any of ``keys()``, ``items()``, ``values()`` or iteration; ``__getitem__`` answers
    from the view of the latest read, so a copy taken on a later read is self-consistent.
    """

    def __init__(self, *views: dict[Any, Any]) -> None:
        self._views = views
        self.reads = 0

    def _current(self) -> dict[Any, Any]:
        return self._views[min(max(self.reads, 1), len(self._views)) - 1]

    def __iter__(self) -> Iterator[Any]:
        self.reads += 1
        return iter(list(self._current()))

    def __getitem__(self, key: Any) -> Any:
        return self._current()[key]

    def __len__(self) -> int:
        return len(self._views[0])


def onboarding_tenant(admin, row_id) -> Any:
    row = admin.execute(
        "SELECT tenant_id FROM public.onboarding_attempts WHERE id = %s", (row_id,)
    ).fetchone()
    admin.commit()
    return row and row["tenant_id"]


@pytest.mark.parametrize("mode", ["authenticated", "service_role"])
def test_update_values_that_change_between_reads_cannot_move_a_row(admin, tenants, pool, mode):
    a, b = tenants
    client = TenantScopedClient(pool, actor="user:mover", mode=mode)
    values = ShiftingMapping(
        {"email": "checked@example.com"},
        {"email": "checked@example.com", SpoofedKey("tenant_id"): str(b.tenant)},
    )
    with contextlib.suppress(TenantScopeError):
        with client.transaction(a.tenant) as tx:
            tx.update("onboarding_attempts", values, where={"id": a.onboarding})
    assert onboarding_tenant(admin, a.onboarding) == a.tenant


@pytest.mark.parametrize(
    "operation",
    ["insert", "insert_many", "update_where", "delete_where", "select_where"],
)
def test_every_input_is_read_once_and_what_was_checked_is_what_is_sent(
    admin, tenants, pool, operation
):
    """Each mapping the client takes is read exactly once; the later views are never used."""
    a, b = tenants
    client = TenantScopedClient(pool, actor="nightly", mode="service_role")
    row = {"email": "once@example.com", "status": "failed", "error": "smtp"}
    spoofed = {**row, SpoofedKey("tenant_id"): str(b.tenant)}
    where = ShiftingMapping({"id": a.onboarding}, {"id": b.onboarding})
    shifting_row = ShiftingMapping(row, spoofed)
    with client.transaction(a.tenant) as tx:
        if operation == "insert":
            stored = tx.insert("onboarding_attempts", shifting_row)
            assert stored["tenant_id"] == a.tenant
        elif operation == "insert_many":
            assert tx.insert_many("onboarding_attempts", [shifting_row]) == 1
        elif operation == "update_where":
            updated = tx.update("onboarding_attempts", {"email": "seen@example.com"}, where=where)
            assert [(r["id"], r["tenant_id"]) for r in updated] == [(a.onboarding, a.tenant)]
        elif operation == "delete_where":
            deleted = tx.delete("onboarding_attempts", where=where)
            assert [r["id"] for r in deleted] == [a.onboarding]
        else:
            assert [r["id"] for r in tx.select("onboarding_attempts", where=where)] == [
                a.onboarding
            ]
    assert shifting_row.reads in (0, 1) and where.reads in (0, 1)
    foreign = admin.execute(
        "SELECT count(*) AS n FROM public.onboarding_attempts WHERE tenant_id = %s "
        "AND email = 'once@example.com'",
        (b.tenant,),
    ).fetchone()["n"]
    admin.commit()
    assert foreign == 0


# -- 2. session state left on a pooled connection ------------------------------------------------


def dirty(pool: ConnectionPool, tenant, *, role: str | None = None, rls_off: bool = False) -> int:
    """Leave session-level claims, tenant and actor (a role, RLS off) on the pool's connection."""
    with pool.connection() as conn:
        conn.execute(
            "SELECT set_config('request.jwt.claims', %s, false), "
            "set_config('app.tenant_id', %s, false), set_config('app.actor', %s, false)",
            (
                json.dumps({"sub": "intruder", "role": "authenticated", "tenant_id": str(tenant)}),
                str(tenant),
                "user:intruder",
            ),
        )
        if rls_off:
            conn.execute("SET row_security = off")
        if role:
            conn.execute(f"SET ROLE {role}")
        return conn.info.backend_pid


@pytest.mark.parametrize("claims_tenant", ["own", "other"])
@pytest.mark.parametrize("mode", ["authenticated", "service_role"])
def test_session_settings_left_on_a_pooled_connection_do_not_reach_the_audit_log(
    admin, tenants, pool, mode, claims_tenant
):
    a, b = tenants
    backend = dirty(pool, a.tenant if claims_tenant == "own" else b.tenant)
    client = TenantScopedClient(pool, actor="user:42", mode=mode)
    with client.transaction(a.tenant) as tx:
        assert tx.connection.info.backend_pid == backend  # the dirtied connection itself
        assert {r["tenant_id"] for r in tx.select("messages")} == {a.tenant}
        row = tx.insert("onboarding_attempts", {"email": "pooled@example.com"})
        tx.update("onboarding_attempts", {"email": "moved@example.com"}, where={"id": row["id"]})
        tx.delete("onboarding_attempts", where={"id": row["id"]})
    audit = admin.execute(
        "SELECT operation, actor, tenant_id, db_role FROM public.audit_events "
        "WHERE table_name = 'onboarding_attempts' AND record_id = %s ORDER BY id",
        (str(row["id"]),),
    ).fetchall()
    admin.commit()
    assert [r["operation"] for r in audit] == ["INSERT", "UPDATE", "DELETE"]
    assert {(r["actor"], r["tenant_id"], r["db_role"]) for r in audit} == {
        (client.actor, a.tenant, mode)
    }


def test_a_session_role_or_rls_switch_left_on_a_pooled_connection_does_not_apply(
    admin, tenants, pool
):
    a, _ = tenants
    dirty(pool, a.tenant, role="service_role", rls_off=True)
    client = TenantScopedClient(pool, actor="user:42")
    with client.transaction(a.tenant) as tx:
        row = tx.insert("onboarding_attempts", {"email": "role@example.com"})
        assert tx.connection.execute("SELECT current_user").fetchone()[0] == "authenticated"
    audit = admin.execute(
        "SELECT actor, db_role FROM public.audit_events WHERE record_id = %s",
        (str(row["id"]),),
    ).fetchall()
    admin.commit()
    assert audit == [{"actor": "user:42", "db_role": "authenticated"}]


# -- 3. a temporary table with a tenant table's name ---------------------------------------------


def shadow_tables(pool: ConnectionPool) -> None:
    """Temp tables named like the tenant tables, writable by the client's roles."""
    with pool.connection() as conn:
        for table in ("messages", "onboarding_attempts"):
            conn.execute(f"CREATE TEMP TABLE {table} (LIKE public.{table} INCLUDING ALL)")
            conn.execute(f"GRANT ALL ON pg_temp.{table} TO authenticated, service_role")


@pytest.mark.parametrize("mode", ["authenticated", "service_role"])
def test_a_temp_table_on_the_connection_does_not_swallow_the_clients_writes(
    admin, tenants, pool, mode
):
    a, _ = tenants
    shadow_tables(pool)
    last_audit = admin.execute("SELECT coalesce(max(id), 0) AS m FROM public.audit_events")
    last_audit = last_audit.fetchone()["m"]
    admin.commit()
    client = TenantScopedClient(pool, actor="user:42", mode=mode)
    message = {"development_id": a.development, "unit_id": a.unit, "sender": "s", "body": "real"}
    with client.transaction(a.tenant) as tx:
        assert {r["id"] for r in tx.select("messages")} == {a.message}
        row = tx.insert("messages", message)
        assert tx.insert_many("onboarding_attempts", [{"email": "bulk@example.com"}]) == 1
        assert [r["id"] for r in tx.update("messages", {"body": "edited"}, where={"id": row["id"]})]
        assert [r["id"] for r in tx.delete("messages", where={"id": a.message})] == [a.message]
        temp_rows = tx.connection.execute(
            "SELECT (SELECT count(*) FROM pg_temp.messages) + "
            "(SELECT count(*) FROM pg_temp.onboarding_attempts)"
        ).fetchone()[0]
    assert temp_rows == 0
    stored = admin.execute(
        "SELECT tenant_id, body FROM public.messages WHERE id = %s", (row["id"],)
    ).fetchone()
    bulk = admin.execute(
        "SELECT count(*) AS n FROM public.onboarding_attempts WHERE email = 'bulk@example.com'"
    ).fetchone()["n"]
    gone = admin.execute(
        "SELECT count(*) AS n FROM public.messages WHERE id = %s", (a.message,)
    ).fetchone()["n"]
    audit = admin.execute(
        "SELECT operation, actor, tenant_id FROM public.audit_events "
        "WHERE table_name = 'messages' AND id > %s ORDER BY id",
        (last_audit,),
    ).fetchall()
    admin.commit()
    assert stored == {"tenant_id": a.tenant, "body": "edited"}
    assert bulk == 1 and gone == 0
    actor = client.actor
    assert [(r["operation"], r["actor"], r["tenant_id"]) for r in audit] == [
        ("INSERT", actor, a.tenant),
        ("UPDATE", actor, a.tenant),
        ("DELETE", actor, a.tenant),
    ]
