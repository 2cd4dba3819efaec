"""The Dagster layer for canaries and the status report: names, schedules, and real runs."""

from __future__ import annotations

import dagster as dg
import pytest

from hardening_pipeline.defs.assets import APPLICATION_TABLES, observe_application_tables
from hardening_pipeline.defs.checks import (
    CANARY_CHECK_SPECS,
    canary_checks,
    canary_job,
    canary_schedule,
)
from hardening_pipeline.defs.resources import AppDatabaseResource, SlackAlertsResource
from hardening_pipeline.defs.sensors import slack_on_run_failure
from hardening_pipeline.defs.status import (
    hardening_status_report,
    status_check_job,
    status_check_schedule,
)
from tests.support.db import insert_tenant


def test_names_and_schedules_snapshot():
    from hardening_pipeline.definitions import defs

    repo = defs.get_repository_def()
    jobs = {j.name for j in repo.get_all_jobs()}
    assert {"canary_job", "status_check_job"} <= jobs
    schedules = {s.name: s for s in repo.schedule_defs}
    assert schedules["canary_schedule"].cron_schedule == "*/15 * * * *"
    assert schedules["status_check_schedule"].cron_schedule == "0 6 * * *"
    for name in ("canary_schedule", "status_check_schedule"):
        assert schedules[name].default_status == dg.DefaultScheduleStatus.RUNNING
    checks = {(str(k.asset_key.path), k.name) for k in canary_checks.check_keys}
    assert checks == {
        ("['app', 'messages']", "orphaned_messages"),
        ("['app', 'messages']", "tenant_misalignment"),
        ("['app', 'audit_events']", "abnormal_delete_volume"),
        ("['app', 'audit_events']", "tenant_table_truncated"),
        ("['app', 'audit_events']", "unattributed_service_role_writes"),
        ("['app', 'onboarding_attempts']", "failed_onboarding_attempts"),
    }
    blocking = {s.name: s.blocking for s in canary_checks.check_specs}
    assert blocking == {
        "orphaned_messages": True,
        "tenant_misalignment": True,
        "abnormal_delete_volume": False,
        "tenant_table_truncated": True,
        "failed_onboarding_attempts": False,
        "unattributed_service_role_writes": False,
    }


def test_schedules_request_their_jobs():
    for schedule, job in ((canary_schedule, canary_job), (status_check_schedule, status_check_job)):
        context = dg.build_schedule_context()
        requests = list(schedule.evaluate_tick(context).run_requests or [])
        assert len(requests) == 1
        assert schedule.job_name == job.name


@pytest.fixture
def resources(db_url, slack_receiver):
    return {
        "app_db": AppDatabaseResource(database_url=db_url),
        "slack": SlackAlertsResource(webhook_url=slack_receiver.url, max_retries=0, timeout=5),
    }


def run_canary_job(resources, instance=None):
    defs = dg.Definitions(
        assets=[observe_application_tables],
        asset_checks=[canary_checks],
        jobs=[canary_job],
        resources=resources,
    )
    return defs.resolve_job_def("canary_job").execute_in_process(
        raise_on_error=False, instance=instance
    )


def test_canary_job_reports_each_canary_on_its_table(db_url, admin, resources, slack_receiver):
    t = insert_tenant(admin, "defs-tenant")
    clean = run_canary_job(resources)
    assert clean.success
    evaluations = {e.check_name: e for e in clean.get_asset_check_evaluations()}
    assert set(evaluations) == {
        "orphaned_messages",
        "tenant_misalignment",
        "abnormal_delete_volume",
        "tenant_table_truncated",
        "failed_onboarding_attempts",
        "unattributed_service_role_writes",
    }
    assert all(e.passed for e in evaluations.values())
    # No empty "error" row on a canary that ran.
    assert not any("error" in e.metadata for e in evaluations.values())
    assert slack_receiver.requests == []

    with admin.transaction():
        admin.execute("SET LOCAL session_replication_role = replica")
        admin.execute("SELECT set_config('app.actor', 'test:replica', true)")
        admin.execute("DELETE FROM units WHERE id = %s", (t.unit,))
    instance = dg.DagsterInstance.ephemeral()
    red = run_canary_job(resources, instance)
    assert not red.success
    evaluations = {e.check_name: e for e in red.get_asset_check_evaluations()}
    orphan = evaluations["orphaned_messages"]
    assert not orphan.passed
    assert orphan.severity == dg.AssetCheckSeverity.ERROR
    assert orphan.asset_key == dg.AssetKey(["app", "messages"])
    assert orphan.metadata["count"].value == 1
    assert orphan.metadata["sample_ids"].value == [str(t.message)]
    assert orphan.metadata["runbook"].value == "docs/runbook.md#canary-orphaned-messages"
    assert len(slack_receiver.requests) == 1
    run_canary_job(resources, instance)  # unchanged finding: no second alert
    assert len(slack_receiver.requests) == 1
    # The failed runs were alerted by the canary itself: the failure sensor adds no message.
    context = dg.build_sensor_context(instance=instance, resources={"slack": resources["slack"]})
    slack_on_run_failure(context)
    assert len(slack_receiver.requests) == 1


def test_canary_job_logs_an_undelivered_alert(db_url, admin):
    t = insert_tenant(admin, "defs-down")
    with admin.transaction():
        admin.execute("SET LOCAL session_replication_role = replica")
        admin.execute("SELECT set_config('app.actor', 'test:replica', true)")
        admin.execute("DELETE FROM units WHERE id = %s", (t.unit,))
    resources = {
        "app_db": AppDatabaseResource(database_url=db_url),
        "slack": SlackAlertsResource(
            webhook_url="http://127.0.0.1:9/services/x", max_retries=0, timeout=2
        ),
    }
    instance = dg.DagsterInstance.ephemeral()
    result = run_canary_job(resources, instance)
    evaluations = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert not evaluations["orphaned_messages"].passed
    # a blocking ERROR check fails the run, so run-failure alerting sees it too
    assert not result.success
    messages = [
        e.user_message
        for e in instance.all_logs(result.run_id)
        if "NOT delivered" in (e.user_message or "")
    ]
    assert messages and "canary:orphaned_messages" in messages[0]


def test_status_report_asset(db_url, admin, resources, tmp_path, monkeypatch, slack_receiver):
    # Relative, as by default: the metadata still holds an absolute path.
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HARDENING_REPORTS_DIR", "reports")
    result = dg.materialize([hardening_status_report], resources=resources)
    assert result.success
    metadata = result.asset_materializations_for_node("hardening_status_report")[0].metadata
    assert metadata["red_count"].value == 0
    assert "migrations_applied" in metadata["checklist"].value
    assert metadata["report_path"].value.startswith(str(tmp_path / "reports"))
    (check,) = result.get_asset_check_evaluations()
    assert check.passed and check.check_name == "all_green"
    assert slack_receiver.requests == []

    admin.execute("GRANT DELETE ON audit_events TO service_role")
    admin.commit()
    instance = dg.DagsterInstance.ephemeral()
    red = dg.materialize(
        [hardening_status_report], resources=resources, instance=instance, raise_on_error=False
    )
    # A red report fails the run, with the first red line and what to do in the error.
    assert not red.success
    (step_failure,) = red.get_step_failure_events()
    error = step_failure.step_failure_data.user_failure_data.description
    assert error.startswith("the hardening status is red: 1 of ")
    assert "First: audit_events_no_write_grants:" in error
    metadata = red.asset_materializations_for_node("hardening_status_report")[0].metadata
    assert metadata["red"].value == ["audit_events_no_write_grants"]
    assert "🔴 red" in metadata["checklist"].value
    (check,) = red.get_asset_check_evaluations()
    assert not check.passed
    # The check itself says what to do: the line, the fix and the runbook section.
    assert check.description.startswith("audit_events_no_write_grants: ")
    assert "Fix: REVOKE" in check.description
    assert "runbook.md#status-audit-events-no-write-grants" in check.description
    assert "REVOKE" in check.metadata["fix"].value
    assert len(slack_receiver.requests) == 1
    # The status alert was the one message: the failure sensor does not repeat it.
    slack_on_run_failure(
        dg.build_sensor_context(instance=instance, resources={"slack": resources["slack"]})
    )
    assert len(slack_receiver.requests) == 1
    assert len(list((tmp_path / "reports").glob("status-*.json"))) == 2


def test_one_canary_runs_on_its_own_so_its_execute_button_works(db_url, admin):
    # The UI enables a check's "Execute" only when it can run without the others.
    from hardening_pipeline.definitions import defs

    graph = defs.get_repository_def().asset_graph
    for spec in CANARY_CHECK_SPECS:
        assert graph.get_execution_set_asset_and_check_keys(spec.key) == {spec.key}

    t = insert_tenant(admin, "alone")
    with admin.transaction():
        admin.execute("SET LOCAL session_replication_role = replica")
        admin.execute("SELECT set_config('app.actor', 'test:replica', true)")
        admin.execute("DELETE FROM units WHERE id = %s", (t.unit,))
    result = dg.materialize(
        [observe_application_tables, canary_checks],
        selection=dg.AssetSelection.checks(
            dg.AssetCheckKey(dg.AssetKey(["app", "messages"]), "tenant_misalignment")
        ),
        resources={
            "app_db": AppDatabaseResource(database_url=db_url),
            "slack": SlackAlertsResource(webhook_url="", max_retries=0),
        },
        raise_on_error=False,
    )
    # Only the selected canary ran: the orphan it does not look for did not fail the run.
    assert result.success
    assert [e.check_name for e in result.get_asset_check_evaluations()] == ["tenant_misalignment"]


def test_the_canary_run_observes_each_table(db_url, admin, resources):
    insert_tenant(admin, "observed")
    admin.execute("ANALYZE")
    admin.commit()
    result = run_canary_job(resources)
    assert result.success
    observed = {
        e.asset_key.to_user_string(): e
        for e in result.all_events
        if e.event_type_value == "ASSET_OBSERVATION"
    }
    assert set(observed) == {f"app/{name}" for name in APPLICATION_TABLES}
    tenants = observed["app/tenants"].event_specific_data.asset_observation.metadata
    assert tenants["live_rows_estimate"].value >= 1


def test_observe_on_one_application_table_page_observes_that_table_only(db_url, resources):
    """The UI's "Observe" on an `app/*` page launches the observation with one key selected."""
    defs = dg.Definitions(assets=[observe_application_tables], resources=resources)
    job = defs.resolve_implicit_global_asset_job_def()
    key = dg.AssetKey(["app", "messages"])
    result = job.get_subset(asset_selection={key}).execute_in_process(raise_on_error=False)
    assert result.success, result.all_events
    observed = [
        event.event_specific_data.asset_observation.asset_key
        for event in result.all_events
        if event.event_type == dg.DagsterEventType.ASSET_OBSERVATION
    ]
    assert observed == [key]
