"""Snapshot of the Dagster code location: a rename or a dropped schedule cannot slip through.

Ops rely on these names (alerts, runbook, dashboards, run history); changing one on purpose
means changing this file in the same commit.
"""

from __future__ import annotations

import dagster as dg
import pytest

from hardening_pipeline.definitions import defs

ASSETS = {
    "app/audit_events",
    "app/developments",
    "app/messages",
    "app/onboarding_attempts",
    "app/tenants",
    "app/units",
    "audit_seal",
    "backup_retention",
    "database_schema",
    "evidence_bundle",
    "hardening_status_report",
    "nightly_backup",
    "restore_drill_report",
    "slack_failure_alerts",
}
CHECKS = {
    ("app/audit_events", "abnormal_delete_volume"),
    ("app/audit_events", "tenant_table_truncated"),
    ("app/audit_events", "unattributed_service_role_writes"),
    ("app/messages", "orphaned_messages"),
    ("app/messages", "tenant_misalignment"),
    ("app/onboarding_attempts", "failed_onboarding_attempts"),
    ("audit_seal", "seal_chain_intact"),
    ("hardening_status_report", "all_green"),
    ("nightly_backup", "backup_is_fresh"),
    ("slack_failure_alerts", "failed_runs_alerted"),
}
JOBS = {
    "audit_seal_job",
    "backup_freshness_job",
    "canary_job",
    "database_schema_job",
    "evidence_job",
    "nightly_backup_job",
    "restore_drill_job",
    "status_check_job",
}
SCHEDULES = {
    "backup_freshness_schedule": ("30 * * * *", "backup_freshness_job"),
    "canary_schedule": ("*/15 * * * *", "canary_job"),
    "nightly_backup_schedule": ("0 2 * * *", "nightly_backup_job"),
    "restore_drill_schedule": ("0 4 1 * *", "restore_drill_job"),
    "status_check_schedule": ("0 6 * * *", "status_check_job"),
}
SENSORS = {"slack_on_run_failure", "backup_freshness_after_backup", "audit_seal_sensor"}


@pytest.fixture(scope="module")
def repo():
    dg.Definitions.validate_loadable(defs)
    return defs.get_repository_def()


def test_asset_keys(repo):
    assert {"/".join(k.path) for k in repo.asset_graph.get_all_asset_keys()} == ASSETS


def test_asset_checks(repo):
    found = {("/".join(c.asset_key.path), c.name) for c in repo.asset_graph.asset_check_keys}
    assert found == CHECKS


def test_jobs(repo):
    assert {j.name for j in repo.get_all_jobs() if not j.name.startswith("__")} == JOBS


def test_schedules_run_by_default_in_utc(repo):
    found = {s.name: (s.cron_schedule, s.job_name) for s in repo.schedule_defs}
    assert found == SCHEDULES
    for schedule in repo.schedule_defs:
        assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING, schedule.name
        assert schedule.execution_timezone == "UTC", schedule.name


def test_sensors_run_by_default(repo):
    assert {s.name for s in repo.sensor_defs} == SENSORS
    assert all(s.default_status == dg.DefaultSensorStatus.RUNNING for s in repo.sensor_defs)


def test_everything_an_operator_sees_is_described(repo):
    """Descriptions are what the UI shows; materialized assets say what a failure means."""
    for key in repo.asset_graph.get_all_asset_keys():
        node = repo.asset_graph.get(key)
        assert node.description, f"asset {key.to_user_string()} has no description"
        if node.is_materializable and key.path[0] != "app":
            assert "fail" in node.description.lower(), key.to_user_string()
    for job in repo.get_all_jobs():
        if not job.name.startswith("__"):
            assert job.description, f"job {job.name} has no description"
    for schedule in repo.schedule_defs:
        assert schedule.description, f"schedule {schedule.name} has no description"
    for sensor in repo.sensor_defs:
        assert sensor.description, f"sensor {sensor.name} has no description"


def test_lineage_runs_from_the_tables_through_the_backup_to_the_drill(repo):
    graph = repo.asset_graph
    backup = graph.get(dg.AssetKey("nightly_backup"))
    tables = {k for k in graph.get_all_asset_keys() if k.path[0] == "app"}
    assert tables and tables <= backup.parent_keys
    assert (
        dg.AssetKey("nightly_backup") in graph.get(dg.AssetKey("restore_drill_report")).parent_keys
    )


def test_every_asset_has_a_kind_and_each_defined_here_a_code_reference(repo):
    graph = repo.asset_graph
    for key in graph.get_all_asset_keys():
        node = graph.get(key)
        assert node.kinds, key
        if node.is_materializable:
            assert "dagster/code_references" in node.metadata, key


def test_database_schema_has_a_job(repo):
    job = repo.get_job("database_schema_job")
    assert {n.name for n in job.nodes} == {"database_schema"}
