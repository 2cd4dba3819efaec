"""The audit log: append-only for every role, and a faithful record of every tenant write."""

from __future__ import annotations

import uuid

import pytest
from psycopg import errors, sql

from tests.support.db import acting_as, insert_tenant

MUTATIONS = [
    "UPDATE audit_events SET actor = 'forged'",
    "DELETE FROM audit_events",
    "TRUNCATE audit_events",
]


@pytest.fixture
def tenant(admin):
    return insert_tenant(admin, "alpha")


def audit_rows(conn, table: str, record_id: uuid.UUID | None = None) -> list[dict]:
    """Read as the superuser, also from inside an ``acting_as`` block (RESET ROLE)."""
    conn.execute("RESET ROLE")
    query = "SELECT * FROM audit_events WHERE table_name = %s"
    params: list = [table]
    if record_id is not None:
        query += " AND record_id = %s"
        params.append(str(record_id))
    return conn.execute(query + " ORDER BY id", params).fetchall()


@pytest.mark.parametrize("statement", MUTATIONS)
@pytest.mark.parametrize("role", ["service_role", "authenticated", "anon"])
def test_app_roles_cannot_change_audit_events(admin, tenant, role, statement):
    with pytest.raises(errors.InsufficientPrivilege):
        with acting_as(admin, role, actor="test:tamper", tenant=tenant.tenant):
            admin.execute(statement)


@pytest.mark.parametrize("statement", MUTATIONS)
def test_owner_cannot_change_audit_events(admin, tenant, statement):
    with pytest.raises(errors.InsufficientPrivilege):
        with acting_as(admin, "hardening_audit_owner"):
            admin.execute(statement)


@pytest.mark.parametrize("statement", MUTATIONS)
def test_superuser_is_stopped_by_the_guard_trigger(admin, tenant, statement):
    with pytest.raises(errors.InsufficientPrivilege, match="append-only"):
        with acting_as(admin, None):
            admin.execute(statement)


@pytest.mark.parametrize("statement", MUTATIONS)
def test_replica_mode_does_not_skip_the_guard(admin, tenant, statement):
    """session_replication_role = replica skips ordinary triggers; ours are ENABLE ALWAYS."""
    with pytest.raises(errors.InsufficientPrivilege, match="append-only"):
        with acting_as(admin, None):
            admin.execute("SET LOCAL session_replication_role = replica")
            admin.execute(statement)


def test_non_superusers_cannot_enter_replica_mode(admin):
    with pytest.raises(errors.InsufficientPrivilege):
        with acting_as(admin, "service_role", actor="test"):
            admin.execute("SET LOCAL session_replication_role = replica")


@pytest.mark.parametrize("role", ["service_role", "authenticated"])
def test_nobody_can_forge_an_audit_row(admin, tenant, role):
    with pytest.raises(errors.InsufficientPrivilege):
        with acting_as(admin, role, actor="test:forge", tenant=tenant.tenant):
            admin.execute(
                "INSERT INTO audit_events (actor, table_name, operation, after, db_role) "
                "VALUES ('someone-else', 'messages', 'INSERT', '{}', 'x')"
            )


@pytest.mark.parametrize(
    ("operation", "before", "after"),
    [
        ("MERGE", None, "{}"),  # not one of the four operations (009 kept one check for this)
        ("insert", None, "{}"),
        ("INSERT", "{}", "{}"),
        ("INSERT", None, None),
        ("UPDATE", None, None),
        ("DELETE", None, "{}"),
        ("TRUNCATE", "{}", None),
    ],
)
def test_malformed_audit_rows_are_refused_even_from_the_owner(admin, operation, before, after):
    """The audit owner (the capture functions' role) cannot write a row whose images do not
    fit its operation, nor an operation that does not exist."""
    with pytest.raises(errors.CheckViolation):
        with acting_as(admin, "hardening_audit_owner"):
            admin.execute(
                "INSERT INTO audit_events (actor, table_name, operation, before, after, db_role) "
                "VALUES ('test:malformed', 'messages', %s, %s, %s, 'x')",
                (operation, before, after),
            )


def test_no_role_holds_update_delete_or_truncate_on_audit_events(admin):
    rows = admin.execute(
        "SELECT grantee::regrole::text AS who, privilege_type FROM pg_class c, "
        "aclexplode(c.relacl) WHERE c.oid = 'public.audit_events'::regclass "
        "AND privilege_type IN ('UPDATE', 'DELETE', 'TRUNCATE')"
    ).fetchall()
    assert rows == []


def test_insert_update_delete_each_leave_exact_audit_rows(admin, tenant):
    with acting_as(admin, "authenticated", tenant=tenant.tenant, actor="user:42"):
        new_id = admin.execute(
            "INSERT INTO messages (tenant_id, development_id, unit_id, sender, body) "
            "VALUES (%s, %s, %s, 'resident', 'first') RETURNING id",
            (tenant.tenant, tenant.development, tenant.unit),
        ).fetchone()["id"]
        admin.execute("UPDATE messages SET body = 'edited' WHERE id = %s", (new_id,))
        admin.execute("DELETE FROM messages WHERE id = %s", (new_id,))
        rows = audit_rows(admin, "messages", new_id)
    assert [r["operation"] for r in rows] == ["INSERT", "UPDATE", "DELETE"]
    ins, upd, dele = rows
    assert all(r["actor"] == "user:42" for r in rows)
    assert all(r["tenant_id"] == tenant.tenant for r in rows)
    assert all(r["db_role"] == "authenticated" for r in rows)
    assert ins["before"] is None and ins["after"]["body"] == "first"
    assert upd["before"]["body"] == "first" and upd["after"]["body"] == "edited"
    assert dele["before"]["body"] == "edited" and dele["after"] is None
    assert ins["after"]["id"] == str(new_id) and ins["record_id"] == str(new_id)


def test_every_tenant_table_is_captured(admin, tenant):
    expected = {
        "tenants": tenant.tenant,
        "developments": tenant.development,
        "units": tenant.unit,
        "messages": tenant.message,
        "onboarding_attempts": tenant.onboarding,
    }
    for table, record in expected.items():
        rows = audit_rows(admin, table, record)
        assert len(rows) == 1, table
        assert rows[0]["operation"] == "INSERT"
        assert rows[0]["tenant_id"] == tenant.tenant
        assert rows[0]["actor"] == "test:fixture"


def test_multi_row_statement_writes_one_audit_row_per_row(admin, tenant):
    with acting_as(admin, "service_role", actor="service_role:test-bulk"):
        admin.execute(
            "INSERT INTO onboarding_attempts (tenant_id, email, status, error) "
            "SELECT %s, 'u' || g || '@example.com', 'failed', 'smtp timeout' "
            "FROM generate_series(1, 25) g",
            (tenant.tenant,),
        )
        admin.execute(
            "UPDATE onboarding_attempts SET status = 'succeeded', error = NULL "
            "WHERE tenant_id = %s AND status = 'failed'",
            (tenant.tenant,),
        )
        admin.execute("RESET ROLE")
        rows = admin.execute(
            "SELECT operation, count(*) AS n, count(DISTINCT record_id) AS ids, "
            "min(actor) AS actor FROM audit_events WHERE table_name = 'onboarding_attempts' "
            "AND actor = 'service_role:test-bulk' GROUP BY operation ORDER BY operation"
        ).fetchall()
    assert rows == [
        {"operation": "INSERT", "n": 25, "ids": 25, "actor": "service_role:test-bulk"},
        {"operation": "UPDATE", "n": 25, "ids": 25, "actor": "service_role:test-bulk"},
    ]


def test_service_role_write_without_actor_is_refused(admin, tenant):
    for statement, params in [
        (
            "INSERT INTO onboarding_attempts (tenant_id, email) VALUES (%s, 'raw@example.com')",
            (tenant.tenant,),
        ),
        ("UPDATE messages SET body = 'raw' WHERE id = %s", (tenant.message,)),
        ("DELETE FROM onboarding_attempts WHERE id = %s", (tenant.onboarding,)),
    ]:
        with pytest.raises(errors.InsufficientPrivilege, match="without an actor"):
            with acting_as(admin, "service_role"):
                admin.execute(statement, params)


def test_service_role_write_without_actor_is_refused_even_if_it_touches_no_rows(admin):
    with pytest.raises(errors.InsufficientPrivilege, match="without an actor"):
        with acting_as(admin, "service_role"):
            admin.execute("DELETE FROM messages WHERE false")


def test_actor_falls_back_to_jwt_subject_then_role(admin, tenant):
    sub = str(uuid.uuid4())
    claims = f'{{"sub": "{sub}", "tenant_id": "{tenant.tenant}"}}'
    with acting_as(admin, "authenticated", jwt_claims=claims):
        admin.execute("UPDATE messages SET body = 'via api' WHERE id = %s", (tenant.message,))
        row = audit_rows(admin, "messages", tenant.message)[-1]
    assert row["actor"] == f"jwt:{sub}"
    with acting_as(admin, "authenticated", tenant=tenant.tenant):
        admin.execute("UPDATE messages SET body = 'no actor' WHERE id = %s", (tenant.message,))
        row = audit_rows(admin, "messages", tenant.message)[-1]
    assert row["actor"] == "db:authenticated"


@pytest.mark.parametrize("operation", ["INSERT", "UPDATE", "DELETE"])
@pytest.mark.parametrize(
    "context",
    [
        {"role": "service_role", "actor": "service_role:drift-check"},
        {"role": "authenticated", "jwt": True},
        {"role": "authenticated"},
        {"role": None},
    ],
    ids=["actor", "jwt-subject", "role-only", "superuser"],
)
def test_capture_records_what_current_actor_returns(admin, tenant, operation, context):
    """The capture takes the actor and role from hardening.statement_identity(), as
    hardening.current_actor() and hardening.statement_role() do: the two must never drift apart.
    Asked twice in one session, so nothing from the first transaction leaks into the second.
    """
    for _ in range(2):
        sub = str(uuid.uuid4())
        claims = f'{{"sub": "{sub}", "tenant_id": "{tenant.tenant}"}}' if "jwt" in context else None
        with acting_as(
            admin,
            context["role"],
            tenant=tenant.tenant,
            actor=context.get("actor"),
            jwt_claims=claims,
        ):
            new_id = uuid.uuid4()
            statement, params = {
                "INSERT": (
                    "INSERT INTO onboarding_attempts (id, tenant_id, email) "
                    "VALUES (%s, %s, 'x@y.z')",
                    (new_id, tenant.tenant),
                ),
                "UPDATE": ("UPDATE messages SET body = 'drift' WHERE id = %s", (tenant.message,)),
                "DELETE": ("DELETE FROM onboarding_attempts WHERE id = %s", (tenant.onboarding,)),
            }[operation]
            admin.execute(statement, params)
            # Both functions read the session (015), so they are asked in the writer's role;
            # they belong to the audit owner alone, hence the grant, rolled back with the rest.
            admin.execute("RESET ROLE")
            if context["role"]:
                admin.execute(
                    sql.SQL(
                        "GRANT EXECUTE ON FUNCTION hardening.current_actor(), "
                        "hardening.statement_role(), hardening.statement_identity() TO {role}; "
                        "SET LOCAL ROLE {role}"
                    ).format(role=sql.Identifier(context["role"]))
                )
            expected = admin.execute(
                "SELECT hardening.current_actor() AS actor, hardening.statement_role() AS db_role"
            ).fetchone()
            admin.execute("RESET ROLE")
            recorded = admin.execute(
                "SELECT actor, db_role FROM audit_events WHERE operation = %s "
                "ORDER BY id DESC LIMIT 1",
                (operation,),
            ).fetchone()
        assert recorded == expected
        if "jwt" in context:
            assert recorded["actor"] == f"jwt:{sub}"
        elif "actor" in context:
            assert recorded["actor"] == context["actor"]
        else:
            assert recorded["actor"] == f"db:{recorded['db_role']}"


def test_audit_rows_are_invisible_to_tenants(admin, tenant):
    with pytest.raises(errors.InsufficientPrivilege):
        with acting_as(admin, "authenticated", tenant=tenant.tenant):
            admin.execute("SELECT * FROM audit_events")


def test_guard_and_capture_triggers_are_enabled_always(admin):
    rows = admin.execute(
        "SELECT c.relname, t.tgname, t.tgenabled FROM pg_trigger t "
        "JOIN pg_class c ON c.oid = t.tgrelid WHERE NOT t.tgisinternal "
        "AND (t.tgname LIKE '%audit%' OR c.relname = 'audit_events')"
    ).fetchall()
    tables = {r["relname"] for r in rows}
    assert tables >= {
        "audit_events",
        "tenants",
        "developments",
        "units",
        "messages",
        "onboarding_attempts",
    }
    assert all(r["tgenabled"] == "A" for r in rows), rows


def test_a_primary_key_change_leaves_two_unlinked_half_rows(admin, tenant):
    """What the README says of it: the capture pairs old and new images by id."""
    new_id = uuid.uuid4()
    with acting_as(admin, None, actor="test:pk"):
        admin.execute(
            "UPDATE onboarding_attempts SET id = %s WHERE id = %s", (new_id, tenant.onboarding)
        )
        rows = admin.execute(
            "SELECT record_id, before IS NULL AS no_before, after IS NULL AS no_after "
            "FROM audit_events WHERE operation = 'UPDATE' AND table_name = 'onboarding_attempts' "
            "ORDER BY record_id"
        ).fetchall()
    assert sorted((r["record_id"], r["no_before"], r["no_after"]) for r in rows) == sorted(
        [(str(tenant.onboarding), False, True), (str(new_id), True, False)]
    )
