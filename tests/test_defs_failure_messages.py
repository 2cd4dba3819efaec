"""What an operator reads when a run fails: one sentence first, naming the problem and the fix.

Dagster shows a failed step's error message as recorded in the event log; these tests read
that record (the same field the UI and the failure alert read) from real failed runs.
"""

import base64
import json
import os

import dagster as dg
import pytest

from hardening_pipeline.canaries.runner import CANARIES
from hardening_pipeline.defs.assets import observe_application_tables
from hardening_pipeline.defs.backup import nightly_backup
from hardening_pipeline.defs.checks import canary_checks, canary_job
from hardening_pipeline.defs.failures import first_line
from hardening_pipeline.defs.resources import (
    AppDatabaseResource,
    BackupStoreResource,
    EncryptionKeysResource,
    SlackAlertsResource,
)
from hardening_pipeline.defs.seals import audit_seal
from hardening_pipeline.defs.sensors import slack_on_run_failure
from tests.support.db import insert_tenant
from tests.support.slack_receiver import SlackReceiver


def step_failure_lines(instance: dg.DagsterInstance, run_id: str) -> list[str]:
    return [
        first_line(entry.dagster_event.event_specific_data.error)
        for entry in instance.all_logs(run_id, of_type=dg.DagsterEventType.STEP_FAILURE)
    ]


def assert_reads_as_a_sentence(line: str) -> None:
    assert "dagster." not in line and "Error:" not in line and "Failure:" not in line, line
    assert "DagsterAssetCheckFailedError" not in line


def test_a_broken_canary_fails_the_run_with_its_own_sentence(
    db_url: str, admin, slack_receiver: SlackReceiver
) -> None:
    t = insert_tenant(admin, "broken-canary")
    with admin.transaction():
        admin.execute("SET LOCAL session_replication_role = replica")
        admin.execute("SELECT set_config('app.actor', 'test:replica', true)")
        admin.execute("DELETE FROM units WHERE id = %s", (t.unit,))
    slack = SlackAlertsResource(webhook_url=slack_receiver.url, max_retries=0, timeout=5)
    defs = dg.Definitions(
        assets=[observe_application_tables],
        asset_checks=[canary_checks],
        jobs=[canary_job],
        resources={"app_db": AppDatabaseResource(database_url=db_url), "slack": slack},
    )
    with dg.instance_for_test() as instance:
        result = defs.resolve_job_def("canary_job").execute_in_process(
            raise_on_error=False, instance=instance
        )
        assert not result.success
        [line] = step_failure_lines(instance, result.run_id)
        assert_reads_as_a_sentence(line)
        assert line.startswith("canary orphaned_messages failed: 1 found in 1 tenant(s)")
        assert "runbook.md#canary-orphaned-messages" in line
        # Every result was still recorded before the run failed.
        evaluations = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
        assert evaluations["orphaned_messages"] is False and set(evaluations) == set(CANARIES)

        # The canary's own alert is the one Slack message: the failure sensor does not repeat it.
        (alert,) = map(json.dumps, slack_receiver.requests)
        assert "orphaned_messages" in alert and "DagsterAssetCheckFailedError" not in alert
        slack_on_run_failure(dg.build_sensor_context(instance=instance, resources={"slack": slack}))
        assert len(slack_receiver.requests) == 1


def materialize_backup_without_key(
    instance: dg.DagsterInstance, db_url: str
) -> dg.ExecuteInProcessResult:
    """The nightly backup launched with no encryption key (the caller unsets it)."""
    return dg.materialize(
        [nightly_backup],
        instance=instance,
        resources={
            "app_db": AppDatabaseResource(database_url=db_url),
            "backup_store": BackupStoreResource(store_url="file:///nonexistent-for-test"),
            "encryption_keys": EncryptionKeysResource(),
        },
        raise_on_error=False,
    )


def test_a_backup_that_cannot_start_says_why_in_one_sentence(db_url: str, monkeypatch) -> None:
    monkeypatch.delenv("BACKUP_ENCRYPTION_KEY", raising=False)
    with dg.instance_for_test() as instance:
        result = materialize_backup_without_key(instance, db_url)
        [line] = step_failure_lines(instance, result.run_id)
    assert_reads_as_a_sentence(line)
    assert line.startswith("nightly backup failed: BACKUP_ENCRYPTION_KEY is not set; run")
    # No chained causes under the sentence.
    error = next(e.event_specific_data.error for e in result.all_events if e.is_step_failure)
    assert error.cause is None and error.context is None


def test_under_the_sentence_dagster_still_records_its_own_frames_down_to_the_raising_line(
    db_url: str, monkeypatch
) -> None:
    """Why the UI still prints Dagster's frames under the sentence (README, Dagster section).

    dagster 1.13.27 records an intentional ``Failure`` with the whole stack from
    ``dagster/_core/execution/plan/execute_plan.py:295-300`` (``except Failure``, handed to
    ``step_failure_event_from_exc_info``) down to the raise: ``objects.py:149`` serialises
    ``sys.exc_info()`` and ``dagster/_utils/error.py:172`` keeps every frame
    (``traceback.TracebackException``); no ``error_source`` is passed, so it defaults to
    ``FRAMEWORK_ERROR`` (``objects.py:108``). The UI hides the outer stack only for
    ``USER_CODE_ERROR`` with a cause, and that path puts Dagster's
    ``DagsterExecutionStepExecutionError`` line above ours. Dagster's own frame filter
    (``dagster_shared/error.py: remove_system_frames_from_error``) is applied to code-location
    load errors only. When this test fails, Dagster trims the stack itself: drop the README note.
    """
    monkeypatch.delenv("BACKUP_ENCRYPTION_KEY", raising=False)
    with dg.instance_for_test() as instance:
        result = materialize_backup_without_key(instance, db_url)
    failed = next(e for e in result.all_events if e.is_step_failure).event_specific_data
    frames = failed.error.stack
    assert any("dagster/_core/execution" in frame for frame in frames)
    # The stack ends where our code raised, and nothing below it (the cause) is recorded.
    assert "hardening_pipeline/defs/backup.py" in frames[-1]
    assert failed.error.cause is None and failed.error.context is None
    assert failed.error_source.value == "FRAMEWORK_ERROR"


def test_a_store_failure_reads_as_one_sentence_without_chained_tracebacks(
    db_url: str, tmp_path
) -> None:
    # The store's folder cannot be created (a file is in the way): an OSError deep in the store,
    # which used to arrive wrapped in several nested tracebacks.
    blocker = tmp_path / "store"
    blocker.write_text("not a folder")
    with dg.instance_for_test() as instance:
        result = dg.materialize(
            [nightly_backup],
            instance=instance,
            resources={
                "app_db": AppDatabaseResource(database_url=db_url),
                "backup_store": BackupStoreResource(store_url=(blocker / "backups").as_uri()),
                "encryption_keys": EncryptionKeysResource(
                    key=base64.b64encode(os.urandom(32)).decode()
                ),
            },
            raise_on_error=False,
        )
        [line] = step_failure_lines(instance, result.run_id)
    assert_reads_as_a_sentence(line)
    assert line.startswith("nightly backup failed: "), line
    error = next(e for e in result.all_events if e.is_step_failure).event_specific_data.error
    assert error.cause is None and error.context is None
    assert error.message.strip() == line


@pytest.mark.parametrize(
    ("key", "store", "expected"),
    [
        ("", "file", "BACKUP_ENCRYPTION_KEY is not set"),
        ("abc", "file", "`key` config is not valid base64"),
        (None, "blocked", "audit seal failed: "),
    ],
    ids=["no-key", "malformed-key", "store-unusable"],
)
def test_an_audit_seal_that_cannot_start_says_why_in_one_sentence(
    db_url: str, admin, tmp_path, key: str | None, store: str, expected: str
) -> None:
    insert_tenant(admin, "to-seal")  # rows to seal, so the store is written
    folder = tmp_path / "store"
    if store == "blocked":
        folder.write_text("not a folder")  # the store cannot create its folder
    with dg.instance_for_test() as instance:
        result = dg.materialize(
            [audit_seal],
            instance=instance,
            resources={
                "app_db": AppDatabaseResource(database_url=db_url),
                "backup_store": BackupStoreResource(store_url=(folder / "seals").as_uri()),
                "encryption_keys": EncryptionKeysResource(
                    key=base64.b64encode(os.urandom(32)).decode() if key is None else key
                ),
            },
            raise_on_error=False,
        )
        [line] = step_failure_lines(instance, result.run_id)
    assert_reads_as_a_sentence(line)
    assert line.startswith("audit seal failed: ") and expected in line, line
    error = next(e for e in result.all_events if e.is_step_failure).event_specific_data.error
    assert error.cause is None and error.context is None
