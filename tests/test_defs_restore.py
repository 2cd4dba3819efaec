"""The restore drill in Dagster: a green materialization, a red run, Slack both ways, the schedule.

No ``from __future__ import annotations`` here: Dagster resolves annotations.
"""

import base64
import os
from datetime import UTC, datetime

import dagster as dg
import pytest

from hardening_pipeline.backup.crypto import Keyring
from hardening_pipeline.backup.nightly import run_backup
from hardening_pipeline.backup.store import FileStore
from hardening_pipeline.defs.resources import (
    AppDatabaseResource,
    BackupStoreResource,
    EncryptionKeysResource,
    SlackAlertsResource,
)
from hardening_pipeline.defs.restore import (
    restore_drill_job,
    restore_drill_report,
    restore_drill_schedule,
)
from hardening_pipeline.seed import seed_demo_data

KEY = os.urandom(32)


@pytest.fixture
def resources(db_url, tmp_path, slack_receiver, monkeypatch):
    monkeypatch.setenv("HARDENING_REPORTS_DIR", str(tmp_path / "reports"))
    return {
        "app_db": AppDatabaseResource(database_url=db_url),
        "backup_store": BackupStoreResource(store_url=(tmp_path / "store").as_uri()),
        "encryption_keys": EncryptionKeysResource(key=base64.b64encode(KEY).decode()),
        "slack": SlackAlertsResource(webhook_url=slack_receiver.url, max_retries=0, timeout=5),
    }


def test_green_drill_materializes_with_report_and_slack(
    db_url, tmp_path, resources, slack_receiver
):
    seed_demo_data(db_url, tenants=2, messages_per_unit=2)
    backup = run_backup(db_url, FileStore(tmp_path / "store"), Keyring(KEY))
    result = dg.materialize([restore_drill_report], resources=resources)
    assert result.success
    metadata = result.asset_materializations_for_node("restore_drill_report")[0].metadata
    assert metadata["passed"].value is True
    assert metadata["backup_id"].value == backup.backup_id
    assert metadata["drill_tests_failed"].value == 0 and metadata["drill_tests_passed"].value > 0
    assert metadata["slack_delivered"].value is True
    assert isinstance(metadata["rto_seconds"], dg.FloatMetadataValue)
    assert metadata["rto_seconds"].value > 0 and metadata["rpo_hours"].value >= 0
    assert list((tmp_path / "reports").glob("restore-drill-*.md"))
    assert "Restore drill passed" in slack_receiver.requests[-1]["text"]


def test_red_drill_fails_the_run_and_still_reports(tmp_path, resources, slack_receiver):
    result = dg.materialize([restore_drill_report], resources=resources, raise_on_error=False)
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    assert "holds no backup" in failure.step_failure_data.error.message
    assert "Restore drill FAILED" in slack_receiver.requests[-1]["text"]
    assert list((tmp_path / "reports").glob("restore-drill-*.json"))
    # The asset page shows the red drill too: its report, with no invented RPO or RTO.
    [materialization] = result.asset_materializations_for_node("restore_drill_report")
    metadata = materialization.metadata
    assert metadata["passed"].value is False
    assert os.path.isabs(metadata["report_path"].value)
    assert metadata["report_path"].value.endswith(".md")
    assert "rpo_seconds" not in metadata and "rto_seconds" not in metadata
    assert metadata["seconds_until_failure"].value >= 0


def test_a_wrong_key_fails_the_run_in_one_sentence(db_url, tmp_path, resources):
    seed_demo_data(db_url, tenants=1, messages_per_unit=1)
    run_backup(db_url, FileStore(tmp_path / "store"), Keyring(os.urandom(32)))
    result = dg.materialize([restore_drill_report], resources=resources, raise_on_error=False)
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    message = failure.step_failure_data.error.message
    assert message.startswith("the restore drill cannot start:"), message
    assert "BACKUP_ENCRYPTION_KEYS_PREVIOUS" in message


def test_monthly_schedule_targets_the_drill_job():
    assert restore_drill_schedule.cron_schedule == "0 4 1 * *"
    assert restore_drill_schedule.execution_timezone == "UTC"
    assert restore_drill_schedule.default_status == dg.DefaultScheduleStatus.RUNNING
    context = dg.build_schedule_context(
        scheduled_execution_time=datetime(2026, 12, 1, 4, tzinfo=UTC)
    )
    requests = list(restore_drill_schedule.evaluate_tick(context).run_requests or [])
    assert len(requests) == 1 and restore_drill_schedule.job_name == restore_drill_job.name
