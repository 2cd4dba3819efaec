"""The tenant key ledger against the store's own writer key, on the B2-strict S3 server.

The nightly writer key may put objects and set retention (never delete): it can put back an
old ``ledger.json`` that still holds an erased tenant's key, or lock the ledger's versions so an
erasure can never delete them. Recovery merging sources must never drop a key a backup needs.
"""

# ruff: noqa: F811  (the fixtures imported from test_tenant_keys are parameters here)
from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from hardening_pipeline.backup.crypto import Keyring, data_key_id, generate_data_key
from hardening_pipeline.backup.erasure import ErasureFailed, erase_tenant, plan_erasure
from hardening_pipeline.backup.manifest import MANIFEST_NAME
from hardening_pipeline.backup.manifest_signing import load_manifest, sign_manifest
from hardening_pipeline.backup.nightly import run_backup
from hardening_pipeline.backup.store import S3Store
from hardening_pipeline.backup.store.s3_store import _send_content_md5
from hardening_pipeline.backup.tenant_key_copies import (
    read_db_ledger,
    read_store_ledger,
    recover_ledger,
    write_both_copies,
)
from hardening_pipeline.backup.tenant_key_use import ObjectKeys
from hardening_pipeline.backup.tenant_keys import (
    LEDGER_KEY,
    MAC_FIELD,
    LedgerError,
    TenantKey,
    sign_ledger,
)
from hardening_pipeline.db.migrations import apply_migrations
from hardening_pipeline.hardening.status import run_status_check
from hardening_pipeline.restore.binding import read_source_identity
from hardening_pipeline.restore.drill import run_restore_drill
from hardening_pipeline.restore.tenant import restore_tenant
from tests.support.db import admin_connect
from tests.test_tenant_keys import (  # noqa: F401  (fixtures)
    keyring,
    offboard,
    opens,
    seeded,
    store,
    tenants_of,
)


def ledger_bytes(store: S3Store) -> bytes:
    return b"".join(store.get(LEDGER_KEY))


# --- 1. an old or foreign ledger put back ------------------------------------------------------


def test_a_pre_erasure_ledger_put_back_is_refused_by_restore_and_drill(
    seeded: str, store: S3Store, keyring: Keyring, empty_db_url: str
) -> None:
    first = run_backup(seeded, store, keyring).manifest
    before_erasure = ledger_bytes(store)  # kept by whoever holds the writer key
    victim = tenants_of(seeded)[0]
    erase_tenant(store, keyring, seeded, plan_erasure(store, keyring, seeded, victim))
    offboard(seeded, victim)
    newer = run_backup(seeded, store, keyring).manifest
    ledger = read_store_ledger(store, keyring)
    store.replace_unlocked(LEDGER_KEY, before_erasure)  # the replay: a put, nothing more
    entry = next(o for o in first.objects if o.tenant_id == victim)
    with pytest.raises(LedgerError, match="older than the version .* put back"):
        ObjectKeys(store, first, keyring).for_object(entry)
    # Each manifest records the ledger it was written under (signed with the manifest).
    assert ledger is not None and ledger[0].ledger_id
    assert newer.metadata["tenant_key_ledger_id"] == ledger[0].ledger_id
    assert newer.metadata["tenant_key_ledger_version"] == str(ledger[0].version)
    assert int(first.metadata["tenant_key_ledger_version"]) < ledger[0].version
    drill = run_restore_drill(store, keyring, backup_id=first.backup_id, run_tests=False)
    assert not drill.passed and "put back" in (drill.failure or ""), drill.failure
    apply_migrations(empty_db_url)
    with pytest.raises(LedgerError, match="put back"):
        restore_tenant(
            store, keyring, tenant_id=victim, target_url=empty_db_url, backup_id=first.backup_id
        )
    # Recovery keeps the erasure: the replayed copy is left out, the database's copy is kept.
    recovery = recover_ledger(store, seeded, keyring)
    assert victim not in recovery.ledger.tenants and any("left out" in r for r in recovery.refused)
    assert ObjectKeys(store, first, keyring).erased(entry) is not None


def test_with_no_backup_since_the_erasure_the_database_copy_refuses_the_replay(
    seeded: str, store: S3Store, keyring: Keyring, empty_db_url: str
) -> None:
    first = run_backup(seeded, store, keyring).manifest
    before_erasure = ledger_bytes(store)
    victim = tenants_of(seeded)[1]
    erase_tenant(store, keyring, seeded, plan_erasure(store, keyring, seeded, victim))
    store.replace_unlocked(LEDGER_KEY, before_erasure)
    apply_migrations(empty_db_url)
    # The restore reaches the configured database: its copy is newer and records the erasure.
    with pytest.raises(LedgerError, match="database's copy holds, so it was put back"):
        restore_tenant(
            store,
            keyring,
            tenant_id=victim,
            target_url=empty_db_url,
            source=read_source_identity(seeded),
        )
    drill = run_restore_drill(store, keyring, run_tests=False, source=read_source_identity(seeded))
    assert not drill.passed and "put back" in (drill.failure or ""), drill.failure
    assert first.backup_id == drill.backup_id


def test_a_ledger_of_another_deployment_is_refused(
    seeded: str, store: S3Store, keyring: Keyring
) -> None:
    """Another deployment sharing the master key signs ledgers that verify here too: its ledger
    id, in the signed body, tells it apart."""
    backup = run_backup(seeded, store, keyring).manifest
    document = json.loads(ledger_bytes(store))
    document.pop(MAC_FIELD)
    document["ledger_id"] = "ab" * 16
    document["version"] += 100
    body = json.dumps(document, sort_keys=True, separators=(",", ":")).encode()
    mac = keyring.manifest_mac(document["key_id"], body)
    document[MAC_FIELD] = mac.hex()
    foreign = json.dumps(document, sort_keys=True, separators=(",", ":")).encode()
    store.replace_unlocked(LEDGER_KEY, foreign)
    entry = next(o for o in backup.objects if o.tenant_id is not None)
    with pytest.raises(LedgerError, match="another deployment"):
        ObjectKeys(store, backup, keyring).for_object(entry)
    with pytest.raises(LedgerError, match="different deployments"):
        run_backup(seeded, store, keyring)


def test_backups_and_ledgers_from_before_the_ledger_id_still_restore(
    seeded: str, store: S3Store, keyring: Keyring
) -> None:
    backup = run_backup(seeded, store, keyring).manifest
    found = read_store_ledger(store, keyring)
    assert found is not None
    legacy_ledger = replace(found[0], ledger_id=None)
    with admin_connect(seeded) as conn:
        write_both_copies(store, conn, legacy_ledger, keyring)
    raw = b"".join(store.get(backup.folder("") + MANIFEST_NAME))
    manifest = load_manifest(raw, keyring)
    legacy = replace(
        manifest, metadata={k: v for k, v in manifest.metadata.items() if "ledger" not in k}
    )
    # The backup as written before manifests recorded the ledger (a new current version).
    store.put(backup.folder("") + MANIFEST_NAME, [sign_manifest(legacy, keyring)])
    entry = next(o for o in legacy.objects if o.tenant_id is not None)
    assert opens(store, legacy, entry, ObjectKeys(store, legacy, keyring).for_object(entry))
    # The next backup gives the ledger its id, in both copies.
    run_backup(seeded, store, keyring)
    with admin_connect(seeded) as conn:
        in_db = read_db_ledger(conn, keyring)
    assert in_db is not None and in_db[0].ledger_id


# --- 2. recovery keeps the key retained backups use --------------------------------------------


def rekeyed(ledger, tenant: str, keyring: Keyring, version: int):
    key = generate_data_key()
    wrapped = keyring.wrap_tenant_key(key, tenant)
    entry = TenantKey(
        tenant, data_key_id(key).hex(), wrapped.key_id, wrapped.ciphertext, datetime.now(UTC)
    )
    return replace(ledger, version=version, tenants={**ledger.tenants, tenant: entry})


def test_recovery_keeps_the_key_backups_use_when_sources_disagree(
    seeded: str, store: S3Store, keyring: Keyring
) -> None:
    backup = run_backup(seeded, store, keyring).manifest
    tenant = tenants_of(seeded)[0]
    found = read_store_ledger(store, keyring)
    assert found is not None
    used = found[0].tenants[tenant].key_id
    # A newer source with another key for the tenant, which no backup uses.
    escrow = sign_ledger(rekeyed(found[0], tenant, keyring, found[0].version + 5), keyring)
    recovery = recover_ledger(store, seeded, keyring, escrow=escrow)
    assert recovery.ledger.tenants[tenant].key_id == used
    entry = next(o for o in backup.objects if o.tenant_id == tenant)
    assert opens(store, backup, entry, ObjectKeys(store, backup, keyring).for_object(entry))


def test_recovery_refuses_when_backups_use_both_keys(
    seeded: str, store: S3Store, keyring: Keyring
) -> None:
    run_backup(seeded, store, keyring)
    tenant = tenants_of(seeded)[0]
    found = read_store_ledger(store, keyring)
    assert found is not None
    escrow = found[1]  # the first key, kept in escrow
    with admin_connect(seeded) as conn:
        write_both_copies(store, conn, rekeyed(found[0], tenant, keyring, 50), keyring)
    run_backup(seeded, store, keyring)  # a backup under the second key
    before = ledger_bytes(store)
    with pytest.raises(LedgerError, match=f"different keys for tenant {tenant}.*neither key"):
        recover_ledger(store, seeded, keyring, escrow=escrow)
    assert ledger_bytes(store) == before


# --- 3. a lock on the ledger's versions --------------------------------------------------------


def lock_oldest_ledger_version(store: S3Store) -> None:
    versions = store.client.list_object_versions(Bucket=store.bucket, Prefix="backups/tenant-k")
    oldest = min(versions["Versions"], key=lambda v: v["LastModified"])
    store.client.put_object_retention(
        Bucket=store.bucket,
        Key=oldest["Key"],
        VersionId=oldest["VersionId"],
        Retention={
            "Mode": "COMPLIANCE",
            "RetainUntilDate": datetime.now(UTC) + timedelta(days=3650),
        },
    )


def test_a_locked_ledger_version_refuses_the_erasure_and_turns_the_status_red(
    seeded: str, store: S3Store, keyring: Keyring
) -> None:
    run_backup(seeded, store, keyring)
    victim = tenants_of(seeded)[0]
    run_backup(seeded, store, keyring)  # two ledger versions now
    lock_oldest_ledger_version(store)  # what the writer key may do to an unlocked version
    report = run_status_check(seeded, store=store, keyring=keyring)
    [line] = [x for x in report.lines if x.name == "tenant_key_ledger"]
    assert not line.passed and "COMPLIANCE lock until" in line.detail, line.detail
    with pytest.raises(ErasureFailed, match="COMPLIANCE lock until .* nothing was erased"):
        plan_erasure(store, keyring, seeded, victim)
    with admin_connect(seeded) as conn:
        in_db = read_db_ledger(conn, keyring)
        audit = conn.execute(
            "SELECT count(*) AS n FROM audit_events "
            "WHERE table_name = 'hardening.tenant_key_ledger'"
        ).fetchone()["n"]
    assert in_db is not None and victim in in_db[0].tenants and audit == 0


def test_a_legal_hold_on_a_ledger_version_refuses_the_erasure(
    seeded: str, store: S3Store, keyring: Keyring
) -> None:
    run_backup(seeded, store, keyring)
    victim = tenants_of(seeded)[2]
    plan = plan_erasure(store, keyring, seeded, victim)
    store.client.meta.events.register(
        "before-call.s3.PutObjectLegalHold", _send_content_md5, unique_id="test-legal-hold-md5"
    )
    store.client.put_object_legal_hold(
        Bucket=store.bucket, Key="backups/" + LEDGER_KEY, LegalHold={"Status": "ON"}
    )
    before = ledger_bytes(store)
    with pytest.raises(ErasureFailed, match="legal hold.*nothing was erased.*writeFileLegalHolds"):
        erase_tenant(store, keyring, seeded, plan)
    assert ledger_bytes(store) == before
    versions = store.client.list_object_versions(Bucket=store.bucket, Prefix="backups/tenant-k")
    assert len(versions["Versions"]) == 1  # nothing written, nothing half-deleted


def test_recovery_never_writes_back_a_key_the_audit_log_records_as_erased(
    seeded: str, store: S3Store, keyring: Keyring
) -> None:
    """Both copies rolled back to before an erasure (the store's put back, the database's row
    restored from an old dump), no backup since: the audit log still records the erasure."""
    first = run_backup(seeded, store, keyring).manifest
    before_erasure = ledger_bytes(store)
    victim = tenants_of(seeded)[0]
    erase_tenant(store, keyring, seeded, plan_erasure(store, keyring, seeded, victim))
    store.replace_unlocked(LEDGER_KEY, before_erasure)
    with admin_connect(seeded) as conn:
        conn.execute(
            "UPDATE hardening.tenant_key_ledger SET document = %s, version = 1",
            (before_erasure.decode(),),
        )
        conn.commit()
    recovery = recover_ledger(store, seeded, keyring)
    assert victim not in recovery.ledger.tenants
    assert [e.tenant_id for e in recovery.ledger.erased] == [victim]
    entry = next(o for o in first.objects if o.tenant_id == victim)
    assert ObjectKeys(store, first, keyring).erased(entry) is not None


def test_a_backup_refuses_to_write_on_top_of_copies_rolled_back_past_a_backup(
    seeded: str, store: S3Store, keyring: Keyring
) -> None:
    """Both copies back at a version older than the newest backup's: a backup writing on top
    would give the old ledger (the erased key in it) a version every reader accepts."""
    run_backup(seeded, store, keyring)
    before_erasure = ledger_bytes(store)
    victim = tenants_of(seeded)[0]
    erase_tenant(store, keyring, seeded, plan_erasure(store, keyring, seeded, victim))
    offboard(seeded, victim)
    run_backup(seeded, store, keyring)
    store.replace_unlocked(LEDGER_KEY, before_erasure)
    with admin_connect(seeded) as conn:
        conn.execute(
            "UPDATE hardening.tenant_key_ledger SET document = %s, version = 1",
            (before_erasure.decode(),),
        )
        conn.commit()
    with pytest.raises(LedgerError, match="older than the version .* no backup was written"):
        run_backup(seeded, store, keyring)
    found = read_store_ledger(store, keyring)
    assert found is not None and victim in found[0].tenants  # nothing written on top


def test_a_lock_set_while_the_erasure_runs_is_named_and_nothing_is_erased(
    seeded: str, store: S3Store, keyring: Keyring, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The writer locks a version between the erasure's check and its delete."""
    from hardening_pipeline.backup import erasure

    run_backup(seeded, store, keyring)
    victim = tenants_of(seeded)[1]
    plan = plan_erasure(store, keyring, seeded, victim)
    checked = erasure.version_holds
    calls = []

    def lock_after_the_check(store_: S3Store, key: str):
        calls.append(key)
        if len(calls) == 1:
            found = checked(store_, key)
            lock_oldest_ledger_version(store_)
            return found
        return checked(store_, key)

    monkeypatch.setattr(erasure, "version_holds", lock_after_the_check)
    with pytest.raises(ErasureFailed, match="COMPLIANCE lock until .* nothing was erased"):
        erase_tenant(store, keyring, seeded, plan)
    found = read_store_ledger(store, keyring)
    assert found is not None and victim in found[0].tenants
