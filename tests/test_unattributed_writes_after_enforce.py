"""The unattributed-writes canary after the switch to enforce, and how every report names a source.

In report mode the canary names each unattributed caller and says report mode let it through.
Once ``hardening service-role-mode enforce`` runs, the writes noted before the switch are
history: the canary (and so the evidence run's canary stage) goes quiet at once, not 24 hours
later. A note taken after the switch (a transaction that began in report mode) still counts, and
its wording says enforce is in force. Everywhere a source is shown (canary, status, CLI, migrate,
README, runbook) it is said to be what the writer chose to send, not an identity.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from hardening_pipeline.canaries.runner import CANARIES, run_canaries
from hardening_pipeline.db.service_role_mode import change_mode
from hardening_pipeline.hardening.status import run_status_check
from hardening_pipeline.jobs.canaries import canary_job
from tests.support.db import admin_connect, insert_tenant, set_service_role_mode
from tests.test_cli import run_cli
from tests.test_service_role_mode import APP_TENANTS_BEFORE_THE_KIT

ROOT = Path(__file__).resolve().parents[1]
CANARY = "unattributed_service_role_writes"
# The words that say a source is claimed, not proven.
CLAIMED = "not verified"


@pytest.fixture
def tenant(admin):
    return insert_tenant(admin, "alpha")


def _unattributed_write(admin, tenant, app: str) -> None:
    with admin.transaction():
        admin.execute("SET LOCAL ROLE service_role")
        admin.execute("SELECT set_config('application_name', %s, true)", (app,))
        admin.execute("UPDATE messages SET body = 'raw' WHERE id = %s", (tenant.message,))


def _canary(url: str):
    return run_canaries(url, names=[CANARY])[0]


def test_after_enforce_earlier_writes_no_longer_fire_and_evidence_stays_green(
    db_url, admin, tenant
) -> None:
    set_service_role_mode(admin, "report")
    _unattributed_write(admin, tenant, "cron:digest")
    assert not _canary(db_url).passed
    assert not canary_job(db_url, names=[CANARY], notifier=None).passed

    assert change_mode(db_url, "enforce", force=True).changed
    quiet = _canary(db_url)
    assert quiet.passed and quiet.count == 0, quiet.findings
    assert canary_job(db_url, names=[CANARY], notifier=None).passed
    shown = run_cli("service-role-mode", env={"HARDENING_DATABASE_URL": db_url})
    assert shown.returncode == 0, shown.stderr
    assert "no unattributed service_role writes since enforce was set" in shown.stdout
    assert "cron:digest" not in shown.stdout


def test_in_report_mode_a_finding_says_report_mode_let_it_through(db_url, admin, tenant) -> None:
    set_service_role_mode(admin, "report")
    _unattributed_write(admin, tenant, "cron:digest")
    [finding] = _canary(db_url).findings
    assert "let through because the database is in report mode" in finding.detail
    assert "enforce will refuse them" in finding.detail


def test_a_note_after_the_switch_counts_and_says_enforce(db_url, admin, tenant) -> None:
    set_service_role_mode(admin, "report")
    _unattributed_write(admin, tenant, "cron:digest")
    assert change_mode(db_url, "enforce", force=True).changed
    # What a transaction that began in report mode and wrote after the switch leaves behind.
    admin.execute(
        "INSERT INTO hardening.unattributed_writes (created_at, table_name, operation, "
        "application_name) VALUES (now() + interval '1 minute', 'messages', 'UPDATE', 'late')"
    )
    admin.commit()
    fired = _canary(db_url)
    [finding] = fired.findings
    assert "'late'" in finding.detail
    assert "since the switch to enforce" in finding.detail
    assert "report mode (enforce will refuse them)" not in finding.detail
    spec = CANARIES[CANARY]
    assert "report mode lets them through" not in spec.what_it_means


def test_every_place_a_source_is_shown_says_it_is_claimed(db_url, admin, tenant) -> None:
    set_service_role_mode(admin, "report")
    _unattributed_write(admin, tenant, "edge-fn:notify")
    env = {"HARDENING_DATABASE_URL": db_url}

    shown = run_cli("service-role-mode", env=env)
    assert shown.returncode == 0, shown.stderr
    assert "edge-fn:notify" in shown.stdout and CLAIMED in shown.stdout

    refused = run_cli("service-role-mode", "enforce", env=env)
    assert refused.returncode == 1
    assert "claimed by the writer as edge-fn:notify" in refused.stdout + refused.stderr

    [line] = [x for x in run_status_check(db_url).red if x.name == "service_role_rule_enforced"]
    assert "claimed by the writer as edge-fn:notify" in line.detail

    assert CLAIMED in _canary(db_url).findings[0].detail
    assert "not a verified identity" in CANARIES[CANARY].what_it_means

    readme = " ".join((ROOT / "README.md").read_text().split())
    runbook = " ".join((ROOT / "docs" / "runbook.md").read_text().split())
    report_step = readme[readme.index("**`report`** (where an adopting database starts)") :]
    assert "not a verified identity" in report_step[:800]
    canary_section = runbook[runbook.index('id="canary-unattributed-service-role-writes"') :]
    assert "never as proof of who wrote" in canary_section[:1500]
    status_section = runbook[runbook.index('id="status-service-role-rule-enforced"') :]
    assert "claimed (not verified)" in status_section[:1000]


def test_migrate_into_report_mode_says_the_source_is_claimed(empty_db_url) -> None:
    with admin_connect(empty_db_url) as conn:
        conn.execute(APP_TENANTS_BEFORE_THE_KIT)
        conn.commit()
    result = run_cli("migrate", env={"HARDENING_DATABASE_URL": empty_db_url})
    assert result.returncode == 0, result.stderr
    assert "service-role rule: report mode" in result.stdout
    assert CLAIMED in " ".join(result.stdout.split())
