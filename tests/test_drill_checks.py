"""The packaged drill checks: green on a hardened database, and each one red when its guarantee
is broken on purpose, the way a restore that lost it would break it."""

from __future__ import annotations

import pytest
from psycopg import sql

from hardening_pipeline.restore.drill_checks import DRILL_CHECKS, run_drill_checks
from hardening_pipeline.seed import seed_demo_data
from tests.support.db import admin_connect


@pytest.fixture
def seeded(db_url: str) -> str:
    seed_demo_data(db_url, tenants=2, messages_per_unit=2, random_seed=5)
    return db_url


def breakage(url: str, *statements: str | sql.Composable) -> None:
    with admin_connect(url) as conn:
        for statement in statements:
            conn.execute(statement)
        conn.commit()


def outcomes(url: str) -> dict[str, tuple[bool, str]]:
    run = run_drill_checks(url)
    return {o.name: (o.passed, o.detail) for o in run.outcomes}


def test_every_check_passes_on_a_hardened_database(seeded: str) -> None:
    run = run_drill_checks(seeded)
    assert [o.name for o in run.outcomes] == list(DRILL_CHECKS)
    assert run.failed == 0, run.output
    assert run.passed == len(DRILL_CHECKS) == 9
    assert run.output.splitlines()[-1] == "9 passed, 0 failed"


def test_a_database_without_tenants_is_checked_with_probe_tenants(db_url: str) -> None:
    # A new install is not red for having no tenants: the checks add synthetic probe tenants
    # (tests/test_drill_probe_rows.py tries them against leaks and a missing key).
    run = run_drill_checks(db_url)
    results = {o.name: o for o in run.outcomes}
    assert run.failed == 0, run.output
    assert "2 synthetic probe tenants" in results["each_tenant_sees_only_its_rows"].detail


@pytest.mark.parametrize(
    ("statements", "refuted"),
    [
        (
            [
                "ALTER TABLE messages NO FORCE ROW LEVEL SECURITY",
                "ALTER TABLE messages DISABLE ROW LEVEL SECURITY",
            ],
            {"each_tenant_sees_only_its_rows", "no_tenant_context_sees_nothing"},
        ),
        (["GRANT SELECT ON messages TO anon"], {"anon_reads_nothing"}),
        (
            # Origin-only: replica mode skips it, which is what an ENABLE ALWAYS guard prevents.
            ["ALTER TABLE audit_events ENABLE TRIGGER audit_events_append_only"],
            {
                "audit_log_refuses_update",
                "audit_log_refuses_delete",
                "audit_log_refuses_truncate",
                "audit_triggers_are_enabled_always",
            },
        ),
        (
            ["ALTER TABLE onboarding_attempts DISABLE TRIGGER USER"],
            {"client_writes_are_audited", "audit_triggers_are_enabled_always"},
        ),
    ],
    ids=["rls-off", "anon-grant", "audit-guard-origin-only", "audit-capture-off"],
)
def test_each_broken_guarantee_turns_its_check_red(
    seeded: str, statements: list[str], refuted: set[str]
) -> None:
    breakage(seeded, *statements)
    results = outcomes(seeded)
    red = {name for name, (passed, _) in results.items() if not passed}
    assert red == refuted, results


def test_a_message_across_tenants_turns_the_key_check_red(seeded: str) -> None:
    with admin_connect(seeded) as conn:
        composite = conn.execute(
            "SELECT conname FROM pg_constraint WHERE conrelid = 'public.messages'::regclass "
            "AND contype = 'f' AND cardinality(conkey) > 1"
        ).fetchall()
    assert composite, "messages should carry a composite key to its unit and tenant"
    drop = sql.SQL("ALTER TABLE messages DROP CONSTRAINT {}")
    breakage(seeded, *(drop.format(sql.Identifier(r["conname"])) for r in composite))
    results = outcomes(seeded)
    assert results["cross_tenant_message_is_refused"][0] is False
    assert "was accepted" in results["cross_tenant_message_is_refused"][1]
    assert [n for n, (ok, _) in results.items() if not ok] == ["cross_tenant_message_is_refused"]


def test_a_check_that_cannot_connect_fails_instead_of_raising() -> None:
    run = run_drill_checks("postgresql://nobody@127.0.0.1:1/none")
    assert run.passed == 0 and run.failed == len(DRILL_CHECKS)
    assert all("could not check" in o.detail for o in run.outcomes)


@pytest.mark.parametrize(
    ("invariants", "output", "named"),
    [
        (
            [("canaries_clean", True, "0 findings"), ("rls_isolation", False, "tenant B saw 3")],
            "PASSED probe_rows: ok",
            "invariant rls_isolation is red: tenant B saw 3",
        ),
        (
            [("canaries_clean", True, "0 findings")],
            "PASSED probe_rows: ok\nFAILED audit_append_only: an UPDATE on audit_events worked",
            "drill test audit_append_only: an UPDATE on audit_events worked",
        ),
    ],
)
def test_a_red_drill_names_what_failed(tmp_path, invariants, output, named):
    """The run failure and its Slack alert name the failing check, not "something is red"."""
    from datetime import UTC, datetime

    from hardening_pipeline.jobs.drill import DrillJobResult
    from hardening_pipeline.reports import ReportFiles
    from hardening_pipeline.restore.drill_result import DrillResult, Invariant
    from hardening_pipeline.restore.report import drill_alert

    result = DrillResult(
        started_at=datetime.now(UTC),
        invariants=[Invariant(*row) for row in invariants],
        tests_passed=1,
        tests_failed=output.count("FAILED"),
        tests_output=output,
    )
    job = DrillJobResult(result, ReportFiles(tmp_path / "r.md", tmp_path / "r.json"), None)
    assert not job.passed
    assert job.failure.startswith(named + "; the report ")
    assert named in drill_alert(result, None).summary
