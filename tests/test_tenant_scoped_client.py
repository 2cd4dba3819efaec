"""TenantScopedClient: try every way to make a write land outside its tenant."""

from __future__ import annotations

import contextlib
import tempfile
import threading

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg import errors, sql
from psycopg_pool import ConnectionPool

from hardening_pipeline.db.tenant_scoped_client import TenantScopedClient, TenantScopeError
from tests.support.db import acting_as, insert_tenant


@pytest.fixture
def tenants(admin):
    a, b = insert_tenant(admin, "alpha"), insert_tenant(admin, "bravo")
    admin.commit()
    return a, b


@pytest.fixture
def pool(db_url):
    with ConnectionPool(db_url, min_size=1, max_size=1, open=True) as p:
        yield p


@contextlib.contextmanager
def frontend_messages(conn: psycopg.Connection):
    """Capture what the client sends to the server (libpq protocol trace, frontend side)."""
    sent: list[str] = []
    with tempfile.TemporaryFile() as f:
        conn.pgconn.trace(f.fileno())
        conn.pgconn.set_trace_flags(psycopg.pq.Trace.SUPPRESS_TIMESTAMPS)
        try:
            yield sent
        finally:
            conn.pgconn.untrace()
            f.seek(0)
            sent.extend(line for line in f.read().decode().splitlines() if line.startswith("F"))


def snapshot(admin) -> dict[str, int]:
    rows = admin.execute(
        "SELECT (SELECT count(*) FROM messages) AS messages, "
        "(SELECT count(*) FROM onboarding_attempts) AS onboarding, "
        "(SELECT count(*) FROM audit_events) AS audit, "
        "(SELECT md5(string_agg(m::text, ',' ORDER BY id)) FROM messages m) AS digest"
    ).fetchone()
    admin.commit()
    return rows


# -- the tenant id itself ----------------------------------------------------------------------


@pytest.mark.parametrize("bad", [None, "", "   ", "not-a-uuid", 42, "1234", b"bytes", [], "null"])
def test_missing_empty_or_malformed_tenant_is_refused_before_connecting(db_url, bad):
    client = TenantScopedClient("host=/nonexistent dbname=never", actor="user:1")
    with pytest.raises(TenantScopeError):
        with client.transaction(bad):
            pass  # pragma: no cover - never reached


def test_actor_and_mode_are_required(db_url):
    with pytest.raises(TenantScopeError, match="actor is required"):
        TenantScopedClient(db_url, actor="  ")
    with pytest.raises(TenantScopeError, match="unknown mode"):
        TenantScopedClient(db_url, actor="x", mode="superuser")  # type: ignore[arg-type]
    for reserved in ("unattributed", "service_role:unattributed"):
        with pytest.raises(TenantScopeError, match="reserved"):
            TenantScopedClient(db_url, actor=reserved, mode="service_role")


# -- refused writes send nothing ---------------------------------------------------------------

HOSTILE_NAMES = [
    "audit_events",
    "schema_migrations",
    "pg_authid",
    'messages"; DROP TABLE tenants; --',
    "messages; DELETE FROM messages",
    "Messages",
    "méssages",
    "messages\x00",
    "",
    None,
]


class ShiftyKey(str):
    """Spells a column's name but hashes differently, so ``name in row`` misses it."""

    def __hash__(self) -> int:
        return hash("shifty:" + str(self))

    def __eq__(self, other: object) -> bool:
        return str.__eq__(self, other)


def refused_operations(a, b):
    """(description, callable(tx)) pairs that must all raise TenantScopeError."""
    msg = {"development_id": a.development, "unit_id": a.unit, "sender": "s", "body": "b"}
    ops = [
        ("row for other tenant", lambda tx: tx.insert("messages", {**msg, "tenant_id": b.tenant})),
        ("row with junk tenant", lambda tx: tx.insert("messages", {**msg, "tenant_id": "junk"})),
        ("row with empty tenant", lambda tx: tx.insert("messages", {**msg, "tenant_id": ""})),
        ("unknown column", lambda tx: tx.insert("messages", {**msg, "is_admin": True})),
        ("hostile column", lambda tx: tx.insert("messages", {**msg, 'body") VALUES (1); --': 1})),
        ("empty row", lambda tx: tx.insert("messages", {})),
        ("not a mapping", lambda tx: tx.insert("messages", [("sender", "x")])),  # type: ignore
        (
            "bulk with one foreign row",
            lambda tx: tx.insert_many("messages", [msg, {**msg, "tenant_id": b.tenant}]),
        ),
        (
            "update moves tenant",
            lambda tx: tx.update("messages", {"tenant_id": b.tenant}, where={"id": a.message}),
        ),
        (
            "update where other tenant",
            lambda tx: tx.update("messages", {"body": "x"}, where={"tenant_id": b.tenant}),
        ),
        (
            "update unknown column",
            lambda tx: tx.update("messages", {"nope": 1}, where={"id": a.message}),
        ),
        ("update without where", lambda tx: tx.update("messages", {"body": "x"}, where={})),
        ("update nothing", lambda tx: tx.update("messages", {}, where={"id": a.message})),
        ("delete without where", lambda tx: tx.delete("messages", where={})),
        ("delete other tenant", lambda tx: tx.delete("messages", where={"tenant_id": b.tenant})),
        ("delete hostile where", lambda tx: tx.delete("messages", where={"id = id OR 1": 1})),
        ("select hostile order", lambda tx: tx.select("messages", order_by=["id; DROP TABLE x"])),
        ("select bad limit", lambda tx: tx.select("messages", limit=-1)),
        # A str subclass can answer == and hash() differently each time it is asked, so the
        # tenant check and the statement could see different keys.
        (
            "str-subclass tenant key",
            lambda tx: tx.insert("messages", {**msg, ShiftyKey("tenant_id"): b.tenant}),
        ),
        (
            "str-subclass key moves the row",
            lambda tx: tx.update(
                "messages", {ShiftyKey("tenant_id"): b.tenant}, where={"id": a.message}
            ),
        ),
        (
            "str-subclass where key",
            lambda tx: tx.delete("messages", where={ShiftyKey("tenant_id"): b.tenant}),
        ),
        ("str-subclass table", lambda tx: tx.insert(ShiftyKey("messages"), msg)),
        ("str-subclass value", lambda tx: tx.insert("messages", {**msg, "body": ShiftyKey("x")})),
        (
            "sql object as value",
            lambda tx: tx.insert("messages", {**msg, "body": sql.SQL("(SELECT 'x')")}),
        ),
        (
            "sql literal as where value",
            lambda tx: tx.delete("messages", where={"id": sql.Literal(a.message)}),
        ),
        ("dict as value", lambda tx: tx.insert("messages", {**msg, "body": {"a": 1}})),
        ("object as value", lambda tx: tx.update("messages", {"body": object()}, where={"id": 1})),
        ("nested sql in list", lambda tx: tx.delete("messages", where={"id": [sql.SQL("1")]})),
    ]
    for name in HOSTILE_NAMES:
        ops.append((f"table {name!r}", lambda tx, n=name: tx.insert(n, msg)))
        ops.append((f"delete {name!r}", lambda tx, n=name: tx.delete(n, where={"id": a.message})))
    return ops


@pytest.mark.parametrize("mode", ["authenticated", "service_role"])
def test_every_refused_operation_sends_no_sql_and_changes_nothing(
    db_url, admin, tenants, pool, mode
):
    a, b = tenants
    client = TenantScopedClient(pool, actor="user:tester", mode=mode)
    before = snapshot(admin)
    for description, op in refused_operations(a, b):
        with client.transaction(a.tenant) as tx:
            with frontend_messages(tx.connection) as sent:
                with pytest.raises(TenantScopeError):
                    op(tx)
                    pytest.fail(f"{description}: not refused")
            assert sent == [], f"{description}: client sent {sent}"
    assert snapshot(admin) == before


# -- what it does when asked properly -----------------------------------------------------------


def test_crud_round_trip_fills_tenant_and_returns_dicts(admin, tenants, pool):
    a, _ = tenants
    client = TenantScopedClient(pool, actor="user:42")
    with client.transaction(str(a.tenant)) as tx:
        row = tx.insert(
            "messages",
            {"development_id": a.development, "unit_id": a.unit, "sender": "r", "body": "hi"},
        )
        assert isinstance(row, dict) and row["tenant_id"] == a.tenant and row["body"] == "hi"
        updated = tx.update("messages", {"body": "edited"}, where={"id": row["id"]})
        assert [u["body"] for u in updated] == ["edited"]
        listed = tx.select("messages", where={"unit_id": a.unit}, order_by=["created_at"])
        assert {m["id"] for m in listed} == {a.message, row["id"]}
        assert tx.select("messages", columns=["id"], where={"id": row["id"]}) == [{"id": row["id"]}]
        assert len(tx.delete("messages", where={"id": row["id"]})) == 1
    audit = admin.execute(
        "SELECT operation, actor, tenant_id, db_role FROM audit_events "
        "WHERE table_name = 'messages' AND record_id = %s ORDER BY id",
        (str(row["id"]),),
    ).fetchall()
    assert [r["operation"] for r in audit] == ["INSERT", "UPDATE", "DELETE"]
    assert {(r["actor"], r["tenant_id"], r["db_role"]) for r in audit} == {
        ("user:42", a.tenant, "authenticated")
    }


def test_the_client_cannot_see_or_touch_another_tenants_rows(tenants, pool):
    a, b = tenants
    client = TenantScopedClient(pool, actor="user:42")
    with client.transaction(a.tenant) as tx:
        assert tx.select("messages", where={"id": b.message}) == []
        assert tx.update("messages", {"body": "x"}, where={"id": b.message}) == []
        assert tx.delete("messages", where={"id": b.message}) == []
        assert {r["tenant_id"] for r in tx.select("units")} == {a.tenant}


def test_service_role_mode_is_scoped_and_audited_with_its_actor(admin, tenants, pool):
    a, b = tenants
    client = TenantScopedClient(pool, actor="nightly-import", mode="service_role")
    assert client.actor == "service_role:nightly-import"
    with client.transaction(a.tenant) as tx:
        assert {r["tenant_id"] for r in tx.select("messages")} == {a.tenant}
        count = tx.insert_many(
            "onboarding_attempts",
            [{"email": f"u{i}@example.com", "status": "failed", "error": "smtp"} for i in range(3)],
        )
        assert count == 3
    rows = admin.execute(
        "SELECT actor, tenant_id, db_role FROM audit_events "
        "WHERE table_name = 'onboarding_attempts' AND operation = 'INSERT' "
        "AND actor LIKE 'service_role:%'"
    ).fetchall()
    assert (
        rows
        == [
            {
                "actor": "service_role:nightly-import",
                "tenant_id": a.tenant,
                "db_role": "service_role",
            }
        ]
        * 3
    )


def test_a_raw_service_role_write_that_skips_the_wrapper_is_refused(admin, tenants):
    a, _ = tenants
    with pytest.raises(errors.InsufficientPrivilege, match="without an actor"):
        with acting_as(admin, "service_role"):
            admin.execute("DELETE FROM messages WHERE tenant_id = %s", (a.tenant,))


def test_rls_backs_the_client_up_in_authenticated_mode(tenants, pool):
    """Even a statement sent on the client's connection stays inside the tenant."""
    a, b = tenants
    client = TenantScopedClient(pool, actor="user:42")
    with client.transaction(a.tenant) as tx:
        rows = tx.connection.execute("SELECT DISTINCT tenant_id FROM messages").fetchall()
        assert rows == [(a.tenant,)]


def test_failure_inside_the_unit_of_work_rolls_everything_back(admin, tenants, pool):
    a, _ = tenants
    client = TenantScopedClient(pool, actor="user:42")
    before = snapshot(admin)
    with pytest.raises(RuntimeError):
        with client.transaction(a.tenant) as tx:
            tx.insert("onboarding_attempts", {"email": "x@example.com"})
            raise RuntimeError("boom")
    assert snapshot(admin) == before


@pytest.mark.parametrize("mode", ["authenticated", "service_role"])
def test_a_transaction_object_refuses_every_call_once_its_block_has_ended(
    admin, tenants, pool, mode
):
    a, _ = tenants
    client = TenantScopedClient(pool, actor="user:kept", mode=mode)
    with client.transaction(a.tenant) as kept:
        pass
    other = TenantScopedClient(pool, actor="nightly", mode="service_role")
    before = snapshot(admin)
    msg = {"development_id": a.development, "unit_id": a.unit, "sender": "s", "body": "b"}
    calls = [
        lambda: kept.insert("messages", msg),
        lambda: kept.insert_many("messages", [msg]),
        lambda: kept.update("messages", {"body": "x"}, where={"id": a.message}),
        lambda: kept.delete("messages", where={"id": a.message}),
        lambda: kept.select("messages"),
        lambda: kept.connection,
    ]
    # Also while another client holds the same pooled connection in a service_role transaction.
    with other.transaction(a.tenant) as live:
        for call in calls:
            with frontend_messages(live.connection) as sent:
                with pytest.raises(TenantScopeError, match="has ended"):
                    call()
            assert sent == []
    for call in calls:
        with pytest.raises(TenantScopeError, match="has ended"):
            call()
    assert snapshot(admin) == before


# -- pooled connections and threads -------------------------------------------------------------


def test_pooled_connection_carries_no_tenant_to_the_next_borrower(tenants, pool):
    a, _ = tenants
    client = TenantScopedClient(pool, actor="user:42")
    with client.transaction(a.tenant) as tx:
        first_backend = tx.connection.info.backend_pid
        assert tx.select("messages")
    with pool.connection() as conn:
        assert conn.info.backend_pid == first_backend  # the very same connection
        row = conn.execute(
            "SELECT current_setting('app.tenant_id', true), current_setting('app.actor', true), "
            "current_user"
        ).fetchone()
        assert row[0] in ("", None) and row[1] in ("", None) and row[2] != "authenticated"
        conn.execute("SET ROLE authenticated")
        assert conn.execute("SELECT count(*) FROM messages").fetchone()[0] == 0
        conn.execute("RESET ROLE")


def test_concurrent_clients_never_see_each_others_rows(db_url, admin):
    data = [insert_tenant(admin, f"tenant-{i}") for i in range(4)]
    admin.commit()
    problems: list[str] = []
    with ConnectionPool(db_url, min_size=2, max_size=4, open=True) as shared:

        def work(t):
            client = TenantScopedClient(shared, actor=f"user:{t.tenant}")
            for i in range(25):
                with client.transaction(t.tenant) as tx:
                    tx.insert(
                        "messages",
                        {
                            "development_id": t.development,
                            "unit_id": t.unit,
                            "sender": "t",
                            "body": str(i),
                        },
                    )
                    seen = {r["tenant_id"] for r in tx.select("messages", columns=["tenant_id"])}
                    if seen != {t.tenant}:
                        problems.append(f"{t.tenant} saw {seen}")

        threads = [threading.Thread(target=work, args=(t,)) for t in data]
        for th in threads:
            th.start()
        for th in threads:
            th.join(120)
    assert problems == []
    counts = admin.execute(
        "SELECT tenant_id, count(*) AS n FROM messages GROUP BY tenant_id"
    ).fetchall()
    assert sorted(r["n"] for r in counts) == [26, 26, 26, 26]


# -- property: whatever is thrown at it, nothing lands outside the tenant ------------------------

TABLE_CHOICES = [
    "messages",
    "units",
    "developments",
    "onboarding_attempts",
    "tenants",
    "audit_events",
    "nope",
    "messages;--",
    "Messages",
]
COLUMN_CHOICES = [
    "tenant_id",
    "id",
    "body",
    "sender",
    "unit_id",
    "development_id",
    "label",
    "name",
    "email",
    "status",
    "error",
    "bogus",
    'body"',
    "tenant_id ",
]


def tenant_digest(admin, tenant) -> str:
    """An md5 over every row a tenant owns, in every tenant table: equal means untouched."""
    return admin.execute(
        "SELECT md5(string_agg(x::text, ',' ORDER BY x::text)) AS d FROM ("
        "SELECT m::text AS x FROM messages m WHERE tenant_id = %(t)s UNION ALL "
        "SELECT u::text FROM units u WHERE tenant_id = %(t)s UNION ALL "
        "SELECT o::text FROM onboarding_attempts o WHERE tenant_id = %(t)s UNION ALL "
        "SELECT t::text FROM tenants t WHERE id = %(t)s) s",
        {"t": tenant},
    ).fetchone()["d"]


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_random_inputs_never_write_outside_the_tenant(db_url, admin, tenants, data):
    a, b = tenants
    b_before = tenant_digest(admin, b.tenant)
    last_audit = admin.execute("SELECT coalesce(max(id), 0) AS m FROM audit_events").fetchone()["m"]
    admin.commit()

    tenant_value = data.draw(st.sampled_from([a.tenant, str(a.tenant), b.tenant, None, "", "x"]))
    values = st.one_of(
        st.none(),
        st.text(max_size=20),
        st.integers(),
        st.sampled_from(
            [
                a.tenant,
                b.tenant,
                str(b.tenant),
                a.unit,
                b.unit,
                a.development,
                b.development,
                "failed",
                "succeeded",
            ]
        ),
    )
    payload = data.draw(st.dictionaries(st.sampled_from(COLUMN_CHOICES), values, max_size=5))
    table = data.draw(st.sampled_from(TABLE_CHOICES))
    op = data.draw(st.sampled_from(["insert", "update", "delete", "select"]))
    mode = data.draw(st.sampled_from(["authenticated", "service_role"]))
    client = TenantScopedClient(db_url, actor="fuzz", mode=mode)
    with contextlib.suppress(TenantScopeError, psycopg.Error):
        with client.transaction(tenant_value) as tx:
            if op == "insert":
                tx.insert(table, payload)
            elif op == "update":
                tx.update(
                    table,
                    payload,
                    where={"id": data.draw(st.sampled_from([a.message, b.message, a.unit]))},
                )
            elif op == "delete":
                tx.delete(table, where=payload)
            else:
                tx.select(table, where=payload)

    b_after = tenant_digest(admin, b.tenant)
    new_audit = admin.execute(
        "SELECT DISTINCT tenant_id FROM audit_events WHERE id > %s", (last_audit,)
    ).fetchall()
    admin.commit()
    assert b_after == b_before
    assert {r["tenant_id"] for r in new_audit} <= {a.tenant}
