"""A blocked ``migrate --plan`` on a database that holds tenant data says what 012 will do.

012 starts such a database in report mode, so unattributed ``service_role`` writes go through
(audited and reported) until the team switches to enforce. A plan that stops at a blocker before
012 must not claim they will be refused. Seen on the Supabase-faithful app, whose legacy rows
block 003.
"""

from __future__ import annotations

import psycopg
import pytest

from hardening_pipeline.db.migration_plan import REPORTED_GROUP, plan_migrations
from tests.support.cli import run_hardening
from tests.support.supabase_db import apply_blocker_fixes


def test_a_blocked_plan_on_tenant_data_says_service_role_writes_are_reported(
    supabase_app_url,
) -> None:
    plan = plan_migrations(supabase_app_url)
    assert [b.failure.filename for b in plan.blockers] == ["003_message_safety.sql"]
    service_role = [c for c in plan.changes if c.subject.startswith("service_role writes on ")]
    assert service_role, "002's guard is rehearsed before the blocker"
    assert {c.group for c in service_role} == {REPORTED_GROUP}, service_role
    assert all("012 starts" in c.detail for c in service_role), service_role

    result = run_hardening("migrate", "--plan", url=supabase_app_url)
    assert result.returncode == 1, result.stdout + result.stderr
    out = result.stdout
    assert (
        "service_role writes on public.messages: allowed while the database is in report mode"
        in out
    )
    assert f"  {REPORTED_GROUP} (" in out
    refusals = [line for line in out.splitlines() if "service_role writes on" in line]
    assert refusals and not any("raise insufficient_privilege" in line for line in refusals), out


@pytest.mark.parametrize("holds_data", [True, False], ids=["tenant-data", "no-tenant-data"])
def test_what_a_blocked_plan_says_is_what_migrate_then_does(supabase_app_url, holds_data) -> None:
    """Blocked at 004, the plan's word on service_role writes matches the mode 012 then sets.

    With the app's rows it says reported (report mode); with every tenant table empty it says
    refused (enforce). Then the blocker is fixed, ``hardening migrate`` runs, and the mode it
    prints and stores is the one the plan announced; the blocked ``migrate`` before it claims
    neither.
    """
    apply_blocker_fixes(supabase_app_url)
    with psycopg.connect(supabase_app_url) as conn:
        if not holds_data:
            tables = conn.execute(
                "SELECT string_agg(DISTINCT format('public.%I', c.table_name), ', ') "
                "FROM information_schema.columns c JOIN information_schema.tables t "
                "USING (table_schema, table_name) WHERE c.table_schema = 'public' "
                "AND t.table_type = 'BASE TABLE' "
                "AND (c.column_name = 'tenant_id' OR c.table_name = 'tenants')"
            ).fetchone()[0]
            conn.execute(f"TRUNCATE {tables} CASCADE")
        conn.execute('ALTER POLICY "members read developments" ON public.developments TO public')
    plan = plan_migrations(supabase_app_url)
    assert [b.failure.filename for b in plan.blockers] == ["004_rls_lockdown.sql"]
    service_role = [c for c in plan.changes if c.subject.startswith("service_role writes on ")]
    expected_group = REPORTED_GROUP if holds_data else "writes that will start being refused"
    assert service_role and {c.group for c in service_role} == {expected_group}, service_role

    blocked = run_hardening("migrate", url=supabase_app_url)
    assert blocked.returncode == 1, blocked.stdout + blocked.stderr
    assert "service_role writes on" not in blocked.stdout + blocked.stderr

    with psycopg.connect(supabase_app_url) as conn:
        conn.execute(plan.blockers[0].fix_sql[0].rstrip(";"))
    result = run_hardening("migrate", url=supabase_app_url)
    assert result.returncode == 0, result.stdout + result.stderr
    mode = "report" if holds_data else "enforce"
    assert f"service-role rule: {mode} mode" in result.stdout
    with psycopg.connect(supabase_app_url) as conn:
        stored = conn.execute("SELECT mode FROM hardening.service_role_mode").fetchone()
    assert stored == (mode,)
