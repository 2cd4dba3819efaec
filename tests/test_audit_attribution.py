"""Attribution that SQL cannot set (015): the recorded role comes from the session, the actor
from the JWT claims or, for service_role only, from a pattern-checked app.actor.
"""

from __future__ import annotations

import json
import uuid

import pytest
from psycopg import errors

from hardening_pipeline.db.tenant_scoped_client import TenantScopedClient, TenantScopeError
from tests.support.db import acting_as, insert_tenant, set_service_role_mode

FORGE_IN_BODY = (
    "INSERT INTO messages (tenant_id, development_id, unit_id, sender, body) "
    "SELECT %s, %s, %s, 'mallory', 'forged' FROM (SELECT "
    "set_config('hardening.statement_role', 'service_role', true), "
    "set_config('app.actor', 'service_role:x', true)) s"
)


@pytest.fixture
def tenant(admin):
    return insert_tenant(admin, "alpha")


def last_audit(admin, table: str = "messages") -> dict:
    admin.execute("RESET ROLE")
    return admin.execute(
        "SELECT actor, db_role FROM audit_events WHERE table_name = %s ORDER BY id DESC LIMIT 1",
        (table,),
    ).fetchone()


def claims(tenant, sub: str) -> str:
    return json.dumps({"sub": sub, "role": "authenticated", "tenant_id": str(tenant.tenant)})


def test_authenticated_cannot_forge_role_and_actor_inside_the_statement(admin, tenant):
    sub = str(uuid.uuid4())
    with acting_as(admin, "authenticated", jwt_claims=claims(tenant, sub)):
        admin.execute(FORGE_IN_BODY, (tenant.tenant, tenant.development, tenant.unit))
        row = last_audit(admin)
    assert row == {"actor": f"jwt:{sub}", "db_role": "authenticated"}


def test_without_jwt_a_non_service_role_cannot_claim_a_service_role_actor(admin, tenant):
    with acting_as(admin, "authenticated", tenant=tenant.tenant):
        admin.execute(FORGE_IN_BODY, (tenant.tenant, tenant.development, tenant.unit))
        row = last_audit(admin)
    assert row == {"actor": "db:authenticated", "db_role": "authenticated"}


def test_in_a_jwt_context_app_actor_is_ignored_for_authenticated(admin, tenant):
    sub = str(uuid.uuid4())
    with acting_as(
        admin, "authenticated", actor="user:someone-else", jwt_claims=claims(tenant, sub)
    ):
        admin.execute("UPDATE messages SET body = 'x' WHERE id = %s", (tenant.message,))
        row = last_audit(admin)
    assert row == {"actor": f"jwt:{sub}", "db_role": "authenticated"}


def test_service_role_keeps_its_actor_in_a_jwt_context(admin, tenant):
    service_claims = json.dumps({"role": "service_role"})
    with acting_as(admin, "service_role", actor="service_role:billing", jwt_claims=service_claims):
        admin.execute("UPDATE messages SET body = 'x' WHERE id = %s", (tenant.message,))
        row = last_audit(admin)
    assert row == {"actor": "service_role:billing", "db_role": "service_role"}


BAD_ACTORS = [
    " ",
    "  ",
    "\t",
    "service_role: ",
    "service_role:",
    "service_role:a b",
    "billing",
    "service_role:x\n",
    "service_role:\u00a0",
]


@pytest.mark.parametrize("actor", BAD_ACTORS)
def test_a_malformed_service_role_actor_is_no_actor_in_enforce(admin, tenant, actor):
    with pytest.raises(errors.InsufficientPrivilege, match="without an actor"):
        with acting_as(admin, "service_role", actor=actor):
            admin.execute("UPDATE messages SET body = 'raw' WHERE id = %s", (tenant.message,))


@pytest.mark.parametrize("actor", [" ", "service_role:a b", "billing"])
def test_a_malformed_service_role_actor_is_reported_as_unattributed(admin, tenant, actor):
    set_service_role_mode(admin, "report")
    with acting_as(admin, "service_role", actor=actor):
        admin.execute("UPDATE messages SET body = 'raw' WHERE id = %s", (tenant.message,))
        row = last_audit(admin)
        noted = admin.execute("SELECT count(*) AS n FROM hardening.unattributed_writes").fetchone()
    assert row == {"actor": "service_role:unattributed", "db_role": "service_role"}
    assert noted["n"] == 1


def test_a_well_formed_service_role_actor_still_writes(admin, tenant):
    with acting_as(admin, "service_role", actor="service_role:user:42@billing/v2"):
        admin.execute("UPDATE messages SET body = 'ok' WHERE id = %s", (tenant.message,))
        row = last_audit(admin)
    assert row == {"actor": "service_role:user:42@billing/v2", "db_role": "service_role"}


@pytest.mark.parametrize("actor", ["a b", "x\n", "service_role: x", "é", "x" * 201])
def test_client_refuses_an_actor_the_database_would_not_accept(db_url, actor):
    with pytest.raises(TenantScopeError, match="actor"):
        TenantScopedClient(db_url, actor=actor, mode="service_role")


def test_client_actor_is_recorded_verbatim(db_url, admin, tenant):
    client = TenantScopedClient(db_url, actor="nightly-import", mode="service_role")
    with client.transaction(tenant.tenant) as tx:
        tx.update("messages", {"body": "via client"}, where={"id": tenant.message})
    row = last_audit(admin)
    assert row == {"actor": "service_role:nightly-import", "db_role": "service_role"}
