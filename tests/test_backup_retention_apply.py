"""Retention carried out on real stores: what is deleted, in which order, and when it refuses.

A timeline of real backups would take minutes to build, so these backups are fake but valid:
a signed manifest with a chosen ``created_at`` and one small object, written where a real run
would write them. Retention trusts nothing but verified manifests, so for it they are real.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from hardening_pipeline.backup.catalog import list_backups
from hardening_pipeline.backup.crypto import Keyring, generate_data_key
from hardening_pipeline.backup.manifest import (
    MANIFEST_NAME,
    MAX_CLOCK_SKEW,
    DatabaseIdentity,
    Manifest,
    ObjectEntry,
    SchemaVersion,
    backup_folder,
    new_backup_id,
)
from hardening_pipeline.backup.manifest_signing import sign_manifest
from hardening_pipeline.backup.prune import apply_retention
from hardening_pipeline.backup.retention import RetentionPolicy
from hardening_pipeline.backup.store import BackupStore, FileStore, StoreError
from hardening_pipeline.errors import CheckFailed
from tests.support.s3_server import B2LikeS3Server
from tests.support.slack_receiver import SlackReceiver
from tests.support.stores import RecordingStore

# A Thursday. Two years of dailies ending here keep 47 backups:
#   daily   30: 2026-10-28 .. 2026-11-26
#   weekly  12: ISO weeks W48..W37; W48..W44 end inside the daily range, so 7 more
#               (the Sundays 2026-10-25, -18, -11, -04, 09-27, -20, -13)
#   monthly 12: Nov and Oct are already kept; Sep 2026 .. Dec 2025 are 10 more
#               (none of those month-ends is also a week's newest backup)
END = datetime(2026, 11, 26, 2, 0, tzinfo=UTC)
NOW = END + timedelta(hours=1)
OBJECT = b"stand-in for an encrypted object"


def write_backup(store: BackupStore, keyring: Keyring, created_at: datetime) -> str:
    """Store one small object and a signed manifest for it, as a finished backup run would."""
    backup_id = new_backup_id(created_at)
    wrapped = keyring.wrap_data_key(generate_data_key(), backup_id)
    manifest = Manifest(
        backup_id=backup_id,
        created_at=created_at,
        finished_at=created_at + timedelta(minutes=3),
        database=DatabaseIdentity("7312345678901234567", "app", "16.4"),
        schema=SchemaVersion("001_core_schema.sql", "ab" * 32, ("001_core_schema.sql",)),
        key_id=wrapped.key_id,
        wrapped_data_key=wrapped.ciphertext,
        objects=(
            ObjectEntry(
                name="shared.hpb",
                tenant_id=None,
                tables=(),
                plaintext_bytes=0,
                plaintext_sha256="00" * 32,
                compressed_bytes=0,
                ciphertext_bytes=len(OBJECT),
                sha256="11" * 32,
            ),
        ),
    )
    folder = backup_folder("", backup_id, created_at)
    store.put(folder + "shared.hpb", [OBJECT])
    store.put(folder + MANIFEST_NAME, [sign_manifest(manifest, keyring)])
    return backup_id


def dailies(store: BackupStore, keyring: Keyring, days: int, end: datetime = END) -> list[str]:
    """One backup a night for ``days`` nights ending at ``end``; ids oldest first."""
    return [write_backup(store, keyring, end - timedelta(days=d)) for d in reversed(range(days))]


def stored_ids(store: BackupStore) -> set[str]:
    return {o.key.split("/")[3] for o in store.list()}


def assert_manifest_deleted_before_its_folder(store: RecordingStore, deleted: list[str]) -> None:
    calls = [c for c in store.calls if c[0] in ("delete", "delete_prefix")]
    for backup_id in deleted:
        (manifest_at,) = [
            i for i, (op, key) in enumerate(calls) if op == "delete" and backup_id in key
        ]
        (folder_at,) = [
            i for i, (op, key) in enumerate(calls) if op == "delete_prefix" and backup_id in key
        ]
        assert calls[manifest_at][1].endswith("/" + MANIFEST_NAME)
        assert manifest_at < folder_at, backup_id


def test_two_years_of_dailies_keep_47_and_a_second_run_changes_nothing(
    keyring: Keyring, tmp_path: Path
) -> None:
    store = RecordingStore(FileStore(tmp_path))
    ids = dailies(store.inner, keyring, 730)
    outcome = apply_retention(store, keyring, now=NOW)

    assert len(outcome.plan.keep) == 47
    assert len(outcome.deleted) == 730 - 47
    assert ids[-1] in outcome.plan.kept_ids  # the newest
    assert "newest" in outcome.plan.keep[0].reasons
    assert stored_ids(store.inner) == set(outcome.plan.kept_ids)
    assert_manifest_deleted_before_its_folder(store, outcome.deleted)
    kept_days = {k.created_at.date() for k in outcome.plan.keep}
    assert {END.date() - timedelta(days=d) for d in range(30)} <= kept_days
    # Empty date folders go too, so the tree does not fill with husks.
    assert len(list(tmp_path.glob("*/*/*"))) == 47

    store.calls.clear()
    again = apply_retention(store, keyring, now=NOW + timedelta(minutes=5))
    assert again.deleted == [] and again.debris_removed == []
    assert again.plan.kept_ids == outcome.plan.kept_ids
    assert store.mutations() == []


def test_the_newest_backup_always_survives(keyring: Keyring, tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    older = write_backup(store, keyring, END - timedelta(hours=1))
    newest = write_backup(store, keyring, END)
    outcome = apply_retention(
        store, keyring, RetentionPolicy(daily=1, weekly=0, monthly=0), now=NOW
    )
    assert outcome.plan.kept_ids == [newest]
    assert outcome.deleted == [older]
    assert stored_ids(store) == {newest}


def test_dry_run_deletes_nothing(keyring: Keyring, tmp_path: Path) -> None:
    store = RecordingStore(FileStore(tmp_path))
    dailies(store.inner, keyring, 60)
    before = store.inner.list()
    outcome = apply_retention(store, keyring, dry_run=True, now=NOW)
    assert outcome.dry_run and len(outcome.plan.delete) > 0
    assert outcome.deleted == []
    assert store.mutations() == []
    assert store.inner.list() == before


def test_a_store_that_cannot_be_listed_deletes_nothing(keyring: Keyring, tmp_path: Path) -> None:
    store = RecordingStore(FileStore(tmp_path), fail_list=True)
    dailies(store.inner, keyring, 40)
    store.calls.clear()
    with pytest.raises(StoreError):
        apply_retention(store, keyring, now=NOW)
    assert store.mutations() == []
    assert len(stored_ids(store.inner)) == 40


def tamper(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    at = raw.index(b'"finished_at"') + 20
    raw[at] = ord("9") if raw[at] != ord("9") else ord("8")
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("which", ["oldest", "newest"])
def test_a_tampered_manifest_anywhere_stops_all_deletion(
    keyring: Keyring, tmp_path: Path, which: str
) -> None:
    store = RecordingStore(FileStore(tmp_path))
    ids = dailies(store.inner, keyring, 40)
    victim = ids[0] if which == "oldest" else ids[-1]
    (manifest_path,) = tmp_path.glob(f"*/*/*/{victim}/{MANIFEST_NAME}")
    tamper(manifest_path)
    store.calls.clear()
    with pytest.raises(CheckFailed, match="deleted nothing") as failure:
        apply_retention(store, keyring, now=NOW)
    assert victim in str(failure.value)
    assert store.mutations() == []
    assert len(stored_ids(store.inner)) == 40


def test_a_backup_dated_in_the_future_stops_all_deletion(keyring: Keyring, tmp_path: Path) -> None:
    store = RecordingStore(FileStore(tmp_path))
    dailies(store.inner, keyring, 40)
    future = write_backup(store.inner, keyring, NOW + timedelta(days=3))
    store.calls.clear()
    with pytest.raises(CheckFailed, match="in the future"):
        apply_retention(store, keyring, now=NOW)
    assert store.mutations() == []
    assert future in stored_ids(store.inner) and len(stored_ids(store.inner)) == 41


def test_a_backup_dated_in_the_future_names_itself_how_far_ahead_and_the_fix(
    keyring: Keyring, tmp_path: Path
) -> None:
    """One backup from a machine with a fast clock: refused, named, measured, with the way out."""
    store = RecordingStore(FileStore(tmp_path))
    ids = dailies(store.inner, keyring, 40)
    future_at = NOW + timedelta(days=2, hours=5)
    future = write_backup(store.inner, keyring, future_at)
    folder = backup_folder("", future, future_at)
    store.calls.clear()
    with pytest.raises(CheckFailed) as failure:
        apply_retention(store, keyring, now=NOW)
    message = str(failure.value)
    assert "\n" not in message and message.startswith("retention deleted nothing"), message
    assert f"{future}: its manifest is dated 2026-11-28T08:00:00Z, 2 days 5 h in the future" in (
        message
    )
    assert "check the clock of the machine that wrote it" in message
    assert f"move or delete this one backup's folder <prefix>/{folder} by hand" in message
    assert "docs/runbook.md#backup-dated-in-the-future" in message
    assert "or wait until 2026-11-28T07:55:00Z, when it verifies again" in message
    assert store.mutations() == []

    # Waiting works: once the clock reaches it (less the allowed skew), retention runs again.
    waited = apply_retention(store, keyring, dry_run=True, now=future_at - MAX_CLOCK_SKEW)
    assert waited.plan.kept_ids[0] == future

    # So does the fix by hand: that one folder moved out of the date layout (kept for a look).
    (tmp_path / "quarantine").mkdir()
    (tmp_path / folder).rename(tmp_path / "quarantine" / future)
    outcome = apply_retention(store, keyring, now=NOW)
    assert outcome.plan.kept_ids[0] == ids[-1] and len(outcome.deleted) > 0
    assert (tmp_path / "quarantine" / future / MANIFEST_NAME).exists()


def test_a_few_minutes_ahead_reads_in_minutes(keyring: Keyring, tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    dailies(store, keyring, 3)
    future = write_backup(store, keyring, NOW + timedelta(minutes=17, seconds=40))
    with pytest.raises(CheckFailed) as failure:
        apply_retention(store, keyring, now=NOW)
    assert f"{future}: its manifest is dated 2026-11-26T03:17:40Z, 17 min in the future" in str(
        failure.value
    )


def test_the_retention_alert_in_slack_carries_the_future_backup_sentence(
    db_url: str, tmp_path: Path, slack_receiver: SlackReceiver
) -> None:
    """Through the path every failed retention run takes: the run-failure sensor's Slack alert."""
    import dagster as dg

    from hardening_pipeline.defs.backup import backup_retention
    from hardening_pipeline.defs.resources import SlackAlertsResource
    from hardening_pipeline.defs.sensors import slack_on_run_failure
    from tests.test_defs_backup import backup_resources

    key = os.urandom(32)
    keyring = Keyring(key)
    store_dir = tmp_path / "store"
    store = FileStore(store_dir)
    now = datetime.now(UTC)
    dailies(store, keyring, 3, end=now - timedelta(hours=1))
    future = write_backup(store, keyring, now + timedelta(days=3))
    slack = SlackAlertsResource(webhook_url=slack_receiver.url, max_retries=0, timeout=5)
    with dg.instance_for_test() as instance:
        result = dg.materialize(
            [backup_retention],
            instance=instance,
            resources={**backup_resources(db_url, store_dir, key), "slack": slack},
            raise_on_error=False,
        )
        assert not result.success
        slack_on_run_failure(dg.build_sensor_context(instance=instance, resources={"slack": slack}))
    alert = json.dumps(slack_receiver.requests)
    assert f"{future}: its manifest is dated" in alert
    assert "2 days 23 h in the future" in alert or "3 days in the future" in alert
    assert "check the clock of the machine that wrote it" in alert
    assert "docs/runbook.md#backup-dated-in-the-future" in alert
    assert len(stored_ids(store)) == 4


def test_incomplete_folders_are_removed_only_after_the_grace_period(
    keyring: Keyring, tmp_path: Path
) -> None:
    store = RecordingStore(FileStore(tmp_path))
    newest = write_backup(store.inner, keyring, END)
    stale_id = new_backup_id(END - timedelta(days=2))
    fresh_id = new_backup_id(END - timedelta(minutes=30))
    stale = backup_folder("", stale_id, END - timedelta(days=2)) + "tenant-a.hpb"
    fresh = backup_folder("", fresh_id, END - timedelta(minutes=30)) + "tenant-a.hpb"
    store.inner.put(stale, [b"half a backup"])
    store.inner.put(fresh, [b"a backup still running"])
    # FileStore dates objects by mtime; age them as a real clock would have.
    old = (NOW - timedelta(days=2)).timestamp()
    os.utime(tmp_path / stale, (old, old))
    recent = (NOW - timedelta(minutes=30)).timestamp()
    os.utime(tmp_path / fresh, (recent, recent))
    store.calls.clear()

    outcome = apply_retention(store, keyring, now=NOW)
    assert outcome.debris_removed == [stale_id]
    assert stored_ids(store.inner) == {newest, fresh_id}
    assert list_backups(store.inner, keyring, now=NOW).incomplete[0].backup_id == fresh_id


# --- the same against the B2-strict S3 server ---------------------------------------------------


def test_retention_on_s3_deletes_every_version_manifest_first(
    keyring: Keyring, s3_server: B2LikeS3Server, s3_bucket: str
) -> None:
    store = RecordingStore(s3_server.store(s3_bucket))
    # 45 nights: daily keeps the last 30, weekly and monthly reach a little further back.
    ids = dailies(store.inner, keyring, 45, end=datetime.now(UTC) - timedelta(hours=2))
    incomplete_id = new_backup_id(datetime.now(UTC))
    incomplete = backup_folder("", incomplete_id, datetime.now(UTC)) + "tenant-a.hpb"
    store.inner.put(incomplete, [b"still running"])
    store.calls.clear()

    outcome = apply_retention(store, keyring)
    assert ids[-1] in outcome.plan.kept_ids
    assert 30 <= len(outcome.plan.keep) < 45 and outcome.deleted
    assert_manifest_deleted_before_its_folder(store, outcome.deleted)
    assert stored_ids(store.inner) == set(outcome.plan.kept_ids) | {incomplete_id}
    assert outcome.debris_removed == []  # younger than a day: may still be running
    # B2 deletes without a VersionId only hide: nothing of a deleted backup may remain.
    versions = s3_server.client().list_object_versions(Bucket=s3_bucket, Prefix="backups/")
    left = {
        v["Key"].split("/")[4]
        for v in versions.get("Versions", []) + versions.get("DeleteMarkers", [])
    }
    assert left == set(outcome.plan.kept_ids) | {incomplete_id}
    assert s3_server.rejected == []

    # A day later the abandoned folder is debris and goes; the verified backups stay.
    later = apply_retention(store, keyring, now=datetime.now(UTC) + timedelta(days=1, hours=1))
    assert later.debris_removed == [incomplete_id]
    assert later.deleted == []


@pytest.mark.parametrize("status", [403, 503])
def test_s3_listing_failure_deletes_nothing(
    keyring: Keyring, s3_server: B2LikeS3Server, s3_bucket: str, s3_faults, status: int
) -> None:
    store = RecordingStore(s3_server.store(s3_bucket))
    dailies(store.inner, keyring, 35, end=datetime.now(UTC) - timedelta(hours=2))
    store.calls.clear()
    s3_faults.fail_next("ListObjectsV2", times=10, status=status)
    with pytest.raises(StoreError):
        apply_retention(store, keyring)
    assert store.mutations() == []
    assert not any(r.method == "DELETE" for r in s3_server.requests)
    s3_faults.clear()
    assert len(stored_ids(store.inner)) == 35


def test_s3_tampered_manifest_stops_all_deletion(
    keyring: Keyring, s3_server: B2LikeS3Server, s3_bucket: str
) -> None:
    store = s3_server.store(s3_bucket)
    ids = dailies(store, keyring, 35, end=datetime.now(UTC) - timedelta(hours=2))
    key = next(o.key for o in store.list() if ids[3] in o.key and o.key.endswith(MANIFEST_NAME))
    raw = b"".join(store.get(key)).replace(b'"app"', b'"ap2"')
    store.put(key, [raw])
    with pytest.raises(CheckFailed, match=ids[3]):
        apply_retention(store, keyring)
    assert len(stored_ids(store)) == 35
    assert not any(r.method == "DELETE" for r in s3_server.requests)
