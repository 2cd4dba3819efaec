"""What the store holds: verified backups, incomplete ones, and ones that cannot be trusted.

A backup exists only when its folder holds a ``manifest.json`` whose MAC verifies under one of
the configured keys and whose id and date match the folder. Folders without a manifest are
incomplete (a run that died, or one still running); folders whose manifest fails verification
are *invalid*, which callers treat as "do not touch, tell a human".
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

from hardening_pipeline.backup.crypto import Keyring
from hardening_pipeline.backup.manifest import (
    MANIFEST_NAME,
    MAX_MANIFEST_BYTES,
    Manifest,
    ManifestError,
    load_manifest,
)
from hardening_pipeline.backup.store import BackupStore, StoredObject
from hardening_pipeline.errors import ConfigError, HardeningError

# The id part follows validate_name (no leading dot, no ".."): a folder named "." or ".." can
# exist in a bucket, but reading or deleting under it is refused as an unsafe key, so treating
# it as a backup would make one stray object fail every listing, drill and retention run.
_FOLDER = re.compile(r"^(\d{4})/(\d{2})/(\d{2})/((?![^/]*\.\.)[A-Za-z0-9][A-Za-z0-9._-]{0,127})/")


@dataclass
class StoredBackup:
    """One backup folder in the store and what is known about it."""

    backup_id: str
    folder: str
    objects: list[StoredObject] = field(default_factory=list)
    manifest: Manifest | None = None
    problem: str | None = None

    @property
    def state(self) -> str:
        if self.manifest is not None:
            return "valid"
        return "invalid" if self.problem else "incomplete"

    @property
    def has_manifest_object(self) -> bool:
        return any(o.key == self.folder + MANIFEST_NAME for o in self.objects)

    @property
    def last_modified(self) -> datetime | None:
        return max((o.last_modified for o in self.objects), default=None)

    @property
    def created_at(self) -> datetime:
        if self.manifest is None:
            raise ValueError(f"backup {self.backup_id} has no verified manifest")
        return self.manifest.created_at


@dataclass
class BackupCatalog:
    """Every backup folder found, sorted oldest first within each state."""

    valid: list[StoredBackup]
    incomplete: list[StoredBackup]
    invalid: list[StoredBackup]
    foreign_keys: list[str]

    @property
    def newest(self) -> StoredBackup | None:
        return self.valid[-1] if self.valid else None


def read_manifest_bytes(store: BackupStore, key: str) -> bytes:
    """Read a manifest object, refusing absurd sizes before they are held in memory."""
    data = bytearray()
    for chunk in store.get(key):
        data += chunk
        if len(data) > MAX_MANIFEST_BYTES:
            raise ManifestError(f"{key} is larger than {MAX_MANIFEST_BYTES} bytes; not a manifest")
    return bytes(data)


def _group(objects: Iterable[StoredObject]) -> tuple[dict[str, StoredBackup], list[str]]:
    folders: dict[str, StoredBackup] = {}
    foreign: list[str] = []
    for obj in objects:
        match = _FOLDER.match(obj.key)
        if not match:
            foreign.append(obj.key)
            continue
        folder = match.group(0)
        entry = folders.setdefault(folder, StoredBackup(backup_id=match.group(4), folder=folder))
        entry.objects.append(obj)
    return folders, foreign


def _verify(
    store: BackupStore, backup: StoredBackup, keyring: Keyring, now: datetime | None
) -> None:
    try:
        manifest = load_manifest(
            read_manifest_bytes(store, backup.folder + MANIFEST_NAME), keyring, now=now
        )
    except (ManifestError, ConfigError) as exc:
        backup.problem = str(exc)
        return
    expected_folder = manifest.folder("")
    if manifest.backup_id != backup.backup_id or expected_folder != backup.folder:
        backup.problem = (
            f"manifest names backup {manifest.backup_id} ({expected_folder}) but sits in "
            f"{backup.folder}; it was moved or copied"
        )
        return
    stored = {o.key: o for o in backup.objects}
    for entry in manifest.stored_objects:
        found = stored.get(backup.folder + entry.name)
        if found is None:
            backup.problem = f"object {entry.name} listed in the manifest is missing"
            return
        if found.size != entry.ciphertext_bytes:
            backup.problem = (
                f"object {entry.name} is {found.size} bytes, the manifest says "
                f"{entry.ciphertext_bytes}"
            )
            return
    backup.manifest = manifest


def list_backups(
    store: BackupStore, keyring: Keyring, *, now: datetime | None = None
) -> BackupCatalog:
    """List and verify every backup folder; raises if the store cannot be listed completely.

    Verification here is the manifest's MAC plus the presence and size of each object; the
    objects' SHA-256 is checked by whoever downloads them (the restore drill).
    """
    folders, foreign = _group(store.list(""))
    for backup in folders.values():
        if backup.has_manifest_object:
            _verify(store, backup, keyring, now)
    valid = sorted((b for b in folders.values() if b.state == "valid"), key=lambda b: b.created_at)
    incomplete = sorted(
        (b for b in folders.values() if b.state == "incomplete"), key=lambda b: b.folder
    )
    invalid = sorted((b for b in folders.values() if b.state == "invalid"), key=lambda b: b.folder)
    return BackupCatalog(valid, incomplete, invalid, foreign)


def find_backup(
    catalog: BackupCatalog, backup_id: str | None, *, newest_must_be_valid: bool = False
) -> StoredBackup:
    """The named backup, or the newest valid one; a clear error when there is none.

    With ``newest_must_be_valid`` (the restore drill) a newest backup that fails verification is
    an error in itself: quietly drilling an older one would hide that last night's is broken.
    """
    if backup_id is None:
        newest_any = max((*catalog.valid, *catalog.invalid), key=lambda b: b.folder, default=None)
        if newest_must_be_valid and newest_any is not None and newest_any.state == "invalid":
            raise NoBackupError(
                f"the newest backup {newest_any.backup_id} cannot be trusted: "
                f"{(newest_any.problem or '').rstrip('.')}."
            )
        if catalog.newest is None:
            raise NoBackupError(
                "the backup store holds no backup with a valid manifest; run `hardening backup` "
                "first (or check BACKUP_STORE_URL and the encryption keys)."
            )
        return catalog.newest
    for backup in catalog.valid:
        if backup.backup_id == backup_id:
            return backup
    for backup in catalog.invalid:
        if backup.backup_id == backup_id:
            problem = (backup.problem or "").rstrip(".")
            raise NoBackupError(f"backup {backup_id} cannot be trusted: {problem}.")
    raise NoBackupError(
        f"no backup with id {backup_id} and a valid manifest is in the store; list them with "
        "`hardening retention --dry-run`."
    )


class NoBackupError(HardeningError):
    """There is no verified backup to work with."""
