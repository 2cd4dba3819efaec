"""Turn a backup written today into one as an older version of the kit wrote it.

Manifest format 1 recorded plain SHA-256 digests of every table and object, tenant objects
under tenant keys included; before per-tenant keys, tenant objects were also under the backup's
shared data key. Retained backups of both kinds must stay readable.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace

from hardening_pipeline.backup.crypto import Keyring
from hardening_pipeline.backup.manifest import MANIFEST_NAME, Manifest, ObjectEntry
from hardening_pipeline.backup.manifest_signing import sign_manifest
from hardening_pipeline.backup.object_format import ObjectDecoder, ObjectEncoder
from hardening_pipeline.backup.store import BackupStore
from hardening_pipeline.backup.tenant_key_use import ObjectKeys


def with_plain_digests(entry: ObjectEntry, plaintext: bytes) -> ObjectEntry:
    """``entry`` with the digests format 1 recorded: SHA-256 of each table part and the whole."""
    tables, offset = [], 0
    for table in entry.tables:
        part = plaintext[offset : offset + table.bytes]
        offset += table.bytes
        tables.append(replace(table, sha256=hashlib.sha256(part).hexdigest()))
    return replace(
        entry, tables=tuple(tables), plaintext_sha256=hashlib.sha256(plaintext).hexdigest()
    )


def rewrite_as_format_1(
    store: BackupStore, manifest: Manifest, keyring: Keyring, *, one_shared_key: bool = False
) -> Manifest:
    """Re-sign ``manifest`` as format 1; with ``one_shared_key`` re-encrypt every tenant object
    under the backup's shared key, as before per-tenant keys (no ``tenant_key_id``)."""
    keys = ObjectKeys(store, manifest, keyring)
    folder = manifest.folder("")
    entries = []
    for entry in manifest.objects:
        if entry.tenant_key_id is None:
            entries.append(entry)
            continue
        plain = b"".join(
            ObjectDecoder(
                store.get(folder + entry.name),
                keys.for_object(entry),
                backup_id=manifest.backup_id,
                object_name=entry.name,
            )
        )
        entry = with_plain_digests(entry, plain)
        if one_shared_key:
            encoder = ObjectEncoder(
                [plain], keys.shared, backup_id=manifest.backup_id, object_name=entry.name
            )
            store.put(folder + entry.name, encoder)
            stats = encoder.stats
            entry = replace(
                entry,
                tenant_key_id=None,
                compressed_bytes=stats.compressed_bytes,
                ciphertext_bytes=stats.ciphertext_bytes,
                sha256=stats.ciphertext_sha256,
            )
        entries.append(entry)
    old = replace(manifest, format_version=1, objects=tuple(entries))
    store.put(folder + MANIFEST_NAME, [sign_manifest(old, keyring)])
    written_once(store, folder + MANIFEST_NAME)
    return old


def written_once(store: BackupStore, key: str) -> None:
    """Leave only the newest version of ``key``, as if it had been written once.

    The backup an earlier release wrote had one manifest; rewriting one here makes a second
    version in a versioned bucket, which the catalog rightly calls written over. The test
    server is moto in this process, so the original version is dropped in its backend (no S3
    call may delete a locked version, which is the point of the lock).
    """
    bucket_name = getattr(store, "bucket", None)
    if bucket_name is None:  # a folder keeps no versions
        return
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.s3.models import s3_backends

    keys = s3_backends[DEFAULT_ACCOUNT_ID]["aws"].get_bucket(bucket_name).keys
    full = store.prefix + key  # type: ignore[attr-defined]
    versions = keys.getlist(full)
    super(type(keys), keys).__setitem__(full, versions[-1:])
