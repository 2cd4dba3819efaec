"""After ``erase-tenant`` nothing the kit keeps lets anyone confirm a guess of the tenant's rows.

The manifest outlives the tenant's key (it is signed, readable with the master key and kept as
long as the locked backup). A plain SHA-256 of a tenant's table in it would let whoever holds it
test a guess of the erased rows: a tenant's ``tenants`` part is one row (id, name, ...) that is
easy to guess. So a tenant's digests are keyed by its own key and die with it, while every other
tenant still verifies and restores, and backups written before (plain digests) stay readable.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import replace

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from hardening_pipeline.backup.crypto import BackupIntegrityError, Keyring
from hardening_pipeline.backup.erasure import erase_tenant, plan_erasure
from hardening_pipeline.backup.export import TableStream, discover_layout, open_snapshot
from hardening_pipeline.backup.manifest import MANIFEST_NAME, Manifest
from hardening_pipeline.backup.manifest_signing import load_manifest, sign_manifest
from hardening_pipeline.backup.nightly import run_backup
from hardening_pipeline.backup.object_format import ObjectDecoder
from hardening_pipeline.backup.store import S3Store
from hardening_pipeline.backup.tenant_key_use import ObjectKeys
from hardening_pipeline.db.connection import connect
from hardening_pipeline.db.migrations import apply_migrations
from hardening_pipeline.restore.drill import run_restore_drill
from hardening_pipeline.restore.tenant import restore_tenant
from tests import test_tenant_keys
from tests.support.old_formats import rewrite_as_format_1, with_plain_digests, written_once
from tests.test_tenant_keys import every_stored_byte, tenants_of

# The tenant key tests' fixtures: a seeded database, a COMPLIANCE-locked S3 store, a key.
seeded, store, keyring = test_tenant_keys.seeded, test_tenant_keys.store, test_tenant_keys.keyring

# docs/backup-format.md section 9, written out here rather than imported.
DIGEST_INFO = b"hardening-pipeline backup v2 tenant-digest-key"


def old_format_digests(url: str, tenant: str) -> dict[str, str]:
    """What a format 1 manifest recorded for the tenant: plain SHA-256 of each table's COPY
    text and of the whole object's plaintext, computed here with hashlib."""
    digests, whole = {}, hashlib.sha256()
    with connect(url) as conn:
        open_snapshot(conn)
        for table in discover_layout(conn).tenant_tables:
            part = b"".join(TableStream(conn, [table], tenant))
            digests[table.qualified] = hashlib.sha256(part).hexdigest()
            whole.update(part)
        conn.rollback()
    digests["(object plaintext)"] = whole.hexdigest()
    return digests


def shared_plaintexts(store: S3Store, manifest: Manifest, keyring: Keyring) -> list[bytes]:
    """The decrypted shared and schema objects: what anyone with the master key can read."""
    keys = ObjectKeys(store, manifest, keyring)
    return [
        b"".join(
            ObjectDecoder(
                store.get(manifest.folder("") + entry.name),
                keys.shared,
                backup_id=manifest.backup_id,
                object_name=entry.name,
            )
        )
        for entry in manifest.stored_objects
        if getattr(entry, "tenant_id", None) is None
    ]


def test_after_erasure_no_digest_of_the_tenant_is_left_and_the_others_still_restore(
    seeded: str,
    store: S3Store,
    keyring: Keyring,
    s3_server,
    s3_locked_bucket: str,
    empty_db_url: str,
) -> None:
    victim, other = tenants_of(seeded)[:2]
    guessable = old_format_digests(seeded, victim)
    assert len(guessable) > 2
    backup = run_backup(seeded, store, keyring).manifest
    erase_tenant(store, keyring, seeded, plan_erasure(store, keyring, seeded, victim))

    # Every version of every object in the bucket (manifest, ledger, every object as stored),
    # and the shared and schema objects decrypted with the master key.
    everything = [every_stored_byte(s3_server, s3_locked_bucket)]
    everything += shared_plaintexts(store, backup, keyring)
    for name, digest in guessable.items():
        for blob in everything:
            assert digest.encode() not in blob, f"{name}'s old digest outlived the erasure"
            assert bytes.fromhex(digest) not in blob, f"{name}'s old digest outlived the erasure"
    # The manifest still verifies, and still holds a digest per table: just not a usable one.
    raw = b"".join(store.get(backup.folder("") + MANIFEST_NAME))
    victim_entry = next(o for o in load_manifest(raw, keyring).objects if o.tenant_id == victim)
    assert len(victim_entry.tables) == len(guessable) - 1

    # Every other tenant verifies (keyed digests checked on load and after the restore) and
    # restores, in the drill and alone.
    result = run_restore_drill(store, keyring)
    assert result.passed, (result.failure, result.invariants)
    compared = next(i for i in result.invariants if i.name.startswith("row counts and digests"))
    assert compared.passed and "tables compared" in compared.detail
    apply_migrations(empty_db_url)
    assert restore_tenant(store, keyring, tenant_id=other, target_url=empty_db_url).inserted > 0


def test_a_tenant_digest_is_the_hmac_under_its_own_key_and_a_plain_one_is_refused(
    seeded: str,
    store: S3Store,
    keyring: Keyring,
    empty_db_url: str,
) -> None:
    tenant = tenants_of(seeded)[0]
    manifest = run_backup(seeded, store, keyring).manifest
    entry = next(o for o in manifest.objects if o.tenant_id == tenant)
    tenant_key = ObjectKeys(store, manifest, keyring).for_object(entry)
    digest_key = HKDF(hashes.SHA256(), 32, None, DIGEST_INFO).derive(tenant_key)
    plaintext = b"".join(
        ObjectDecoder(
            store.get(manifest.folder("") + entry.name),
            tenant_key,
            backup_id=manifest.backup_id,
            object_name=entry.name,
        )
    )
    assert entry.plaintext_sha256 == hmac.new(digest_key, plaintext, "sha256").hexdigest()
    offset = 0
    for table in entry.tables:
        part = plaintext[offset : offset + table.bytes]
        offset += table.bytes
        assert table.sha256 == hmac.new(digest_key, part, "sha256").hexdigest()

    # A format 2 manifest carrying plain digests (re-signed with the master key) is refused:
    # the reader checks keyed digests, it does not accept either kind.
    plain = with_plain_digests(entry, plaintext)
    forged = replace(manifest, objects=tuple(plain if o is entry else o for o in manifest.objects))
    store.put(manifest.folder("") + MANIFEST_NAME, [sign_manifest(forged, keyring)])
    written_once(store, manifest.folder("") + MANIFEST_NAME)  # the digests are what is refused
    apply_migrations(empty_db_url)
    with pytest.raises(BackupIntegrityError, match="recorded SHA-256"):
        restore_tenant(store, keyring, tenant_id=tenant, target_url=empty_db_url)


def test_a_backup_written_before_keyed_digests_still_verifies_and_restores(
    seeded: str,
    store: S3Store,
    keyring: Keyring,
    empty_db_url: str,
) -> None:
    """Format 1: tenant objects under tenant keys, every digest plain SHA-256."""
    result = run_backup(seeded, store, keyring)
    old = rewrite_as_format_1(store, result.manifest, keyring)
    raw = b"".join(store.get(old.folder("") + MANIFEST_NAME))
    assert load_manifest(raw, keyring).format_version == 1
    tenant = tenants_of(seeded)[0]
    assert old_format_digests(seeded, tenant)["(object plaintext)"] in raw.decode()
    apply_migrations(empty_db_url)
    assert restore_tenant(store, keyring, tenant_id=tenant, target_url=empty_db_url).inserted > 0
    drill = run_restore_drill(store, keyring, run_tests=False)
    assert drill.rows_restored == result.rows
    assert all(i.passed for i in drill.invariants), drill.invariants
    # Its manifest cannot be changed (locked): erasing the tenant says what stays behind.
    newer = run_backup(seeded, store, keyring).manifest
    plan = plan_erasure(store, keyring, seeded, tenant)
    assert set(plan.backups) == {old.backup_id, newer.backup_id}
    assert plan.plain_digests == (old.backup_id,)
    assert "1 of them, written before digests were keyed" in plan.confirmation()
    certificate = erase_tenant(store, keyring, seeded, plan).markdown()
    assert "keep plain SHA-256 digests of the tenant's tables" in certificate
    assert f"  - {old.backup_id}\n" in certificate.split("keep plain")[1]
