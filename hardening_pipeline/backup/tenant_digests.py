"""Digests of a tenant's rows that only the tenant's own key can check.

A manifest outlives the tenant keys it names: after ``hardening erase-tenant`` it is still
signed, readable with the master key and kept for as long as the Object-Locked backup. A plain
SHA-256 of a tenant's table would then let anyone holding the manifest confirm a guess of the
erased rows (a one-row table with a known email is easy to guess). From manifest format 2 on,
every digest of a tenant object under a tenant key (its tables' ``sha256`` and its
``plaintext_sha256``) is an HMAC-SHA256 under a key derived from the tenant key, so destroying
that key leaves digests nobody can compute again. ``docs/backup-format.md`` section 9.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import TYPE_CHECKING, Protocol

from hardening_pipeline.backup.crypto import derive_subkey

if TYPE_CHECKING:
    from hardening_pipeline.backup.manifest import AppSchemaEntry, Manifest, ObjectEntry

# HKDF "info" label of the digest key; part of the on-disk format like the others in crypto.py.
INFO_TENANT_DIGEST_KEY = b"hardening-pipeline backup v2 tenant-digest-key"
# The first manifest format whose tenant-key objects carry keyed digests.
KEYED_DIGESTS_SINCE = 2


class Digest(Protocol):
    def update(self, data: bytes | memoryview, /) -> None: ...

    def hexdigest(self) -> str: ...


def tenant_digest_key(tenant_key: bytes | None) -> bytes | None:
    """The key of a tenant object's digests, None for an object under the backup's own key."""
    return None if tenant_key is None else derive_subkey(tenant_key, INFO_TENANT_DIGEST_KEY)


def new_digest(digest_key: bytes | None) -> Digest:
    """HMAC-SHA256 under ``digest_key``, or plain SHA-256 where nothing needs to be forgotten."""
    if digest_key is None:
        return hashlib.sha256()
    return hmac.new(digest_key, digestmod=hashlib.sha256)


def hexdigest(digest_key: bytes | None, data: bytes) -> str:
    """The digest of ``data`` as the manifest records it (keyed when ``digest_key`` is set)."""
    digest = new_digest(digest_key)
    digest.update(data)
    return digest.hexdigest()


def part_digest_key(
    manifest: Manifest, entry: ObjectEntry | AppSchemaEntry, object_key: bytes
) -> bytes | None:
    """The digest key a reader checks ``entry``'s digests with (``object_key`` opens it).

    Manifests written before format 2 hold plain SHA-256 digests, and so does every object
    not under a tenant key (the shared object, tenant objects of older backups).
    """
    # The schema object has no tenant_key_id: it is never a tenant's.
    if manifest.format_version < KEYED_DIGESTS_SINCE or not getattr(entry, "tenant_key_id", None):
        return None
    return tenant_digest_key(object_key)


__all__ = [
    "INFO_TENANT_DIGEST_KEY",
    "KEYED_DIGESTS_SINCE",
    "Digest",
    "hexdigest",
    "new_digest",
    "part_digest_key",
    "tenant_digest_key",
]
