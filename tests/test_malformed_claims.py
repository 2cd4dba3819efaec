"""Claims that are not a JSON object (018): a request carrying them sees no tenant rows, writes
nothing, and no JSON error reaches it; writers the kit's policies do not bind (the table owner,
a superuser) keep writing, audited as their role.
"""

from __future__ import annotations

import json

import pytest
from psycopg import errors, sql

from hardening_pipeline.db.tenant_resolver import set_membership_resolver
from tests.support.db import acting_as, insert_tenant

NOT_A_JSON_OBJECT = ["not json", "{not json", '{"tenant_id": "\\u0000"}', "[1, 2]", '"x"', "null"]


@pytest.fixture
def tenant(admin):
    return insert_tenant(admin, "alpha")


@pytest.mark.parametrize("claims", NOT_A_JSON_OBJECT)
def test_authenticated_with_malformed_claims_sees_no_tenant_rows(admin, tenant, claims):
    # app.tenant_id names a real tenant: present claims still decide, so it must not leak in.
    with acting_as(admin, "authenticated", tenant=tenant.tenant, jwt_claims=claims):
        for table in ("messages", "units", "developments", "onboarding_attempts"):
            count = sql.SQL("SELECT count(*) AS n FROM {}").format(sql.Identifier(table))
            assert admin.execute(count).fetchone() == {"n": 0}
        assert admin.execute("SELECT hardening.current_tenant_id() AS t").fetchone() == {"t": None}
        assert admin.execute("SELECT hardening.current_tenant_ids() AS t").fetchone() == {"t": []}


@pytest.mark.parametrize("claims", NOT_A_JSON_OBJECT[:2])
def test_authenticated_with_malformed_claims_cannot_write(admin, tenant, claims):
    with acting_as(admin, "authenticated", tenant=tenant.tenant, jwt_claims=claims):
        assert admin.execute("UPDATE messages SET body = 'x'").rowcount == 0
        assert admin.execute("DELETE FROM messages").rowcount == 0
    with (
        pytest.raises(errors.InsufficientPrivilege, match="row-level security"),
        acting_as(admin, "authenticated", tenant=tenant.tenant, jwt_claims=claims),
    ):
        admin.execute(
            "INSERT INTO messages (tenant_id, development_id, unit_id, sender, body) "
            "VALUES (%s, %s, %s, 'mallory', 'in')",
            (tenant.tenant, tenant.development, tenant.unit),
        )


def test_the_membership_resolver_also_fails_closed(db_url, admin, tenant):
    admin.execute(
        "CREATE TABLE public.team_members (user_id uuid, tenant_id uuid); "
        "GRANT SELECT ON public.team_members TO authenticated"
    )
    admin.commit()
    set_membership_resolver(db_url, "public.team_members", "user_id", "tenant_id")
    with acting_as(admin, "authenticated", jwt_claims="not json"):
        assert admin.execute("SELECT count(*) AS n FROM messages").fetchone() == {"n": 0}
        assert admin.execute("SELECT hardening.membership_tenant_ids() AS t").fetchone() == {
            "t": []
        }


@pytest.mark.parametrize("claims", NOT_A_JSON_OBJECT[:2])
def test_a_writer_policies_do_not_bind_is_audited_as_its_role(admin, tenant, claims):
    with acting_as(admin, None, actor="ignored", jwt_claims=claims):
        admin.execute("UPDATE messages SET body = 'fixed' WHERE id = %s", (tenant.message,))
        admin.execute("TRUNCATE onboarding_attempts")
        actors = admin.execute(
            "SELECT operation, actor FROM audit_events "
            "WHERE operation IN ('UPDATE', 'TRUNCATE') ORDER BY id"
        ).fetchall()
        assert admin.execute("SELECT hardening.current_actor() AS a").fetchone() == {
            "a": "db:postgres"
        }
    assert actors == [
        {"operation": "UPDATE", "actor": "db:postgres"},
        {"operation": "TRUNCATE", "actor": "db:postgres"},
    ]


def test_well_formed_claims_still_resolve_and_attribute(admin, tenant):
    claims = json.dumps({"sub": "u-1", "app_metadata": {"tenant_id": str(tenant.tenant)}})
    with acting_as(admin, "authenticated", jwt_claims=claims):
        assert admin.execute("SELECT count(*) AS n FROM messages").fetchone() == {"n": 1}
        admin.execute("UPDATE messages SET body = 'ok'")
        admin.execute("RESET ROLE")
        row = admin.execute("SELECT actor FROM audit_events WHERE operation = 'UPDATE'").fetchone()
    assert row == {"actor": "jwt:u-1"}


def test_the_kit_reads_the_claims_in_one_function(admin):
    """Resolver, attribution and capture call hardening.request_claims(); the report-mode hook
    (012) keeps its own guarded parse, which names malformed claims in its report."""
    parsing = admin.execute(
        "SELECT p.proname FROM pg_proc p WHERE p.pronamespace = 'hardening'::regnamespace "
        "AND p.prosrc LIKE '%%request.jwt.claims%%' AND p.prosrc LIKE '%%::jsonb%%' "
        "ORDER BY 1"
    ).fetchall()
    assert [r["proname"] for r in parsing] == ["allow_unattributed_write", "request_claims"]
