"""The service-role rule holds through SECURITY DEFINER functions (018): a service_role write
made inside one is refused in enforce mode, and reported (canary, status) in report mode.
"""

from __future__ import annotations

import json

import psycopg
import pytest
from psycopg import errors

from hardening_pipeline.canaries.runner import run_canaries
from hardening_pipeline.db.migrations import apply_migrations
from hardening_pipeline.db.service_role_mode import UNATTRIBUTED_ACTOR, change_mode
from tests.support.db import acting_as, insert_tenant, set_service_role_mode
from tests.support.supabase_app import MSG_B
from tests.support.supabase_db import apply_blocker_fixes

# An app function of the kind Supabase projects write for their edge functions: it runs as its
# owner, whose current_user the old guard saw instead of service_role.
DEFINER_FUNCTION = """
    CREATE FUNCTION public.mark_read(message uuid) RETURNS void
    LANGUAGE sql SECURITY DEFINER SET search_path = ''
    AS $$ UPDATE public.messages SET body = body || ' (read)' WHERE id = message $$;
    REVOKE ALL ON FUNCTION public.mark_read(uuid) FROM PUBLIC;
    GRANT EXECUTE ON FUNCTION public.mark_read(uuid) TO service_role, authenticated;
"""


@pytest.fixture
def tenant(admin):
    tenant = insert_tenant(admin, "alpha")
    admin.execute(DEFINER_FUNCTION)
    admin.commit()
    return tenant


def noted(admin) -> list[dict]:
    return admin.execute(
        "SELECT table_name, operation, application_name FROM hardening.unattributed_writes"
    ).fetchall()


def test_enforce_refuses_a_service_role_write_inside_a_security_definer_function(admin, tenant):
    with (
        pytest.raises(errors.InsufficientPrivilege, match="without an actor is refused"),
        acting_as(admin, "service_role"),
    ):
        admin.execute("SELECT public.mark_read(%s)", (tenant.message,))
    assert noted(admin) == []


def test_report_lets_it_through_and_reports_it(db_url, admin, tenant):
    set_service_role_mode(admin, "report")
    with admin.transaction():
        admin.execute("SET LOCAL ROLE service_role")
        admin.execute("SELECT set_config('application_name', 'edge-fn:mark-read', true)")
        admin.execute("SELECT public.mark_read(%s)", (tenant.message,))
    audited = admin.execute(
        "SELECT actor, db_role FROM audit_events WHERE table_name = 'messages' "
        "AND operation = 'UPDATE'"
    ).fetchall()
    assert audited == [{"actor": UNATTRIBUTED_ACTOR, "db_role": "service_role"}]
    assert noted(admin) == [
        {"table_name": "messages", "operation": "UPDATE", "application_name": "edge-fn:mark-read"}
    ]
    canary = run_canaries(db_url, names=["unattributed_service_role_writes"])[0]
    assert not canary.passed and "'edge-fn:mark-read'" in canary.findings[0].detail


def test_an_attributed_service_role_call_still_writes(admin, tenant):
    with acting_as(admin, "service_role", actor="service_role:mark-read"):
        admin.execute("SELECT public.mark_read(%s)", (tenant.message,))
        admin.execute("RESET ROLE")
        row = admin.execute("SELECT actor FROM audit_events WHERE operation = 'UPDATE'").fetchone()
    assert row == {"actor": "service_role:mark-read"}


def test_other_callers_of_the_function_are_not_refused(admin, tenant):
    """The rule is about service_role: authenticated calling the same function is its own
    caller, recorded by its JWT subject."""
    claims = json.dumps({"sub": "u-7", "tenant_id": str(tenant.tenant)})
    with acting_as(admin, "authenticated", jwt_claims=claims):
        admin.execute("SELECT public.mark_read(%s)", (tenant.message,))
        admin.execute("RESET ROLE")
        row = admin.execute(
            "SELECT actor, db_role FROM audit_events WHERE operation = 'UPDATE'"
        ).fetchone()
    assert row == {"actor": "jwt:u-7", "db_role": "authenticated"}


def test_on_supabase_a_definer_function_owned_by_postgres_is_refused(supabase_app_url):
    """As Supabase's postgres (no superuser): the function belongs to the app's owner role."""
    apply_blocker_fixes(supabase_app_url)
    apply_migrations(supabase_app_url)
    change_mode(supabase_app_url, "enforce", force=True)
    with psycopg.connect(supabase_app_url) as conn:
        conn.execute(DEFINER_FUNCTION)
        conn.commit()
        with pytest.raises(errors.InsufficientPrivilege, match="without an actor is refused"):
            conn.execute("SET ROLE service_role")
            conn.execute("SELECT public.mark_read(%s)", (MSG_B,))
