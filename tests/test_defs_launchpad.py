"""Every job launched from the Dagster UI's Launchpad exactly as it is pre-filled.

The Launchpad fills the editor with the job's default run config, in which Dagster masks every
secret field that has a default as ``'********'``. These tests build that same YAML with the
function the webserver uses (``rootDefaultYaml`` of ``runConfigSchemaOrError``) and launch each
job with it, so a field that breaks "launch as shown" fails here.
"""

import base64
import os
from pathlib import Path

import dagster as dg
import pytest
import yaml
from dagster._core.snap.snap_to_yaml import default_values_yaml_from_type_snap

from hardening_pipeline.backup.crypto import Keyring
from hardening_pipeline.definitions import defs
from hardening_pipeline.defs.resources import (
    LAUNCHPAD_MASK,
    EncryptionKeysResource,
    SlackAlertsResource,
)
from hardening_pipeline.errors import ConfigError
from hardening_pipeline.seed import seed_demo_data

KEY_B64 = base64.b64encode(os.urandom(32)).decode()


def launchpad_yaml(job_name: str) -> str:
    """The run config the Launchpad shows for a job, computed as the webserver computes it."""
    snapshot = defs.resolve_job_def(job_name).get_job_snapshot()
    schema = snapshot.config_schema_snapshot
    root_key = snapshot.mode_def_snaps[0].root_config_key
    return default_values_yaml_from_type_snap(schema, schema.get_config_snap(root_key))


def user_job_names() -> list[str]:
    return sorted(
        job.name
        for job in defs.get_repository_def().get_all_jobs()
        if not job.name.startswith("__")
    )


def test_the_launchpad_masks_secret_fields_so_the_mask_is_what_gets_launched() -> None:
    # Guards the premise of the tests below: if Dagster stops masking, they test nothing.
    shown = launchpad_yaml("restore_drill_job")
    assert f"key: '{LAUNCHPAD_MASK}'" in shown
    assert f"webhook_url: '{LAUNCHPAD_MASK}'" in shown


@pytest.fixture
def environment(db_url, tmp_path, slack_receiver, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HARDENING_DATABASE_URL", db_url)
    monkeypatch.setenv("BACKUP_ENCRYPTION_KEY", KEY_B64)
    monkeypatch.setenv("BACKUP_STORE_URL", (tmp_path / "store").as_uri())
    monkeypatch.setenv("SLACK_WEBHOOK_URL", slack_receiver.url)
    monkeypatch.setenv("HARDENING_REPORTS_DIR", str(tmp_path / "reports"))
    monkeypatch.setenv("HARDENING_STATE_DIR", str(tmp_path / "state"))
    seed_demo_data(db_url, tenants=2, messages_per_unit=2)
    return tmp_path


def test_every_job_succeeds_when_launched_as_the_launchpad_shows_it(
    environment, slack_receiver
) -> None:
    names = user_job_names()
    # The backup first: the drill, freshness check and seal need one to exist.
    names.remove("nightly_backup_job")
    names.insert(0, "nightly_backup_job")
    instance = dg.DagsterInstance.ephemeral()
    failed = {}
    for name in names:
        job = defs.resolve_job_def(name)
        run_config = yaml.safe_load(launchpad_yaml(name)) or {}
        partition_key = None
        if job.partitions_def is not None:
            partition_key = job.partitions_def.get_last_partition_key()
        result = job.execute_in_process(
            run_config=run_config,
            instance=instance,
            partition_key=partition_key,
            raise_on_error=False,
        )
        if not result.success:
            failed[name] = [event.message for event in result.all_events if event.is_failure]
    assert failed == {}
    # The mask never reached Slack as a URL: the alerts went to SLACK_WEBHOOK_URL.
    assert slack_receiver.requests


def test_the_mask_falls_back_to_the_environment(monkeypatch, slack_receiver) -> None:
    monkeypatch.setenv("SLACK_WEBHOOK_URL", slack_receiver.url)
    assert SlackAlertsResource(webhook_url=LAUNCHPAD_MASK).notifier().webhook_url == (
        slack_receiver.url
    )
    assert SlackAlertsResource().notifier().webhook_url == slack_receiver.url
    monkeypatch.setenv("BACKUP_ENCRYPTION_KEY", KEY_B64)
    monkeypatch.setenv("HARDENING_DATABASE_URL", "postgresql://db.invalid/app")
    ring = EncryptionKeysResource(key=LAUNCHPAD_MASK, previous_keys=LAUNCHPAD_MASK).keyring()
    assert ring.current.key_id == Keyring(base64.b64decode(KEY_B64)).current.key_id


def test_a_bad_key_in_config_blames_the_config_field_not_the_environment(monkeypatch) -> None:
    monkeypatch.setenv("BACKUP_ENCRYPTION_KEY", KEY_B64)
    with pytest.raises(ConfigError) as caught:
        EncryptionKeysResource(key="not base64!").keyring()
    assert "encryption_keys resource's `key` config" in str(caught.value)
    assert "BACKUP_ENCRYPTION_KEY" not in str(caught.value)
    with pytest.raises(ConfigError) as caught:
        EncryptionKeysResource(previous_keys=f"{KEY_B64}, nope").keyring()
    assert "entry 2 of the encryption_keys resource's `previous_keys` config" in str(caught.value)
