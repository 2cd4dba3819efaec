"""Locked backups (S3 Object Lock) on the B2-strict server: what a stolen key cannot do.

moto enforces a lock when a version is deleted, including against the bypass-governance header
on a COMPLIANCE lock. It does not refuse a shortened retention, require Content-MD5 on locked
writes, or lock a multipart object from its CreateMultipartUpload headers; the server's
middleware adds those rules (tests/support/s3_server.py). It has no key permissions at all, so
"the writer key has no deleteFiles" is B2's to enforce: here every request may delete, which
makes these attacks stronger than a real writer key could mount.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from hardening_pipeline.backup.catalog import list_backups
from hardening_pipeline.backup.crypto import Keyring
from hardening_pipeline.backup.locks import (
    check_backup_locks,
    lock_schedule,
    require_lockable,
    write_lock,
)
from hardening_pipeline.backup.manifest import MANIFEST_NAME, backup_folder, rewrap_manifest
from hardening_pipeline.backup.manifest_signing import load_manifest, sign_manifest
from hardening_pipeline.backup.prune import apply_retention
from hardening_pipeline.backup.retention import BackupRef, RetentionPolicy, plan_retention
from hardening_pipeline.backup.store import (
    ObjectLock,
    ObjectLockedError,
    S3Store,
    make_s3_client,
    open_store,
)
from hardening_pipeline.backup.store.s3_store import send_content_md5_on_lock_writes
from hardening_pipeline.backup.tenant_keys import LEDGER_KEY
from hardening_pipeline.errors import CheckFailed, ConfigError
from hardening_pipeline.jobs.retention import RetentionJobResult
from hardening_pipeline.settings import load_settings
from tests.support.cli import run_hardening
from tests.support.s3_server import B2LikeS3Server, ServerClock
from tests.test_backup_retention_apply import OBJECT, write_backup

PART = 5 * 1024 * 1024
# Short horizons keep the timelines small: 3 days, 2 weeks, 2 months.
POLICY = RetentionPolicy(daily=3, weekly=2, monthly=2)


def locked_store(
    server: B2LikeS3Server,
    bucket: str,
    clock: ServerClock,
    *,
    mode: str = "compliance",
    policy: RetentionPolicy = POLICY,
) -> S3Store:
    client = make_s3_client(server.endpoint_url, server.region, max_attempts=1)
    lock = write_lock(mode, policy)
    return S3Store(bucket, "backups", client, part_size=PART, object_lock=lock, clock=clock)


def versions_of(server: B2LikeS3Server, bucket: str, prefix: str = "backups/") -> list[dict]:
    page = server.client().list_object_versions(Bucket=bucket, Prefix=prefix)
    return page.get("Versions", [])


def refused(call, *args, **kwargs) -> str:
    """The S3 error code of a request that must fail."""
    with pytest.raises(ClientError) as caught:
        call(*args, **kwargs)
    return caught.value.response["Error"]["Code"]


def test_every_object_is_written_locked_to_the_daily_horizon_with_content_md5(
    s3_server: B2LikeS3Server, s3_locked_bucket: str, s3_clock: ServerClock
) -> None:
    store = locked_store(s3_server, s3_locked_bucket, s3_clock)
    store.put("one/small", [b"small"])
    store.put("one/big", [b"x" * (PART * 2 + 1)])  # three parts

    expected = s3_clock() + timedelta(days=POLICY.daily)
    for key in ("one/small", "one/big"):
        head = s3_server.client().head_object(Bucket=s3_locked_bucket, Key=f"backups/{key}")
        assert head["ObjectLockMode"] == "COMPLIANCE"
        assert abs(head["ObjectLockRetainUntilDate"] - expected) < timedelta(seconds=2)
    # B2 refuses flexible checksums; S3 wants Content-MD5 on every locked write.
    assert s3_server.rejected == []
    writes = [r for r in s3_server.requests if r.operation in ("PutObject", "UploadPart")]
    assert len(writes) == 4 and all("content-md5" in r.headers for r in writes)
    assert not any(h.startswith("x-amz-checksum") for r in writes for h in r.headers)


def test_the_server_refuses_a_locked_write_without_content_md5(
    s3_server: B2LikeS3Server, s3_locked_bucket: str
) -> None:
    """The strict server is strict: the Content-MD5 the kit sends is not optional."""
    until = datetime.now(UTC) + timedelta(days=1)
    code = refused(
        s3_server.client().put_object,
        Bucket=s3_locked_bucket,
        Key="backups/x",
        Body=b"x",
        ObjectLockMode="COMPLIANCE",
        ObjectLockRetainUntilDate=until,
    )
    assert code == "InvalidRequest"


@pytest.mark.parametrize("mode", ["compliance", "governance"])
def test_a_stolen_writer_key_cannot_erase_or_change_a_backup_inside_its_horizon(
    keyring: Keyring,
    s3_server: B2LikeS3Server,
    s3_locked_bucket: str,
    s3_clock: ServerClock,
    mode: str,
) -> None:
    store = locked_store(s3_server, s3_locked_bucket, s3_clock, mode=mode)
    backup_id = write_backup(store, keyring, s3_clock() - timedelta(minutes=5))
    originals = {v["Key"]: v["VersionId"] for v in versions_of(s3_server, s3_locked_bucket)}
    assert len(originals) == 2
    # The attacker's own client, with the same credentials and Content-MD5 where S3 wants it.
    attacker = make_s3_client(s3_server.endpoint_url, s3_server.region, max_attempts=1)
    send_content_md5_on_lock_writes(attacker)  # so S3's lock rules, not a header, decide
    plain = s3_server.client()

    for key, version_id in originals.items():
        # Deleting the version itself: refused by the lock.
        assert refused(plain.delete_object, Bucket=s3_locked_bucket, Key=key, VersionId=version_id)
        # Shortening the lock, then deleting: refused.
        short = {"Mode": mode.upper(), "RetainUntilDate": s3_clock() + timedelta(minutes=1)}
        assert refused(
            attacker.put_object_retention,
            Bucket=s3_locked_bucket,
            Key=key,
            VersionId=version_id,
            Retention=short,
        )
        # Switching COMPLIANCE to GOVERNANCE (to bypass it later) is a shortening too.
        if mode == "compliance":
            assert refused(
                attacker.put_object_retention,
                Bucket=s3_locked_bucket,
                Key=key,
                VersionId=version_id,
                Retention={"Mode": "GOVERNANCE", "RetainUntilDate": s3_clock()},
            )
            # The bypass header does nothing to a COMPLIANCE lock.
            assert refused(
                plain.delete_object,
                Bucket=s3_locked_bucket,
                Key=key,
                VersionId=version_id,
                BypassGovernanceRetention=True,
            )
        # Overwriting and "deleting" without a version only add a version and a marker.
        plain.put_object(Bucket=s3_locked_bucket, Key=key, Body=b"ransom note")
        plain.delete_object(Bucket=s3_locked_bucket, Key=key)

    # The kit's own delete paths (what retention would do with this key) are refused too.
    with pytest.raises(ObjectLockedError):
        store.delete_prefix(next(iter(originals)).rsplit("/", 1)[0].removeprefix("backups/"))

    for key, version_id in originals.items():
        body = plain.get_object(Bucket=s3_locked_bucket, Key=key, VersionId=version_id)["Body"]
        data = body.read()
        assert data == OBJECT if not key.endswith(MANIFEST_NAME) else backup_id.encode() in data


def test_governance_locks_yield_to_the_bypass_header_which_b2_grants_only_with_bypassgovernance(
    keyring: Keyring, s3_server: B2LikeS3Server, s3_locked_bucket: str, s3_clock: ServerClock
) -> None:
    """Why the README says COMPLIANCE: a GOVERNANCE lock is only as strong as the key.

    moto has no key capabilities, so this shows the header works; on B2 only a key with
    ``bypassGovernance`` may send it, and neither of the kit's keys needs that capability.
    """
    store = locked_store(s3_server, s3_locked_bucket, s3_clock, mode="governance")
    write_backup(store, keyring, s3_clock() - timedelta(minutes=5))
    plain = s3_server.client()
    (first, *_) = versions_of(s3_server, s3_locked_bucket)
    plain.delete_object(
        Bucket=s3_locked_bucket,
        Key=first["Key"],
        VersionId=first["VersionId"],
        BypassGovernanceRetention=True,
    )
    assert first["VersionId"] not in {
        v["VersionId"] for v in versions_of(s3_server, s3_locked_bucket)
    }


def test_locks_only_grow_and_the_kit_never_asks_to_shorten_one(
    s3_server: B2LikeS3Server, s3_locked_bucket: str, s3_clock: ServerClock
) -> None:
    store = locked_store(s3_server, s3_locked_bucket, s3_clock)
    store.put("f/a", [b"a"])
    written = store.locked_until("f/a")
    assert written is not None
    s3_server.middleware.clear()

    assert store.extend_lock("f/", written - timedelta(days=1)) == 0
    assert "PutObjectRetention" not in s3_server.operations()
    assert store.locked_until("f/a") == written

    later = written + timedelta(days=40)
    assert store.extend_lock("f/", later) == 1
    extended = store.locked_until("f/a")
    assert extended is not None and abs(extended - later) < timedelta(seconds=1)
    assert s3_server.rejected == []
    # Asking the server directly to go back is refused.
    code = refused(
        store.client.put_object_retention,
        Bucket=s3_locked_bucket,
        Key="backups/f/a",
        Retention={"Mode": "COMPLIANCE", "RetainUntilDate": written},
    )
    assert code == "AccessDenied"


def two_a_day(store: S3Store, keyring: Keyring, clock: ServerClock, days: int, end: datetime):
    """Backups at 02:00 and 14:00 for ``days`` days, each written at its own time (so locked
    from then), with the nightly lock extension after each, as ``hardening backup`` runs."""
    ids = []
    for day in reversed(range(days)):
        for hour in (-12, 0):
            taken = end - timedelta(days=day, hours=-hour)
            clock.now = taken + timedelta(minutes=3)
            ids.append(write_backup(store, keyring, taken))
            lock_schedule(store, keyring, POLICY, now=clock.now)
    return ids


def test_retention_on_a_locked_store_deletes_exactly_restics_choice_once_locks_expire(
    keyring: Keyring, s3_server: B2LikeS3Server, s3_locked_bucket: str, s3_clock: ServerClock
) -> None:
    # A Thursday; 40 days reach back into October, so November's keeper is final and the
    # server's clock (not the real one) decides every lock.
    end = datetime(2026, 11, 26, 14, 0, tzinfo=UTC)
    store = locked_store(s3_server, s3_locked_bucket, s3_clock)
    two_a_day(store, keyring, s3_clock, 40, end)
    s3_clock.now = end + timedelta(hours=1)
    now = s3_clock.now

    catalog = list_backups(store, keyring, now=now)
    refs = [BackupRef(b.backup_id, b.created_at) for b in catalog.valid]
    outcome = apply_retention(store, keyring, POLICY, now=now)
    plan = outcome.plan
    assert plan == plan_retention(refs, POLICY)  # restic's plan, untouched by locks
    # Still inside its daily lock: the morning backups of the last 3 days, not kept by a rule.
    young = {r.backup_id for r in plan.delete if now - r.created_at < timedelta(days=3)}
    assert young and set(outcome.locked) == young
    assert set(outcome.deleted) == {r.backup_id for r in plan.delete} - young
    stored = {v["Key"].split("/")[4] for v in versions_of(s3_server, s3_locked_bucket)}
    assert stored == set(plan.kept_ids) | young
    rows = RetentionJobResult(outcome, POLICY, store.describe()).rows
    assert {r.backup_id for r in rows if r.kept and r.why.startswith("locked until")} == young

    # Weekly and monthly keepers were locked to their horizon by the nightly runs: an attacker
    # cannot delete the oldest monthly keeper although its daily lock ran out long ago.
    oldest_monthly = next(k for k in reversed(plan.keep) if "monthly" in k.slots)
    assert now - oldest_monthly.created_at > timedelta(days=POLICY.daily)
    folder = f"backups/{oldest_monthly.created_at:%Y/%m/%d}/{oldest_monthly.backup_id}/"
    (version, *_) = versions_of(s3_server, s3_locked_bucket, folder)
    assert refused(
        s3_server.client().delete_object,
        Bucket=s3_locked_bucket,
        Key=version["Key"],
        VersionId=version["VersionId"],
    )
    locks = check_backup_locks(store, keyring, POLICY, now=now)
    assert locks is not None and locks.passed, locks
    assert "immutable until" in locks.detail

    # Four days on, no new backup: the plan is the same, and now every lock it ignored is gone.
    s3_clock.advance(timedelta(days=4))
    later = apply_retention(store, keyring, POLICY, now=s3_clock.now)
    assert later.plan.kept_ids == plan.kept_ids
    assert set(later.deleted) == young and later.locked == {}
    stored = {v["Key"].split("/")[4] for v in versions_of(s3_server, s3_locked_bucket)}
    assert stored == set(plan.kept_ids)
    assert s3_server.rejected == []


def test_a_backup_locked_longer_by_hand_is_kept_not_an_error(
    keyring: Keyring, s3_server: B2LikeS3Server, s3_locked_bucket: str, s3_clock: ServerClock
) -> None:
    end = s3_clock()
    store = locked_store(s3_server, s3_locked_bucket, s3_clock)
    s3_clock.now = end - timedelta(days=10)
    first = write_backup(store, keyring, s3_clock.now)
    # Someone extended one object (not the manifest) of the old backup for a legal hold.
    key = next(
        v["Key"]
        for v in versions_of(s3_server, s3_locked_bucket)
        if first in v["Key"] and not v["Key"].endswith(MANIFEST_NAME)
    )
    store.extend_lock(key.removeprefix("backups/"), end + timedelta(days=30))
    s3_clock.now = end - timedelta(days=5)
    write_backup(store, keyring, s3_clock.now)
    s3_clock.now = end
    newest = write_backup(store, keyring, end)

    outcome = apply_retention(
        store, keyring, RetentionPolicy(daily=1, weekly=0, monthly=0), now=end
    )
    assert outcome.plan.kept_ids == [newest]
    assert first in outcome.locked and first not in outcome.deleted


def test_lock_configured_but_bucket_without_object_lock_is_refused_and_red(
    keyring: Keyring, s3_server: B2LikeS3Server, s3_bucket: str, s3_clock: ServerClock
) -> None:
    store = locked_store(s3_server, s3_bucket, s3_clock)
    with pytest.raises(ConfigError) as caught:
        require_lockable(store)
    message = str(caught.value)
    assert "does not have Object Lock enabled" in message and "BACKUP_OBJECT_LOCK=off" in message
    assert "\n" not in message
    check = check_backup_locks(store, keyring)
    assert check is not None and not check.passed
    assert "does not have Object Lock enabled" in check.detail


def test_a_lock_shorter_than_the_horizon_is_red_naming_the_backup(
    keyring: Keyring, s3_server: B2LikeS3Server, s3_locked_bucket: str, s3_clock: ServerClock
) -> None:
    # Written by a kit configured with a one-day horizon; the policy wants three.
    short = locked_store(
        s3_server, s3_locked_bucket, s3_clock, policy=RetentionPolicy(daily=1, weekly=0, monthly=0)
    )
    backup_id = write_backup(short, keyring, s3_clock() - timedelta(minutes=5))
    check = check_backup_locks(short, keyring, POLICY)
    assert check is not None and not check.passed
    assert backup_id in check.detail and "less than their retention horizon" in check.detail
    # Retention extends it; then the check is green.
    apply_retention(short, keyring, POLICY)
    check = check_backup_locks(short, keyring, POLICY)
    assert check is not None and check.passed, check


def test_an_unlocked_store_has_no_lock_line(keyring: Keyring, tmp_path: Path) -> None:
    from hardening_pipeline.backup.store import FileStore

    assert check_backup_locks(FileStore(tmp_path), keyring) is None


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"BACKUP_OBJECT_LOCK": "forever"}, "BACKUP_OBJECT_LOCK must be compliance, governance"),
        ({"BACKUP_PRUNE_KEY_ID": "k"}, "BACKUP_PRUNE_APPLICATION_KEY is not set"),
    ],
)
def test_bad_lock_settings_are_one_sentence(env: dict[str, str], needle: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(env)
    assert needle in str(caught.value) and "\n" not in str(caught.value)


def test_locking_a_folder_store_is_refused() -> None:
    with pytest.raises(ConfigError, match="a folder, which cannot lock"):
        open_store(
            "file:///tmp/x",
            endpoint_url=None,
            region="us-east-1",
            object_lock=ObjectLock("compliance", timedelta(days=1)),
        )


def test_bad_object_lock_value_exits_2_without_traceback(tmp_path: Path) -> None:
    result = run_hardening(
        "retention", "--dry-run", url="postgresql://unused", env={"BACKUP_OBJECT_LOCK": "yes"}
    )
    assert result.returncode == 2, result
    assert (
        "BACKUP_OBJECT_LOCK must be compliance, governance or off" in result.stderr + result.stdout
    )
    assert "Traceback" not in result.stderr


def test_retention_uses_the_pruning_key_and_backup_the_writer_key(
    s3_server: B2LikeS3Server, s3_locked_bucket: str
) -> None:
    from hardening_pipeline.jobs.wiring import open_configured_store

    settings = load_settings(
        {
            "BACKUP_STORE_URL": f"s3://{s3_locked_bucket}/backups",
            "BACKUP_S3_ENDPOINT_URL": s3_server.endpoint_url,
            "BACKUP_OBJECT_LOCK": "compliance",
            "BACKUP_PRUNE_KEY_ID": "pruner-key-id",
            "BACKUP_PRUNE_APPLICATION_KEY": "pruner-secret",
        }
    )
    writer = open_configured_store(settings)
    pruner = open_configured_store(settings, pruning=True)
    assert writer.client._request_signer._credentials.access_key == "testing-key-id"
    assert pruner.client._request_signer._credentials.access_key == "pruner-key-id"
    assert writer.object_lock == pruner.object_lock == ObjectLock("compliance", timedelta(30))
    pruner.put("probe", [b"x"])
    auth = s3_server.requests[-1].headers["authorization"]
    assert "Credential=pruner-key-id/" in auth


def test_hardening_backup_and_status_on_locked_and_unlocked_buckets(
    db_url: str,
    s3_server: B2LikeS3Server,
    s3_locked_bucket: str,
    s3_bucket: str,
    tmp_path: Path,
) -> None:
    """The commands as a user runs them, on a real database: a locked bucket gets locked
    backups and a green ``backup_locks`` line; a bucket without Object Lock is exit 2."""
    from hardening_pipeline.seed import seed_demo_data
    from tests.support.cli import keyed_store_env

    seed_demo_data(db_url, tenants=2, messages_per_unit=1)
    env = keyed_store_env(tmp_path) | {
        "BACKUP_STORE_URL": f"s3://{s3_locked_bucket}/backups",
        "BACKUP_S3_ENDPOINT_URL": s3_server.endpoint_url,
        "BACKUP_OBJECT_LOCK": "compliance",
        "HARDENING_REPORTS_DIR": str(tmp_path / "reports"),
    }
    backup = run_hardening("backup", url=db_url, env=env)
    assert backup.returncode == 0, backup.stdout + backup.stderr
    stored = versions_of(s3_server, s3_locked_bucket)
    assert stored and any(v["Key"].endswith(MANIFEST_NAME) for v in stored)
    for version in stored:
        head = s3_server.client().head_object(Bucket=s3_locked_bucket, Key=version["Key"])
        if version["Key"] == "backups/" + LEDGER_KEY:
            # The tenant key ledger is not a backup: it must stay erasable (erase-tenant).
            assert "ObjectLockMode" not in head
            continue
        assert head["ObjectLockMode"] == "COMPLIANCE"
        assert head["ObjectLockRetainUntilDate"] > datetime.now(UTC) + timedelta(days=29)
    assert s3_server.rejected == []

    status = run_hardening("status", "--no-alert", "--backup-freshness", url=db_url, env=env)
    output = " ".join((status.stdout + status.stderr).split())
    assert "backup_locks" in output and "immutable until" in output, output

    unlocked = env | {"BACKUP_STORE_URL": f"s3://{s3_bucket}/backups"}
    refused_run = run_hardening("backup", url=db_url, env=unlocked)
    assert refused_run.returncode == 2, refused_run.stdout + refused_run.stderr
    said = " ".join((refused_run.stdout + refused_run.stderr).split())
    assert "does not have Object Lock enabled" in said and "Traceback" not in said
    assert versions_of(s3_server, s3_bucket) == []  # refused before anything was written
    red = run_hardening("status", "--no-alert", "--backup-freshness", url=db_url, env=unlocked)
    assert red.returncode == 1
    assert "does not have Object Lock enabled" in " ".join(red.stdout.split())


def test_horizons_are_when_the_schedule_could_first_let_a_keeper_go() -> None:
    from hardening_pipeline.backup.locks import required_lock
    from hardening_pipeline.backup.retention import KeptBackup

    policy = RetentionPolicy()  # 30 / 12 / 12
    sunday = datetime(2026, 11, 22, 2, 0, tzinfo=UTC)  # ISO week 47 starts Monday 11-16
    weekly = KeptBackup("w", sunday, ["weekly 2026-W47"], ["weekly"])
    assert required_lock(weekly, policy, final=True) == datetime(2027, 2, 8, tzinfo=UTC)
    month_end = datetime(2026, 11, 30, 2, 0, tzinfo=UTC)
    monthly = KeptBackup("m", month_end, ["daily", "weekly", "monthly"], ["daily", "monthly"])
    assert required_lock(monthly, policy, final=True) == datetime(2027, 11, 1, tzinfo=UTC)
    # The newest backup's week and month are not over: only its daily horizon counts.
    assert required_lock(monthly, policy, final=False) == datetime(2026, 12, 30, tzinfo=UTC)


def test_the_oldest_backup_rule_gives_no_longer_lock() -> None:
    day = datetime(2026, 11, 2, 2, 0, tzinfo=UTC)
    refs = [BackupRef("a", day), BackupRef("b", day + timedelta(hours=1))]
    plan = plan_retention(refs, POLICY)
    oldest = next(k for k in plan.keep if k.backup_id == "a")
    assert "oldest" in oldest.reasons and oldest.slots == []


def manifest_key(server: B2LikeS3Server, bucket: str, backup_id: str) -> str:
    return next(
        v["Key"]
        for v in versions_of(server, bucket)
        if backup_id in v["Key"] and v["Key"].endswith(MANIFEST_NAME)
    )


def tamper_with_manifest(
    server: B2LikeS3Server, bucket: str, backup_id: str, how: str, keyring: Keyring
) -> None:
    """What a stolen key can do to a locked manifest: add a version or a delete marker. With
    the master key too, the version on top even verifies ("signed again")."""
    client = server.client()
    key = manifest_key(server, bucket, backup_id)
    if how == "garbage":
        client.put_object(Bucket=bucket, Key=key, Body=b"ransom note")
    elif how == "signed again":
        original = load_manifest(client.get_object(Bucket=bucket, Key=key)["Body"].read(), keyring)
        again = sign_manifest(rewrap_manifest(original, keyring), keyring)
        client.put_object(Bucket=bucket, Key=key, Body=again)
    else:
        client.delete_object(Bucket=bucket, Key=key)


@pytest.mark.parametrize("how", ["garbage", "signed again", "delete marker"])
def test_a_backup_whose_manifest_was_written_over_is_red_and_kept(
    keyring: Keyring,
    s3_server: B2LikeS3Server,
    s3_locked_bucket: str,
    s3_clock: ServerClock,
    how: str,
) -> None:
    """Checked, not skipped: nobody knows the locks of a backup whose manifest cannot be
    trusted, and retention must never let it go on that doubt."""
    end = s3_clock()
    store = locked_store(s3_server, s3_locked_bucket, s3_clock)
    s3_clock.now = end - timedelta(days=10)
    victim = write_backup(store, keyring, s3_clock.now)
    folder = backup_folder("", victim, s3_clock.now)
    s3_clock.now = end
    write_backup(store, keyring, end)
    tamper_with_manifest(s3_server, s3_locked_bucket, victim, how, keyring)
    # Every version locked to the victim's horizon, as the nightly runs would leave them.
    store.extend_lock(folder, end + timedelta(days=30))
    before = versions_of(s3_server, s3_locked_bucket, "backups/" + folder)

    check = check_backup_locks(store, keyring, POLICY, now=end)
    assert check is not None and not check.passed, check
    assert victim in check.detail and "cannot be trusted" in check.detail
    assert "backup-manifest-untrusted" in check.fix

    s3_clock.advance(timedelta(days=60))  # every lock has run out
    with pytest.raises(CheckFailed, match=victim):
        apply_retention(
            store, keyring, RetentionPolicy(daily=1, weekly=0, monthly=0), now=s3_clock.now
        )
    assert versions_of(s3_server, s3_locked_bucket, "backups/" + folder) == before


def test_the_original_copied_back_over_a_written_over_manifest_is_trusted_again(
    keyring: Keyring, s3_server: B2LikeS3Server, s3_locked_bucket: str, s3_clock: ServerClock
) -> None:
    """The runbook's fix: the locked original, copied back on top, is the manifest again."""
    store = locked_store(s3_server, s3_locked_bucket, s3_clock)
    backup_id = write_backup(store, keyring, s3_clock() - timedelta(minutes=5))
    key = manifest_key(s3_server, s3_locked_bucket, backup_id)
    (original,) = versions_of(s3_server, s3_locked_bucket, key)
    tamper_with_manifest(s3_server, s3_locked_bucket, backup_id, "garbage", keyring)
    assert [b.backup_id for b in list_backups(store, keyring).invalid] == [backup_id]
    source = {"Bucket": s3_locked_bucket, "Key": key, "VersionId": original["VersionId"]}
    s3_server.client().copy_object(Bucket=s3_locked_bucket, Key=key, CopySource=source)
    assert [b.backup_id for b in list_backups(store, keyring).valid] == [backup_id]
    apply_retention(store, keyring, POLICY)  # locks the copy on top like the rest
    check = check_backup_locks(store, keyring, POLICY)
    assert check is not None and check.passed, check
