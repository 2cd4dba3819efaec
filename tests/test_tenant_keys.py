"""Per-tenant keys and erasure, on the B2-strict S3 server with real Postgres.

Each tenant's objects are encrypted under the tenant's own key, wrapped by the master key in a
key ledger kept outside the locked backups (the store and hardening.tenant_key_ledger).
``erase-tenant`` destroys one key everywhere the ledger lives: that tenant's data in every
retained backup is then unreadable even with the master key, while every other tenant restores.
"""

from __future__ import annotations

import base64
import hashlib
import json
from datetime import timedelta
from pathlib import Path

import pytest

from hardening_pipeline.backup.catalog import list_backups
from hardening_pipeline.backup.crypto import (
    BackupIntegrityError,
    Keyring,
    UnknownKeyError,
    data_key_id,
)
from hardening_pipeline.backup.erased_audit import list_hash_files
from hardening_pipeline.backup.erasure import ErasureFailed, erase_tenant, plan_erasure
from hardening_pipeline.backup.locks import write_lock
from hardening_pipeline.backup.manifest import Manifest, unwrap_data_key
from hardening_pipeline.backup.nightly import run_backup
from hardening_pipeline.backup.object_format import ObjectDecoder
from hardening_pipeline.backup.prune import apply_retention
from hardening_pipeline.backup.retention import RetentionPolicy
from hardening_pipeline.backup.store import FileStore, S3Store, make_s3_client
from hardening_pipeline.backup.tenant_key_copies import (
    ledger_status,
    read_db_ledger,
    read_store_ledger,
    recover_ledger,
)
from hardening_pipeline.backup.tenant_key_use import ObjectKeys, object_key
from hardening_pipeline.backup.tenant_keys import (
    LEDGER_KEY,
    Ledger,
    LedgerError,
    TenantErasedError,
    sign_ledger,
)
from hardening_pipeline.db.migrations import apply_migrations
from hardening_pipeline.errors import CheckFailed
from hardening_pipeline.hardening.seals import seal_audit_log, verify_audit_seals
from hardening_pipeline.hardening.seals.row_hashes import tenant_row_hashes
from hardening_pipeline.hardening.status import run_status_check
from hardening_pipeline.restore.drill import run_restore_drill
from hardening_pipeline.restore.tenant import restore_tenant
from hardening_pipeline.seed import seed_demo_data
from tests.support.cli import run_hardening
from tests.support.db import admin_connect
from tests.support.old_formats import rewrite_as_format_1
from tests.support.s3_server import B2LikeS3Server, ServerClock

KEY = bytes(range(90, 122))


@pytest.fixture
def keyring() -> Keyring:
    return Keyring(KEY)


@pytest.fixture
def seeded(db_url: str) -> str:
    seed_demo_data(db_url, tenants=3, messages_per_unit=3, random_seed=21)
    return db_url


@pytest.fixture
def store(s3_server: B2LikeS3Server, s3_locked_bucket: str, s3_clock: ServerClock) -> S3Store:
    """Backups locked (COMPLIANCE) as production writes them; the ledger must stay erasable."""
    client = make_s3_client(s3_server.endpoint_url, s3_server.region, max_attempts=1)
    lock = write_lock("compliance", RetentionPolicy(daily=3, weekly=1, monthly=1))
    return S3Store(
        s3_locked_bucket, "backups", client, part_size=5 << 20, object_lock=lock, clock=s3_clock
    )


def tenants_of(url: str) -> list[str]:
    with admin_connect(url) as conn:
        return [r["id"] for r in conn.execute("SELECT id::text AS id FROM tenants ORDER BY id")]


def every_stored_byte(server: B2LikeS3Server, bucket: str) -> bytes:
    """Every version of every object in the bucket, concatenated: where a key could hide."""
    client = server.client()
    blobs = []
    for version in client.list_object_versions(Bucket=bucket).get("Versions", []):
        body = client.get_object(Bucket=bucket, Key=version["Key"], VersionId=version["VersionId"])
        blobs.append(body["Body"].read())
    return b"\n".join(blobs)


def opens(store, manifest, entry, key: bytes) -> bool:
    try:
        for _ in ObjectDecoder(
            store.get(manifest.folder("") + entry.name),
            key,
            backup_id=manifest.backup_id,
            object_name=entry.name,
        ):
            pass
    except BackupIntegrityError:
        return False
    return True


# --- per-tenant keys ---------------------------------------------------------------------------


def offboard(url: str, tenant: str) -> None:
    """The app deletes the tenant's rows, as it would after the customer left."""
    with admin_connect(url) as conn:
        conn.execute("SELECT set_config('app.actor', 'test:offboarding', false)")
        for table in ("messages", "onboarding_attempts", "units", "developments"):
            conn.execute(f"DELETE FROM {table} WHERE tenant_id = %s", (tenant,))  # noqa: S608
        conn.execute("DELETE FROM tenants WHERE id = %s", (tenant,))
        conn.commit()


def test_each_tenant_is_under_its_own_key_recorded_in_both_ledger_copies(
    seeded: str, store: S3Store, keyring: Keyring
) -> None:
    first = run_backup(seeded, store, keyring).manifest
    second = run_backup(seeded, store, keyring).manifest
    tenant_entries = [o for o in second.objects if o.tenant_id is not None]
    assert len(tenant_entries) == 3
    assert len({o.tenant_key_id for o in tenant_entries}) == 3
    # The same tenant key in every backup: one key to destroy erases all of them.
    assert {o.tenant_id: o.tenant_key_id for o in first.objects} == {
        o.tenant_id: o.tenant_key_id for o in second.objects
    }
    shared = next(o for o in second.objects if o.tenant_id is None)
    assert shared.tenant_key_id is None
    # The backup's shared key opens the shared object and no tenant's object.
    shared_key = unwrap_data_key(second, keyring)
    assert opens(store, second, shared, shared_key)
    assert not any(opens(store, second, o, shared_key) for o in tenant_entries)
    keys = ObjectKeys(store, second, keyring)
    for entry in tenant_entries:
        tenant_key = keys.for_object(entry)
        assert data_key_id(tenant_key).hex() == entry.tenant_key_id
        assert opens(store, second, entry, tenant_key)
    # Two copies, byte for byte the same; the database's copy is in no backup object.
    in_store = read_store_ledger(store, keyring)
    with admin_connect(seeded) as conn:
        in_db = read_db_ledger(conn, keyring)
    assert in_store is not None and in_db is not None and in_store[1] == in_db[1]
    assert set(in_store[0].tenants) == set(tenants_of(seeded))
    assert all(t.name != "hardening.tenant_key_ledger" for o in second.objects for t in o.tables)
    # The ledger is not locked: it must stay erasable.
    assert store.locked_until(LEDGER_KEY) is None
    assert store.locked_until(second.folder("") + "manifest.json") is not None


def test_a_ledger_copy_altered_without_the_master_key_is_refused(
    seeded: str, store: S3Store, keyring: Keyring
) -> None:
    run_backup(seeded, store, keyring)
    raw = b"".join(store.get(LEDGER_KEY))
    store.replace_unlocked(LEDGER_KEY, raw.replace(b'"version":1', b'"version":9'))
    with pytest.raises(LedgerError, match="disagree"):
        run_backup(seeded, store, keyring)


def test_old_backups_with_one_shared_key_still_restore(
    seeded: str, keyring: Keyring, empty_db_url: str, tmp_path: Path
) -> None:
    """A backup whose tenant objects carry no tenant_key_id is read with its shared key, by the
    tenant restore and the drill, with no key ledger anywhere."""
    store = FileStore(tmp_path / "store")
    result = run_backup(seeded, store, keyring)
    rewrite_as_format_1(store, result.manifest, keyring, one_shared_key=True)
    store.delete(LEDGER_KEY)
    with admin_connect(seeded) as conn:
        conn.execute("DELETE FROM hardening.tenant_key_ledger")
        conn.commit()
    tenant = tenants_of(seeded)[0]
    apply_migrations(empty_db_url)
    restored = restore_tenant(store, keyring, tenant_id=tenant, target_url=empty_db_url)
    assert restored.backup_id == result.backup_id and restored.inserted > 0
    drill = run_restore_drill(store, keyring, run_tests=False)
    assert drill.rows_restored == result.rows
    assert all(i.passed for i in drill.invariants), drill.invariants


# --- erasure -----------------------------------------------------------------------------------


def test_erase_tenant_destroys_the_key_in_every_copy_and_every_backup(
    seeded: str,
    store: S3Store,
    keyring: Keyring,
    s3_server: B2LikeS3Server,
    s3_locked_bucket: str,
) -> None:
    backups = [run_backup(seeded, store, keyring).manifest for _ in range(2)]
    victim, *others = tenants_of(seeded)
    entry = next(o for o in backups[0].objects if o.tenant_id == victim)
    old_ledger = read_store_ledger(store, keyring)
    assert old_ledger is not None
    wrapped = old_ledger[0].tenants[victim].wrapped_key
    assert base64.b64encode(wrapped) in every_stored_byte(s3_server, s3_locked_bucket)

    plan = plan_erasure(store, keyring, seeded, victim)
    assert plan.tenant_id == victim and plan.key_id == entry.tenant_key_id
    assert set(plan.backups) == {b.backup_id for b in backups}
    assert victim in plan.confirmation() and "2 retained backup(s)" in plan.confirmation()
    certificate = erase_tenant(store, keyring, seeded, plan)

    # The wrapped key is gone from every version of every object in the bucket...
    stored = every_stored_byte(s3_server, s3_locked_bucket)
    assert base64.b64encode(wrapped) not in stored and wrapped not in stored
    # ...and from the database, dead row versions included (VACUUM ran).
    with admin_connect(seeded) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS pageinspect")
        pages = conn.execute(
            "SELECT string_agg(encode(get_raw_page('hardening.tenant_key_ledger', n), 'escape'), "
            "'') AS raw FROM generate_series(0, pg_relation_size('hardening.tenant_key_ledger') "
            "/ current_setting('block_size')::int - 1) AS n"
        ).fetchone()["raw"]
        audit = conn.execute(
            "SELECT actor, operation, table_name, tenant_id::text AS tenant, before "
            "FROM audit_events WHERE table_name = 'hardening.tenant_key_ledger'"
        ).fetchall()
    assert base64.b64encode(wrapped).decode() not in pages
    assert [(a["actor"], a["operation"], a["tenant"]) for a in audit] == [
        ("hardening:erase-tenant", "DELETE", victim)
    ]
    assert audit[0]["before"]["key_id"] == plan.key_id
    assert sorted(audit[0]["before"]["backups"]) == sorted(plan.backups)
    assert "wrapped" not in json.dumps(audit[0]["before"])
    assert certificate.key_id == plan.key_id and certificate.backups == list(plan.backups)
    assert len(certificate.verified) == 2

    # Even with the master key, nothing opens the erased tenant's objects; the rest still open.
    for manifest in backups:
        keys = ObjectKeys(store, manifest, keyring)
        victim_entry = next(o for o in manifest.objects if o.tenant_id == victim)
        with pytest.raises(TenantErasedError, match="erased"):
            keys.for_object(victim_entry)
        ledger = keys.ledger()
        candidates = [keys.shared, *(keys.unwrap(k) for k in ledger.tenants.values())]
        assert not any(opens(store, manifest, victim_entry, k) for k in candidates)
        for other in (o for o in manifest.objects if o.tenant_id in others):
            assert opens(store, manifest, other, keys.for_object(other))


def test_after_erasure_the_drill_restores_the_others_and_proves_the_erased_unreadable(
    seeded: str, store: S3Store, keyring: Keyring
) -> None:
    backup = run_backup(seeded, store, keyring)
    victim = tenants_of(seeded)[1]
    erase_tenant(store, keyring, seeded, plan_erasure(store, keyring, seeded, victim))
    result = run_restore_drill(store, keyring)
    assert result.passed, (result.failure, result.invariants, result.tests_output)
    proof = next(i for i in result.invariants if i.name.startswith("erased tenants"))
    assert proof.passed and victim in proof.detail and "keys refused" in proof.detail
    victim_rows = sum(
        t.row_count for o in backup.manifest.objects if o.tenant_id == victim for t in o.tables
    )
    assert result.rows_restored == backup.rows - victim_rows


def test_restore_of_an_erased_tenant_refuses_with_a_sentence(
    seeded: str, store: S3Store, keyring: Keyring, empty_db_url: str
) -> None:
    run_backup(seeded, store, keyring)
    victim, other = tenants_of(seeded)[:2]
    apply_migrations(empty_db_url)
    erase_tenant(store, keyring, seeded, plan_erasure(store, keyring, seeded, victim))
    with pytest.raises(TenantErasedError, match=f"tenant {victim} was erased at .* no longer"):
        restore_tenant(store, keyring, tenant_id=victim, target_url=empty_db_url)
    # Once the tenant is gone from the database, newer backups do not hold it at all: the
    # refusal still says it was erased rather than suggesting another backup.
    offboard(seeded, victim)
    newer = run_backup(seeded, store, keyring)
    assert victim not in {o.tenant_id for o in newer.manifest.objects}
    with pytest.raises(TenantErasedError, match="was erased"):
        restore_tenant(store, keyring, tenant_id=victim, target_url=empty_db_url)
    assert restore_tenant(store, keyring, tenant_id=other, target_url=empty_db_url).inserted


def test_a_backup_refuses_an_erased_tenant_that_still_has_rows(
    seeded: str, store: S3Store, keyring: Keyring
) -> None:
    run_backup(seeded, store, keyring)
    victim = tenants_of(seeded)[0]
    erase_tenant(store, keyring, seeded, plan_erasure(store, keyring, seeded, victim))
    with pytest.raises(CheckFailed, match=f"tenant {victim} was erased .* still has rows"):
        run_backup(seeded, store, keyring)


def test_retention_still_works_after_erasure(
    seeded: str, store: S3Store, keyring: Keyring, s3_clock: ServerClock
) -> None:
    first = run_backup(seeded, store, keyring)
    victim = tenants_of(seeded)[2]
    erase_tenant(store, keyring, seeded, plan_erasure(store, keyring, seeded, victim))
    offboard(seeded, victim)
    second = run_backup(seeded, store, keyring)
    s3_clock.advance(timedelta(days=40))  # every lock has run out
    outcome = apply_retention(
        store, keyring, RetentionPolicy(daily=1, weekly=0, monthly=0), now=s3_clock.now
    )
    assert outcome.deleted == [first.backup_id]
    remaining = list_backups(store, keyring, now=s3_clock.now).valid
    assert [b.backup_id for b in remaining] == [second.backup_id]
    # The ledger is not a backup: retention leaves it, and its erasure record, alone.
    found = read_store_ledger(store, keyring)
    assert found is not None and [e.tenant_id for e in found[0].erased] == [victim]


# --- the ledger as a single point of failure ----------------------------------------------------


def test_a_lost_copy_is_written_again_from_the_other_at_the_next_backup(
    seeded: str, store: S3Store, keyring: Keyring
) -> None:
    run_backup(seeded, store, keyring)
    store.delete(LEDGER_KEY)  # the store copy is gone: the database still has every key
    result = run_backup(seeded, store, keyring)
    assert result.manifest.objects and read_store_ledger(store, keyring) is not None
    with admin_connect(seeded) as conn:
        conn.execute("DELETE FROM hardening.tenant_key_ledger")
        conn.commit()
    run_backup(seeded, store, keyring)
    with admin_connect(seeded) as conn:
        assert read_db_ledger(conn, keyring) is not None


def test_a_deleted_entry_that_was_not_an_erasure_is_red_and_recovery_brings_it_back(
    seeded: str, store: S3Store, keyring: Keyring
) -> None:
    run_backup(seeded, store, keyring)
    victim = tenants_of(seeded)[0]
    found = read_store_ledger(store, keyring)
    assert found is not None
    ledger = found[0]
    # Someone with the master key re-signs a ledger without one tenant's key, in one copy.
    pruned = Ledger(
        ledger.version + 1,
        ledger.written_at,
        {t: k for t, k in ledger.tenants.items() if t != victim},
        ledger.erased,
    )
    store.replace_unlocked(LEDGER_KEY, sign_ledger(pruned, keyring))
    report = run_status_check(seeded, store=store, keyring=keyring)
    [line] = [x for x in report.lines if x.name == "tenant_key_ledger"]
    assert not line.passed and victim in line.detail and "tenant-keys recover" in line.fix
    with pytest.raises(LedgerError, match="without an erasure record"):
        run_backup(seeded, store, keyring)
    recovery = recover_ledger(store, seeded, keyring)
    assert victim in recovery.ledger.tenants
    report = run_status_check(seeded, store=store, keyring=keyring)
    assert [x.passed for x in report.lines if x.name == "tenant_key_ledger"] == [True]
    run_backup(seeded, store, keyring)


def test_both_copies_lost_is_red_and_the_escrow_export_recovers(
    seeded: str, store: S3Store, keyring: Keyring, tmp_path: Path
) -> None:
    backup = run_backup(seeded, store, keyring)
    env = {
        "BACKUP_ENCRYPTION_KEY": base64.b64encode(KEY).decode(),
        "BACKUP_STORE_URL": f"s3://{store.bucket}/backups",
        "BACKUP_S3_ENDPOINT_URL": str(store.client.meta.endpoint_url),
    }
    escrow = tmp_path / "escrow.json"
    proc = run_hardening("tenant-keys", "export", str(escrow), url=seeded, env=env)
    assert proc.returncode == 0, proc.stderr
    store.delete(LEDGER_KEY)
    with admin_connect(seeded) as conn:
        conn.execute("DELETE FROM hardening.tenant_key_ledger")
        conn.commit()
        passed, detail, _ = ledger_status(conn, store, keyring)
    assert not passed and "never erased" in detail
    entry = next(o for o in backup.manifest.objects if o.tenant_id is not None)
    with pytest.raises(LedgerError):
        ObjectKeys(store, backup.manifest, keyring).for_object(entry)
    proc = run_hardening("tenant-keys", "recover", "--from", str(escrow), url=seeded, env=env)
    assert proc.returncode == 0, proc.stderr
    keys = ObjectKeys(store, backup.manifest, keyring)
    assert opens(store, backup.manifest, entry, keys.for_object(entry))


def test_a_backup_refuses_to_re_key_a_tenant_whose_key_both_copies_lost(
    seeded: str, store: S3Store, keyring: Keyring
) -> None:
    """Both copies lost without an erasure: a new key would leave every retained backup of
    that tenant unreadable, so the backup stops and names the recovery instead."""
    first = run_backup(seeded, store, keyring)
    store.delete(LEDGER_KEY)
    with admin_connect(seeded) as conn:
        conn.execute("DELETE FROM hardening.tenant_key_ledger")
        conn.commit()
    with pytest.raises(CheckFailed, match="neither copy of the tenant key ledger.*recover"):
        run_backup(seeded, store, keyring)
    assert read_store_ledger(store, keyring) is None  # nothing was re-keyed
    assert len(list_backups(store, keyring).valid) == 1
    entry = next(o for o in first.manifest.objects if o.tenant_id is not None)
    assert entry.tenant_key_id


def test_recovery_waits_for_the_backup_lock_that_erasures_and_backups_hold(
    seeded: str, store: S3Store, keyring: Keyring, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A recovery beside an erasure could write back the key the erasure just destroyed."""
    from hardening_pipeline.backup import tenant_key_copies
    from hardening_pipeline.db.job_locks import JobLockBusy, take_job_lock

    run_backup(seeded, store, keyring)
    monkeypatch.setattr(tenant_key_copies, "RECOVER_LOCK_TIMEOUT_MS", 200)
    with admin_connect(seeded) as erasure:
        erasure.execute("SELECT 1")  # the lock lives as long as this transaction
        take_job_lock(erasure, "backup", lock_timeout_ms=None)
        with pytest.raises(JobLockBusy):
            recover_ledger(store, seeded, keyring)
    assert recover_ledger(store, seeded, keyring).ledger.tenants


# --- the command --------------------------------------------------------------------------------


@pytest.fixture
def file_env(tmp_path: Path) -> dict[str, str]:
    return {
        "BACKUP_ENCRYPTION_KEY": base64.b64encode(KEY).decode(),
        "BACKUP_STORE_URL": (tmp_path / "store").as_uri(),
    }


def test_erase_tenant_command_confirms_records_and_certifies(
    seeded: str, file_env: dict[str, str], tmp_path: Path
) -> None:
    assert run_hardening("backup", url=seeded, env=file_env).returncode == 0
    victim = tenants_of(seeded)[0]
    evidence = tmp_path / "evidence"
    # A wrong answer erases nothing: exit 2, one sentence.
    proc = run_hardening(
        "erase-tenant",
        victim,
        "--evidence-dir",
        str(evidence),
        url=seeded,
        env=file_env,
        input_text="nope\n",
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"Erase tenant {victim}?" in proc.stdout and "1 retained backup(s)" in proc.stdout
    assert "nothing was erased" in proc.stderr and "Traceback" not in proc.stderr
    assert not evidence.exists()
    # A script without --yes and nothing on stdin: the same sentence, not a bare "Aborted!".
    proc = run_hardening("erase-tenant", victim, url=seeded, env=file_env, input_text="")
    assert proc.returncode == 2 and "pass --yes in scripts" in proc.stderr
    proc = run_hardening(
        "erase-tenant",
        victim,
        "--evidence-dir",
        str(evidence),
        url=seeded,
        env=file_env,
        input_text=victim + "\n",
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    [certificate] = list((evidence / "erasures").glob("*.json"))
    data = json.loads(certificate.read_text())
    assert data["tenant_id"] == victim and len(data["backups"]) == 1
    assert data["sealed"].startswith("sealed in seal"), data["sealed"]
    assert (evidence / "erasures" / certificate.name.replace(".json", ".md")).exists()
    # Scripts pass --yes; the tenant is gone already, which is a sentence, not a crash.
    proc = run_hardening(
        "erase-tenant", victim, "--yes", "--evidence-dir", str(evidence), url=seeded, env=file_env
    )
    assert proc.returncode == 2 and "already erased" in proc.stderr
    proc = run_hardening("restore", "--tenant", victim, "--into", seeded, url=seeded, env=file_env)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "was erased" in proc.stderr and "Traceback" not in proc.stderr


def test_a_copy_one_write_behind_is_caught_up_not_refused(
    seeded: str, store: S3Store, keyring: Keyring
) -> None:
    """A crash between the store's write and the database's leaves the database a version
    behind, without the newest tenant's key: the next backup adopts the newer copy."""
    run_backup(seeded, store, keyring)
    with admin_connect(seeded) as conn:
        behind = conn.execute("SELECT document FROM hardening.tenant_key_ledger").fetchone()
    seed_demo_data(seeded, tenants=1, messages_per_unit=1, random_seed=5)
    run_backup(seeded, store, keyring)
    with admin_connect(seeded) as conn:
        conn.execute(
            "UPDATE hardening.tenant_key_ledger SET document = %s, version = 1",
            (behind["document"],),
        )
        conn.commit()
    run_backup(seeded, store, keyring)
    found = read_store_ledger(store, keyring)
    with admin_connect(seeded) as conn:
        in_db = read_db_ledger(conn, keyring)
    assert found is not None and in_db is not None and found[1] == in_db[1]
    assert set(in_db[0].tenants) == set(tenants_of(seeded)) and len(in_db[0].tenants) == 4


def test_a_new_master_key_needs_the_old_one_and_rotation_rewraps_every_tenant_key(
    seeded: str, keyring: Keyring, tmp_path: Path
) -> None:
    store = FileStore(tmp_path / "store")
    first = run_backup(seeded, store, keyring)
    stranger = Keyring(bytes(range(32)))
    with pytest.raises(UnknownKeyError, match="tenant key ledger was signed with master key id"):
        run_backup(seeded, store, stranger)
    rotated = Keyring(bytes(range(1, 33)), [KEY])
    run_backup(seeded, store, rotated)
    found = read_store_ledger(store, rotated)
    assert found is not None
    assert {k.master_key_id for k in found[0].tenants.values()} == {rotated.current_key_id}
    # The older backup's tenant objects still open: the tenant keys themselves never changed.
    keys = ObjectKeys(store, first.manifest, rotated)
    entry = next(o for o in first.manifest.objects if o.tenant_id is not None)
    assert opens(store, first.manifest, entry, keys.for_object(entry))


def test_erasure_with_a_store_key_that_cannot_delete_erases_nothing(
    seeded: str, store: S3Store, keyring: Keyring, s3_faults
) -> None:
    """The nightly writer key has no deleteFiles: an erasure run with it must not leave the key
    in the bucket's version history while claiming success. It stops, and nothing is erased."""
    backup = run_backup(seeded, store, keyring)
    victim = tenants_of(seeded)[0]
    plan = plan_erasure(store, keyring, seeded, victim)
    s3_faults.fail_next("DeleteObject", status=403, code="AccessDenied")
    with pytest.raises(ErasureFailed, match="nothing was erased: .* pruning key"):
        erase_tenant(store, keyring, seeded, plan)
    entry = next(o for o in backup.manifest.objects if o.tenant_id == victim)
    assert opens(store, backup.manifest, entry, object_key(store, backup.manifest, keyring, entry))
    with admin_connect(seeded) as conn:
        in_db = read_db_ledger(conn, keyring)
        audit = conn.execute(
            "SELECT count(*) AS n FROM audit_events "
            "WHERE table_name = 'hardening.tenant_key_ledger'"
        ).fetchone()["n"]
    assert in_db is not None and victim in in_db[0].tenants and audit == 0
    # With a key that may delete, the same erasure goes through.
    certificate = erase_tenant(store, keyring, seeded, plan_erasure(store, keyring, seeded, victim))
    assert certificate.key_id == plan.key_id


def test_status_with_the_store_turns_red_when_both_copies_lost_a_key(
    seeded: str, keyring: Keyring, tmp_path: Path
) -> None:
    """`hardening status --backup-freshness` opens the store: the ledger line compares there."""
    from hardening_pipeline.jobs.status import FreshnessRequest, status_job

    store = FileStore(tmp_path / "store")
    run_backup(seeded, store, keyring)

    def ledger_line() -> tuple[bool, str]:
        job = status_job(
            seeded,
            reports_dir=tmp_path / "reports",
            notifier=None,
            freshness=FreshnessRequest(store, keyring),
        )
        [line] = [x for x in job.report.lines if x.name == "tenant_key_ledger"]
        return line.passed, line.detail

    assert ledger_line()[0]
    store.delete(LEDGER_KEY)
    with admin_connect(seeded) as conn:
        conn.execute("DELETE FROM hardening.tenant_key_ledger")
        conn.commit()
    passed, detail = ledger_line()
    assert not passed and "never erased" in detail


# --- the erased tenant's audit rows ------------------------------------------------------------


def plaintext(store, manifest: Manifest, entry, key: bytes) -> bytes:
    decoder = ObjectDecoder(
        store.get(manifest.folder("") + entry.name),
        key,
        backup_id=manifest.backup_id,
        object_name=entry.name,
    )
    return b"".join(decoder)


def audit_payloads(url: str, tenant: str) -> list[str]:
    """Text only this tenant's audit rows carry: the message bodies of their after images."""
    with admin_connect(url) as conn:
        rows = conn.execute(
            "SELECT DISTINCT after->>'body' AS body FROM audit_events "
            "WHERE tenant_id = %s AND table_name = 'messages' AND after ? 'body'",
            (tenant,),
        ).fetchall()
    return [r["body"] for r in rows if r["body"]]


def test_the_erased_tenant_s_audit_rows_go_with_its_key_and_the_seals_still_verify(
    seeded: str, store: S3Store, keyring: Keyring, no_seal_start_margin: None
) -> None:
    assert seal_audit_log(seeded, wait_seconds=0).seals
    before = run_backup(seeded, store, keyring).manifest
    victim, *others = tenants_of(seeded)
    bodies = audit_payloads(seeded, victim)
    assert bodies
    keys = ObjectKeys(store, before, keyring)
    shared = next(o for o in before.objects if o.tenant_id is None)
    victim_entry = next(o for o in before.objects if o.tenant_id == victim)
    # The tenant's audit rows are in its own object, under its own key; not in the shared one.
    assert any(t.name == "audit_events" and t.row_count for t in victim_entry.tables)
    assert not any(
        body.encode() in plaintext(store, before, shared, keys.shared) for body in bodies
    )
    victim_text = plaintext(store, before, victim_entry, keys.for_object(victim_entry))
    assert all(body.encode() in victim_text for body in bodies)
    assert not list_hash_files(store)  # nothing is recorded until a tenant is erased

    erase_tenant(store, keyring, seeded, plan_erasure(store, keyring, seeded, victim))
    with admin_connect(seeded) as conn:
        at_erasure = conn.execute(
            "SELECT count(*) AS n FROM audit_events WHERE tenant_id = %s", (victim,)
        ).fetchone()["n"]
    recorded = list_hash_files(store)
    # Every row of the tenant's, bar the erasure's own audit row, which is written after.
    assert [(f.tenant, f.count) for f in recorded] == [(victim, at_erasure - 1)]

    offboard(seeded, victim)  # after the erasure: audited deletes, more of the victim's rows
    with admin_connect(seeded) as conn:  # and a row of no tenant, which stays in the shared part
        conn.execute(
            "INSERT INTO audit_events (actor, table_name, operation, record_id, after, db_role) "
            "VALUES ('test:no-tenant', 'plans', 'INSERT', 'basic', '{}', current_user)"
        )
        conn.commit()
    assert seal_audit_log(seeded, wait_seconds=0).seals
    after = run_backup(seeded, store, keyring).manifest
    with admin_connect(seeded) as conn:
        total = conn.execute(
            "SELECT count(*) AS n FROM audit_events WHERE tenant_id = %s", (victim,)
        ).fetchone()["n"]
    assert sum(f.count for f in list_hash_files(store, [victim])) == total > at_erasure
    after_shared = next(o for o in after.objects if o.tenant_id is None)
    after_text = plaintext(store, after, after_shared, ObjectKeys(store, after, keyring).shared)
    assert victim.encode() not in after_text  # none of its rows, deletes included
    assert b"test:no-tenant" in after_text
    assert not any(body.encode() in after_text for body in bodies)

    # Both drills restore every other tenant, and the seal chain verifies over the restored
    # rows plus the erased rows' recorded hashes (a missing sealed row would turn it red).
    for manifest in (before, after):
        result = run_restore_drill(store, keyring, backup_id=manifest.backup_id)
        assert result.passed, (manifest.backup_id, result.failure, result.invariants)


def test_a_recorded_hash_stands_in_only_for_a_missing_row_and_must_be_right(
    seeded: str, no_seal_start_margin: None
) -> None:
    assert seal_audit_log(seeded, wait_seconds=0).seals
    victim, other, _ = tenants_of(seeded)
    with admin_connect(seeded, autocommit=True) as su:
        with su.transaction():
            recorded = dict(tenant_row_hashes(su, victim))
        last = {
            t: su.execute(
                "SELECT max(id) AS id FROM audit_events WHERE tenant_id = %s", (t,)
            ).fetchone()["id"]
            for t in (victim, other)
        }

        def delete(row_id: int) -> None:
            with su.transaction():
                su.execute("ALTER TABLE audit_events DISABLE TRIGGER audit_events_append_only")
                su.execute("DELETE FROM audit_events WHERE id = %s", (row_id,))
                su.execute(
                    "ALTER TABLE audit_events ENABLE ALWAYS TRIGGER audit_events_append_only"
                )

        present = verify_audit_seals(seeded, full=True, erased_rows=recorded)
        assert present.passed and "recorded hashes" not in present.detail
        delete(last[victim])
        gone = verify_audit_seals(seeded, full=True)
        assert not gone.passed and gone.first_bad_id == last[victim]
        erased = verify_audit_seals(seeded, full=True, erased_rows=recorded)
        assert erased.passed, erased.detail
        assert "1 erased tenants' row(s) checked by their recorded hashes" in erased.detail
        # The recorded hash is checked by the seal, not trusted...
        forged = {**recorded, last[victim]: hashlib.sha256(b"forged").digest()}
        wrong = verify_audit_seals(seeded, full=True, erased_rows=forged)
        assert not wrong.passed and wrong.first_bad_id == last[victim]
        # ...and covers no other tenant's deleted row.
        delete(last[other])
        mixed = verify_audit_seals(seeded, full=True, erased_rows=recorded)
        assert not mixed.passed and mixed.first_bad_id == last[other]


# --- the database's copy out of place -------------------------------------------------------------


def ledger_line(url: str, store, keyring: Keyring):
    report = run_status_check(url, store=store, keyring=keyring)
    [line] = [x for x in report.lines if x.name == "tenant_key_ledger"]
    return line


@pytest.mark.parametrize("who", ["superuser", "owner"])
def test_a_dropped_ledger_table_is_red_refuses_the_backup_and_recover_brings_it_back(
    request: pytest.FixtureRequest, who: str, keyring: Keyring, tmp_path: Path
) -> None:
    """After 021 a missing table is a lost copy, never "migration 021 not applied"."""
    url = owned_database(request, who)
    store = FileStore(tmp_path / "store")
    run_backup(url, store, keyring)
    with connect_as(url, who) as conn:
        conn.execute("DROP TABLE hardening.tenant_key_ledger")
        conn.commit()
    for checked_with in (store, None):  # the database alone shows it
        line = ledger_line(url, checked_with, keyring)
        assert not line.passed and "is gone although migration 021" in line.detail, line
        assert "tenant-keys recover" in line.fix
    with pytest.raises(LedgerError, match="is gone .* no backup was written: run `hardening"):
        run_backup(url, store, keyring)
    assert len(list_backups(store, keyring).valid) == 1
    recover_ledger(store, url, keyring)
    with connect_as(url, who) as conn:
        in_db = read_db_ledger(conn, keyring)
        closed = conn.execute(
            "SELECT bool_or(has_table_privilege(r, 'hardening.tenant_key_ledger', 'SELECT')) "
            "AS open FROM unnest(ARRAY['anon', 'authenticated', 'service_role']) AS r "
            "WHERE EXISTS (SELECT FROM pg_roles WHERE rolname = r)"
        ).fetchone()
    found = read_store_ledger(store, keyring)
    assert in_db is not None and found is not None and in_db[0].tenants == found[0].tenants
    assert not _first_value(closed)
    assert ledger_line(url, store, keyring).passed
    run_backup(url, store, keyring)


@pytest.mark.parametrize("who", ["superuser", "owner"])
@pytest.mark.parametrize(
    "move",
    [
        "ALTER TABLE hardening.tenant_key_ledger RENAME TO key_archive",
        "ALTER TABLE hardening.tenant_key_ledger SET SCHEMA public",
    ],
    ids=["rename", "set-schema"],
)
def test_a_moved_ledger_table_is_never_backed_up_and_the_backup_refuses(
    request: pytest.FixtureRequest, who: str, move: str, keyring: Keyring, tmp_path: Path
) -> None:
    """Under another name or schema the table still holds every wrapped tenant key: a backup
    that carried it would lock the keys into its shared object, beyond any erasure."""
    from hardening_pipeline.backup.export import discover_layout

    url = owned_database(request, who)
    store = FileStore(tmp_path / "store")
    run_backup(url, store, keyring)
    moved = ("hardening", "key_archive") if "RENAME" in move else ("public", "tenant_key_ledger")
    with connect_as(url, who) as conn:
        conn.execute(move)
        conn.commit()
    with pytest.raises(LedgerError) as refused:
        run_backup(url, store, keyring)
    said = str(refused.value)
    assert ".".join(moved) in said and "no backup was written: move it back with" in said
    assert "\n" not in said
    assert len(list_backups(store, keyring).valid) == 1
    assert not ledger_line(url, None, keyring).passed
    line = ledger_line(url, store, keyring)
    assert not line.passed and ".".join(moved) in line.detail and "move it back" in line.fix
    # Not in any object, even beside a decoy at the ledger's place (which a backup would fill).
    with connect_as(url, who) as conn:
        conn.execute(f"CREATE TABLE hardening.tenant_key_ledger (LIKE {'.'.join(moved)})")
        conn.commit()
        layout = discover_layout(conn)
        conn.rollback()
        exported = {(t.schema, t.name) for t in (*layout.tenant_tables, *layout.shared_tables)}
        assert moved not in exported and ("hardening", "tenant_key_ledger") not in exported
    with pytest.raises(LedgerError, match="besides hardening.tenant_key_ledger itself"):
        run_backup(url, store, keyring)
    with connect_as(url, who) as conn:
        conn.execute("DROP TABLE hardening.tenant_key_ledger")
        conn.commit()
    # The printed fix, pasted as it is, puts the table back; the backup runs again.
    fix = line.fix.split("move it back with ", 1)[1].split(" then run", 1)[0]
    with connect_as(url, who) as conn:
        for statement in filter(None, (s.strip() for s in fix.split(";"))):
            conn.execute(statement)
        conn.commit()
    assert ledger_line(url, store, keyring).passed
    assert run_backup(url, store, keyring).manifest.objects


def owned_database(request: pytest.FixtureRequest, who: str) -> str:
    """A seeded database whose ledger table belongs to ``who``: the superuser that migrated a
    plain server, or Supabase's ``postgres``, which is not a superuser and owns what it migrates."""
    if who == "superuser":
        url = request.getfixturevalue("db_url")
    else:
        url = request.getfixturevalue("supabase_db_url")
        apply_migrations(url)
        with connect_as(url, who) as conn:
            row = conn.execute(
                "SELECT rolsuper, pg_get_userbyid(relowner) = current_user AS owns "
                "FROM pg_roles, pg_class WHERE rolname = current_user "
                "AND pg_class.oid = 'hardening.tenant_key_ledger'::regclass"
            ).fetchone()
        assert row == {"rolsuper": False, "owns": True}
    seed_demo_data(url, tenants=2, messages_per_unit=1, random_seed=3)
    return url


def connect_as(url: str, who: str):
    import psycopg
    from psycopg.rows import dict_row

    if who == "superuser":
        return admin_connect(url)
    return psycopg.connect(url, row_factory=dict_row)


def _first_value(row) -> object:
    return next(iter(row.values()))


@pytest.mark.parametrize("how", ["garbage", "signed again", "delete marker"])
def test_a_backup_whose_manifest_was_written_over_turns_the_ledger_line_red(
    seeded: str,
    store: S3Store,
    keyring: Keyring,
    s3_server: B2LikeS3Server,
    s3_locked_bucket: str,
    how: str,
) -> None:
    """Which tenant keys such a backup uses is unknown: the line says so instead of skipping it."""
    from tests.test_backup_locks import tamper_with_manifest

    victim = run_backup(seeded, store, keyring).backup_id
    run_backup(seeded, store, keyring)
    assert ledger_line(seeded, store, keyring).passed
    tamper_with_manifest(s3_server, s3_locked_bucket, victim, how, keyring)
    line = ledger_line(seeded, store, keyring)
    assert not line.passed and victim in line.detail and "cannot be trusted" in line.detail
    assert "backup-manifest-untrusted" in line.fix
