"""A blocked ``migrate --plan`` on a database that holds tenant data says what 012 will do.

012 starts such a database in report mode, so unattributed ``service_role`` writes go through
(audited and reported) until the team switches to enforce. A plan that stops at a blocker before
012 must not claim they will be refused. Seen on the Supabase-faithful app, whose legacy rows
block 003.
"""

from __future__ import annotations

from hardening_pipeline.db.migration_plan import REPORTED_GROUP, plan_migrations
from tests.support.cli import run_hardening


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
