"""The Dagster layer of backups: assets materialized for real, the schedule, the failure sensor.

The sensor is run against real failed runs in an ephemeral instance and a real HTTP server
standing in for Slack, including Slack being down.
"""

from __future__ import annotations

import base64
import json
import os
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import pytest

from hardening_pipeline.backup.catalog import list_backups
from hardening_pipeline.backup.crypto import Keyring
from hardening_pipeline.backup.store import FileStore
from hardening_pipeline.definitions import defs
from hardening_pipeline.defs.backup import backup_retention, nightly_backup
from hardening_pipeline.defs.resources import (
    AppDatabaseResource,
    BackupStoreResource,
    EncryptionKeysResource,
    SlackAlertsResource,
)
from hardening_pipeline.defs.sensors import (
    failed_runs_alerted,
    slack_failure_alerts,
    slack_on_run_failure,
)
from hardening_pipeline.seed import seed_demo_data
from tests.support.s3_server import closed_port_url
from tests.support.slack_receiver import SERVER_ERROR, SlackReceiver

YESTERDAY = (datetime.now(UTC).date() - timedelta(days=1)).isoformat()


@pytest.fixture
def master_key() -> bytes:
    return os.urandom(32)


def backup_resources(db_url: str, store_dir: Path, master_key: bytes) -> dict[str, object]:
    return {
        "app_db": AppDatabaseResource(database_url=db_url),
        "backup_store": BackupStoreResource(store_url=store_dir.as_uri()),
        "encryption_keys": EncryptionKeysResource(key=base64.b64encode(master_key).decode()),
    }


def metadata_of(result: dg.ExecuteInProcessResult, asset: dg.AssetsDefinition) -> dict:
    (event,) = result.asset_materializations_for_node(asset.op.name)
    return {k: v.value for k, v in event.metadata.items()}


def test_materialize_backup_then_retention(db_url: str, tmp_path: Path, master_key: bytes) -> None:
    seed_demo_data(db_url, tenants=3, messages_per_unit=5)
    store_dir = tmp_path / "backups"
    result = dg.materialize(
        [nightly_backup, backup_retention],
        resources=backup_resources(db_url, store_dir, master_key),
    )
    assert result.success
    backup = metadata_of(result, nightly_backup)
    catalog = list_backups(FileStore(store_dir), Keyring(master_key))
    assert [b.backup_id for b in catalog.valid] == [backup["backup_id"]]
    assert backup["objects"] == 4 and backup["tenants"] == 3
    assert backup["rows"] > 150
    assert backup["stored_bytes"] == catalog.valid[0].manifest.objects[0].ciphertext_bytes + sum(
        o.ciphertext_bytes for o in catalog.valid[0].manifest.objects[1:]
    )
    assert backup["duration_seconds"] > 0 and backup["throughput_mib_per_second"] >= 0
    assert backup["stored_mib"] == round(backup["stored_bytes"] / (1024 * 1024), 3)
    assert str(store_dir) in backup["location"]
    assert backup["dry_run"] is False

    retention = metadata_of(result, backup_retention)
    assert retention["kept"] == 1 and retention["deleted"] == 0
    assert retention["newest_backup"] == backup["backup_id"]
    assert f"| {backup['backup_id']} |" in retention["decisions"]
    assert "newest" in retention["decisions"]
    # Three columns: with a fourth the UI squeezed "why" to one word per line.
    assert retention["decisions"].splitlines()[0] == "| backup | decision | why |"


def test_dry_run_backup_stores_nothing(db_url: str, tmp_path: Path, master_key: bytes) -> None:
    result = dg.materialize(
        [nightly_backup],
        resources=backup_resources(db_url, tmp_path / "backups", master_key),
        run_config={"ops": {"nightly_backup": {"config": {"dry_run": True}}}},
    )
    assert result.success
    assert metadata_of(result, nightly_backup)["dry_run"] is True
    assert not (tmp_path / "backups").exists()


def test_backups_are_not_partitioned() -> None:
    # A backup captures the database at run time; daily partitions could only ever be filled
    # for "now" and showed the rest red and unfillable. Recency is backup_is_fresh's job.
    assert nightly_backup.partitions_def is None and backup_retention.partitions_def is None
    assert defs.resolve_job_def("nightly_backup_job").partitions_def is None


def test_missing_key_fails_with_the_fix(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("BACKUP_ENCRYPTION_KEY", raising=False)
    result = dg.materialize(
        [nightly_backup],
        resources={
            "app_db": AppDatabaseResource(database_url=db_url),
            "backup_store": BackupStoreResource(store_url=(tmp_path / "b").as_uri()),
            "encryption_keys": EncryptionKeysResource(),
        },
        raise_on_error=False,
    )
    assert not result.success
    (failure,) = result.get_step_failure_events()
    description = failure.step_failure_data.user_failure_data.description
    assert "BACKUP_ENCRYPTION_KEY is not set" in description and "hardening keygen" in description
    assert not (tmp_path / "b").exists()


def test_schedule_runs_one_backup_a_night_at_0200_utc() -> None:
    schedule = defs.resolve_schedule_def("nightly_backup_schedule")
    assert schedule.cron_schedule == "0 2 * * *"
    assert schedule.execution_timezone == "UTC"
    assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING
    context = dg.build_schedule_context(
        scheduled_execution_time=datetime(2026, 3, 2, 2, 0, tzinfo=UTC),
        repository_def=defs.get_repository_def(),
    )
    (request,) = schedule.evaluate_tick(context).run_requests
    assert request.partition_key is None
    assert request.run_key == "nightly-backup-2026-03-02"
    job = defs.resolve_job_def("nightly_backup_job")
    assert job.tags["hardening/exclusive"] == "backup"
    # The freshness check does not ride along: planned in this run, it would read "Execution
    # failed" whenever the backup step fails. A sensor re-checks it after each successful run.
    assert {n.name for n in job.nodes} == {"nightly_backup", "backup_retention"}
    sensor = defs.resolve_sensor_def("backup_freshness_after_backup")
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    assert sensor.job_name == "backup_freshness_job"


def test_a_failed_backup_run_leaves_backup_is_fresh_as_the_last_check_left_it(
    db_url: str, tmp_path: Path, master_key: bytes
) -> None:
    """A verified backup from minutes ago stays green through a failed backup run."""
    resources = backup_resources(db_url, tmp_path / "store", master_key)
    instance = dg.DagsterInstance.ephemeral()
    good = defs.resolve_job_def("nightly_backup_job").execute_in_process(
        instance=instance, resources=resources
    )
    assert good.success
    fresh_run = defs.resolve_job_def("backup_freshness_job").execute_in_process(
        instance=instance, resources=resources
    )
    (evaluation,) = fresh_run.get_asset_check_evaluations()
    assert evaluation.passed

    broken = {**resources, "backup_store": BackupStoreResource(store_url=closed_port_url())}
    failed = defs.resolve_job_def("nightly_backup_job").execute_in_process(
        instance=instance, resources=broken, raise_on_error=False
    )
    assert not failed.success
    planned = [
        event
        for event in failed.all_events
        if event.event_type
        in (
            dg.DagsterEventType.ASSET_CHECK_EVALUATION_PLANNED,
            dg.DagsterEventType.ASSET_CHECK_EVALUATION,
        )
    ]
    assert planned == []
    key = dg.AssetCheckKey(dg.AssetKey("nightly_backup"), "backup_is_fresh")
    latest = instance.event_log_storage.get_latest_asset_check_execution_by_key([key])[key]
    assert latest.run_id == fresh_run.run_id


def test_definitions_load_and_wire_the_backup_pieces() -> None:
    dg.Definitions.validate_loadable(defs)
    sensor = defs.resolve_sensor_def("slack_on_run_failure")
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING


# --- the failure sensor -------------------------------------------------------------------------


@dg.op(config_schema={"message": dg.Field(str, default_value="")})
def explode(context) -> None:
    # An empty message: the op succeeds.
    if context.op_config["message"]:
        raise dg.Failure(description=context.op_config["message"])


@dg.job
def doomed_job() -> None:
    explode()


def run_doomed_job(
    instance: dg.DagsterInstance, message: str, tags=None
) -> dg.ExecuteInProcessResult:
    return doomed_job.execute_in_process(
        instance=instance,
        raise_on_error=False,
        tags=tags,
        run_config={"ops": {"explode": {"config": {"message": message}}}},
    )


def fail_a_run(
    instance: dg.DagsterInstance, tags: dict[str, str] | None = None, message: str = ""
) -> str:
    """A failed run; without ``message``, with a failure of its own (a new incident each)."""
    result = run_doomed_job(
        instance, message or f"the disk is on fire ({uuid.uuid4().hex[:6]})", tags
    )
    assert not result.success
    return result.run_id


def tick(instance: dg.DagsterInstance, cursor: str | None, webhook_url: str) -> str | None:
    """Evaluate one sensor tick like the daemon would and return the cursor it stored."""
    context = dg.build_sensor_context(
        instance=instance,
        cursor=cursor,
        resources={"slack": SlackAlertsResource(webhook_url=webhook_url, max_retries=0, timeout=3)},
    )
    slack_on_run_failure(context)
    return context.cursor


@pytest.fixture
def instance(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("DAGSTER_WEBSERVER_URL", "https://dagster.example.com")
    with dg.instance_for_test() as instance:
        yield instance


def test_failed_run_is_alerted_once_with_job_step_error_and_link(
    instance: dg.DagsterInstance, slack_receiver: SlackReceiver
) -> None:
    run_id = fail_a_run(instance)
    cursor = tick(instance, None, slack_receiver.url)
    assert len(slack_receiver.requests) == 1
    payload = json.dumps(slack_receiver.requests[0])
    assert "doomed_job" in payload
    assert "explode" in payload
    assert "the disk is on fire" in payload
    assert f"https://dagster.example.com/runs/{run_id}" in payload

    # Later ticks do not repeat it; a different failure gets its own single alert.
    cursor = tick(instance, cursor, slack_receiver.url)
    assert len(slack_receiver.requests) == 1
    second = fail_a_run(instance)
    cursor = tick(instance, cursor, slack_receiver.url)
    cursor = tick(instance, cursor, slack_receiver.url)
    assert len(slack_receiver.requests) == 2
    assert second in json.dumps(slack_receiver.requests[1])


def test_the_same_failure_run_after_run_alerts_once_then_resolves(
    instance: dg.DagsterInstance, slack_receiver: SlackReceiver
) -> None:
    """One incident, one message: the seal that fails every minute must not page every minute."""
    first = fail_a_run(instance, message="first bad id 5: sealed row changed")
    cursor = tick(instance, None, slack_receiver.url)
    for _ in range(3):
        fail_a_run(instance, message="first bad id 5: sealed row changed")
        cursor = tick(instance, cursor, slack_receiver.url)
    assert len(slack_receiver.requests) == 1
    assert first in json.dumps(slack_receiver.requests[0])
    assert json.loads(cursor)["incidents"]

    assert run_doomed_job(instance, "").success
    cursor = tick(instance, cursor, slack_receiver.url)
    cursor = tick(instance, cursor, slack_receiver.url)
    assert len(slack_receiver.requests) == 2
    resolved = json.dumps(slack_receiver.requests[1])
    assert "Resolved: doomed_job" in resolved and "4 failed runs" in resolved
    assert json.loads(cursor)["incidents"] == {}

    # It fails again later: a new incident, alerted again.
    fail_a_run(instance, message="first bad id 5: sealed row changed")
    tick(instance, cursor, slack_receiver.url)
    assert len(slack_receiver.requests) == 3


def test_an_incident_that_lasts_is_reminded_not_repeated(
    instance: dg.DagsterInstance, slack_receiver: SlackReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    fail_a_run(instance, message="store unreachable")
    cursor = tick(instance, None, slack_receiver.url)
    monkeypatch.setattr("hardening_pipeline.alerts.incidents.REMIND_EVERY", timedelta(0))
    fail_a_run(instance, message="store unreachable")
    cursor = tick(instance, cursor, slack_receiver.url)
    assert len(slack_receiver.requests) == 2
    reminder = json.dumps(slack_receiver.requests[1])
    assert "Still failing: doomed_job" in reminder and "2 failed runs" in reminder


def test_a_run_its_own_job_already_alerted_gets_no_second_message(
    instance: dg.DagsterInstance, slack_receiver: SlackReceiver
) -> None:
    run_id = fail_a_run(instance, tags={"hardening/alerted": "true"})
    cursor = tick(instance, None, slack_receiver.url)
    assert slack_receiver.requests == []
    assert run_id in json.loads(cursor)["handled"]


def test_an_unreachable_slack_reads_as_a_sentence_and_the_pending_age_keeps_moving(
    instance: dg.DagsterInstance,
) -> None:
    fail_a_run(instance)
    resources = {"slack": SlackAlertsResource(webhook_url=closed_port_url(), max_retries=0)}
    context = dg.build_sensor_context(instance=instance, resources=resources)
    [first] = slack_on_run_failure(context).asset_events
    (error,) = first.metadata["pending_runs"].value.values()
    assert error.startswith("Slack could not be reached (connection refused)")
    assert "URLError" not in error and "Errno" not in error
    # The set of pending alerts did not change, yet the next tick reports its age again.
    context = dg.build_sensor_context(instance=instance, cursor=context.cursor, resources=resources)
    [again] = slack_on_run_failure(context).asset_events
    assert (
        again.metadata["oldest_pending_seconds"].value
        >= first.metadata["oldest_pending_seconds"].value
    )


def test_slack_answering_500_keeps_the_alert_for_the_next_tick(
    instance: dg.DagsterInstance, slack_receiver: SlackReceiver
) -> None:
    run_id = fail_a_run(instance)
    slack_receiver.respond_with([SERVER_ERROR])
    cursor = tick(instance, None, slack_receiver.url)
    assert len(slack_receiver.requests) == 1  # tried, refused
    assert run_id not in json.loads(cursor)["handled"]

    cursor = tick(instance, cursor, slack_receiver.url)  # Slack is back
    cursor = tick(instance, cursor, slack_receiver.url)
    assert len(slack_receiver.requests) == 2
    assert run_id in json.dumps(slack_receiver.requests[1])
    assert run_id in json.loads(cursor)["handled"]


def test_slack_unreachable_then_back_sends_exactly_once(
    instance: dg.DagsterInstance, slack_receiver: SlackReceiver
) -> None:
    first = fail_a_run(instance)
    second = fail_a_run(instance)
    cursor = tick(instance, None, closed_port_url() + "/services/x")
    cursor = tick(instance, cursor, closed_port_url() + "/services/x")
    assert json.loads(cursor)["handled"] == {}

    for _ in range(3):
        cursor = tick(instance, cursor, slack_receiver.url)
    sent = [json.dumps(r) for r in slack_receiver.requests]
    assert len(sent) == 2
    assert first in sent[0] and second in sent[1]


def test_runs_that_will_be_retried_are_not_alerted(
    instance: dg.DagsterInstance, slack_receiver: SlackReceiver
) -> None:
    retried = fail_a_run(instance, tags={"dagster/will_retry": "true"})
    cursor = tick(instance, None, slack_receiver.url)
    assert slack_receiver.requests == []
    assert retried in json.loads(cursor)["handled"]
    final = fail_a_run(instance, tags={"dagster/will_retry": "false"})
    tick(instance, cursor, slack_receiver.url)
    assert len(slack_receiver.requests) == 1
    assert final in json.dumps(slack_receiver.requests[0])


def test_with_run_retries_on_the_retry_decision_is_respected(slack_receiver: SlackReceiver) -> None:
    # The instance itself tags the failed run dagster/will_retry=true here (one retry left).
    settings = {"run_retries": {"enabled": True, "max_retries": 1}}
    with dg.instance_for_test(overrides=settings) as instance:
        run_id = fail_a_run(instance)
        assert instance.get_run_by_id(run_id).tags.get("dagster/will_retry") == "true"
        tick(instance, None, slack_receiver.url)
    assert slack_receiver.requests == []


def test_one_undelivered_alert_never_holds_back_the_others(
    instance: dg.DagsterInstance, slack_receiver: SlackReceiver
) -> None:
    first = fail_a_run(instance)
    second = fail_a_run(instance)
    slack_receiver.respond_with([SERVER_ERROR])  # Slack refuses the first alert only
    context = dg.build_sensor_context(
        instance=instance,
        resources={"slack": SlackAlertsResource(webhook_url=slack_receiver.url, max_retries=0)},
    )
    result = slack_on_run_failure(context)
    state = json.loads(context.cursor)
    assert first in state["pending"] and second in state["handled"]
    assert second in json.dumps(slack_receiver.requests[1])
    # The undelivered alert is a warning on the slack_failure_alerts asset, not only a log line.
    [evaluation] = result.asset_events
    assert evaluation.check_name == "failed_runs_alerted" and evaluation.passed is False
    assert evaluation.severity == dg.AssetCheckSeverity.WARN
    assert first in evaluation.metadata["pending_runs"].value
    assert evaluation.metadata["runbook"].value == "docs/runbook.md#failure-alerts-pending"

    # A third run fails while the first is still pending; the next tick delivers both.
    third = fail_a_run(instance)
    context = dg.build_sensor_context(
        instance=instance,
        cursor=context.cursor,
        resources={"slack": SlackAlertsResource(webhook_url=slack_receiver.url, max_retries=0)},
    )
    result = slack_on_run_failure(context)
    state = json.loads(context.cursor)
    assert state["pending"] == {} and {first, third} <= set(state["handled"])
    sent = [json.dumps(r) for r in slack_receiver.requests]
    assert len(sent) == 4 and third in sent[2] and first in sent[3]
    [evaluation] = result.asset_events
    assert evaluation.passed is True
    # Nothing changed since: no new check evaluation, no repeated alert.
    assert tick(instance, context.cursor, slack_receiver.url) is not None
    assert len(slack_receiver.requests) == 4


def test_the_pending_check_reads_the_sensor_state(
    instance: dg.DagsterInstance, slack_receiver: SlackReceiver
) -> None:
    result = dg.materialize(
        [slack_failure_alerts, failed_runs_alerted],
        instance=instance,
        selection=dg.AssetSelection.checks(failed_runs_alerted),
    )
    [evaluation] = result.get_asset_check_evaluations()
    assert evaluation.passed is True


def test_each_tick_says_what_it_did(instance: dg.DagsterInstance) -> None:
    fail_a_run(instance)
    context = dg.build_sensor_context(
        instance=instance,
        resources={"slack": SlackAlertsResource(webhook_url=closed_port_url(), max_retries=0)},
    )
    result = slack_on_run_failure(context)
    assert "1 alert(s) NOT delivered yet" in result.skip_reason.skip_message


def test_a_backup_with_rows_the_drill_cannot_load_is_kept_but_fails_with_the_canary(
    db_url: str, admin, tmp_path: Path, master_key: bytes
) -> None:
    seed_demo_data(db_url, tenants=2, messages_per_unit=2)
    # An orphaned message, planted the way a replica-mode load or a console hotfix would.
    with admin.transaction():
        admin.execute("SET LOCAL session_replication_role = replica")
        admin.execute("SELECT set_config('app.actor', 'test:replica', true)")
        admin.execute("DELETE FROM units WHERE id = (SELECT unit_id FROM messages LIMIT 1)")
    store_dir = tmp_path / "backups"
    result = dg.materialize(
        [nightly_backup],
        resources=backup_resources(db_url, store_dir, master_key),
        raise_on_error=False,
    )
    assert not result.success
    (failure,) = result.get_step_failure_events()
    line = failure.step_failure_data.error.message.splitlines()[0]
    assert "will not restore cleanly: canary orphaned_messages finds" in line
    # The backup itself was stored and recorded: bad rows are no reason to have no backup.
    backup = metadata_of(result, nightly_backup)
    assert backup["integrity_canaries_failed"] == 1
    assert [b.backup_id for b in list_backups(FileStore(store_dir), Keyring(master_key)).valid] == [
        backup["backup_id"]
    ]


def test_a_backup_store_failure_carries_the_runbook_link_in_the_ui_and_in_slack(
    db_url: str,
    tmp_path: Path,
    master_key: bytes,
    instance: dg.DagsterInstance,
    slack_receiver: SlackReceiver,
) -> None:
    resources = backup_resources(db_url, tmp_path / "store", master_key)
    resources["backup_store"] = BackupStoreResource(store_url=closed_port_url())
    failed = defs.resolve_job_def("nightly_backup_job").execute_in_process(
        instance=instance, resources=resources, raise_on_error=False
    )
    (step_failure,) = failed.get_step_failure_events()
    metadata = step_failure.step_failure_data.user_failure_data.metadata
    assert metadata["runbook"].value == "docs/runbook.md#backup-failed"
    tick(instance, None, slack_receiver.url)
    (alert,) = slack_receiver.requests
    assert "docs/runbook.md#backup-failed" in json.dumps(alert)
