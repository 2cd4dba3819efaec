"""The dead man's switch: red with no backup, green after one, red again when it grows old."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg

from hardening_pipeline.backup.crypto import Keyring
from hardening_pipeline.backup.freshness import check_backup_freshness
from hardening_pipeline.backup.nightly import run_backup
from hardening_pipeline.backup.store import FileStore
from hardening_pipeline.defs.freshness import backup_freshness_schedule, backup_is_fresh
from hardening_pipeline.defs.resources import (
    AppDatabaseResource,
    BackupStoreResource,
    EncryptionKeysResource,
)
from hardening_pipeline.seed import seed_demo_data

ROOT = Path(__file__).resolve().parents[1]
KEY = os.urandom(32)


def test_freshness_follows_the_newest_verified_backup(db_url, tmp_path):
    store, keyring = FileStore(tmp_path / "store"), Keyring(KEY)
    empty = check_backup_freshness(store, keyring)
    assert not empty.passed and "no verified backup" in empty.detail
    seed_demo_data(db_url, tenants=2, messages_per_unit=1)
    made = run_backup(db_url, store, keyring)
    fresh = check_backup_freshness(store, keyring)
    assert fresh.passed and fresh.newest_backup_id == made.backup_id
    later = check_backup_freshness(store, keyring, now=datetime.now(UTC) + timedelta(hours=27))
    assert not later.passed and "limit 26.0 h" in later.detail
    other_key = check_backup_freshness(store, Keyring(os.urandom(32)))
    assert not other_key.passed and "1 failed verification" in other_key.detail


def test_unlistable_store_is_red_not_a_crash(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    result = check_backup_freshness(FileStore(blocker), Keyring(KEY))
    assert not result.passed and "could not list" in result.detail


def test_status_line_from_the_cli(db_url, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HARDENING_", "BACKUP_"))}
    env |= {
        "HARDENING_DATABASE_URL": db_url,
        "BACKUP_ENCRYPTION_KEY": base64.b64encode(KEY).decode(),
        "BACKUP_STORE_URL": (tmp_path / "store").as_uri(),
        "HARDENING_REPORTS_DIR": str(tmp_path / "reports"),
    }
    cmd = [sys.executable, "-m", "hardening_pipeline.cli", "status", "--no-alert"]
    red = subprocess.run(
        [*cmd, "--backup-freshness"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert red.returncode == 1 and "backup_freshness" in red.stdout + red.stderr
    seed_demo_data(db_url, tenants=2, messages_per_unit=1)
    backup = subprocess.run(
        [sys.executable, "-m", "hardening_pipeline.cli", "backup"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert backup.returncode == 0, backup.stderr
    green = subprocess.run(
        [*cmd, "--backup-freshness"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert green.returncode == 0, green.stdout + green.stderr
    plain = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert "backup_freshness" not in plain.stdout


def test_dagster_check_is_blocking_error_and_scheduled_hourly(db_url, tmp_path):
    resources = {
        "app_db": AppDatabaseResource(database_url=db_url),
        "backup_store": BackupStoreResource(store_url=(tmp_path / "store").as_uri()),
        "encryption_keys": EncryptionKeysResource(key=base64.b64encode(KEY).decode()),
    }
    spec = next(iter(backup_is_fresh.check_specs))
    assert spec.blocking
    result = backup_is_fresh(**resources)
    assert not result.passed and result.severity == dg.AssetCheckSeverity.ERROR
    assert "age_hours" not in result.metadata  # no backup has no age (not a plotted -1)
    seed_demo_data(db_url, tenants=1, messages_per_unit=1)
    run_backup(db_url, FileStore(tmp_path / "store"), Keyring(KEY))
    fresh = backup_is_fresh(**resources)
    assert fresh.passed and 0 <= fresh.metadata["age_hours"].value < 1
    assert backup_freshness_schedule.cron_schedule == "30 * * * *"
    assert backup_freshness_schedule.default_status == dg.DefaultScheduleStatus.RUNNING
