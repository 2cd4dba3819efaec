"""What the store holds: verified backups, incomplete ones, and ones that cannot be trusted.

A backup exists only when its folder holds a ``manifest.json`` whose MAC verifies under one of
the configured keys and whose id and date match the folder. Folders without a manifest are
incomplete (a run that died, or one still running); folders whose manifest fails verification
are *invalid*, which callers treat as "do not touch, tell a human". So are folders whose
manifest was written over, or hidden by a delete marker, after the backup wrote it: the kit
writes each manifest once, and a versioned bucket keeps the history that shows otherwise.

Two kinds of failure get a sentence of their own, because each has one fix. A manifest dated
more than ``MAX_CLOCK_SKEW`` ahead (a backup from a machine with a fast clock) says how far ahead
it is and what to do. A store where manifests exist but every one of them names a master key that
is not configured is a wrong key, a configuration error (``WrongKeyError``), not corruption; a
store where some verify and one does not stays a red failure.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from hardening_pipeline.alerts.runbook import runbook_link
from hardening_pipeline.backup.crypto import Keyring, UnknownKeyError
from hardening_pipeline.backup.manifest import (
    MANIFEST_NAME,
    MAX_CLOCK_SKEW,
    MAX_MANIFEST_BYTES,
    Manifest,
    ManifestError,
)
from hardening_pipeline.backup.manifest_signing import load_manifest
from hardening_pipeline.backup.store import BackupStore, StoredObject
from hardening_pipeline.errors import ConfigError, HardeningError
from hardening_pipeline.settings import ENV_ENCRYPTION_KEY, ENV_ENCRYPTION_KEYS_PREVIOUS

# The id part follows validate_name (no leading dot, no ".."): a folder named "." or ".." can
# exist in a bucket, but reading or deleting under it is refused as an unsafe key, so treating
# it as a backup would make one stray object fail every listing, drill and retention run.
_FOLDER = re.compile(r"^(\d{4})/(\d{2})/(\d{2})/((?![^/]*\.\.)[A-Za-z0-9][A-Za-z0-9._-]{0,127})/")

FUTURE_RUNBOOK_ANCHOR = "backup-dated-in-the-future"
# Handed to load_manifest as "now" so that its own clock check cannot fire here: the catalog
# checks the date itself, against the real clock, to say how far ahead a backup is.
_PAST_EVERY_MANIFEST = datetime.max.replace(tzinfo=UTC) - timedelta(days=366)


@dataclass
class StoredBackup:
    """One backup folder in the store and what is known about it."""

    backup_id: str
    folder: str
    objects: list[StoredObject] = field(default_factory=list)
    manifest: Manifest | None = None
    problem: str | None = None
    # Set when the manifest names a master key id that is none of the configured keys.
    unknown_key_id: str | None = None

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


def _time(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _how_long(span: timedelta) -> str:
    """``2 days 5 h``, ``3 h 10 min``, ``17 min``: the two largest units, rounded down."""
    total = int(span.total_seconds())
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    units = [
        (days, "day" if days == 1 else "days"),
        (hours, "h"),
        (rest // 60, "min"),
    ]
    while len(units) > 1 and units[0][0] == 0:
        units.pop(0)
    shown = [f"{n} {unit}" for n, unit in units[:2] if n]
    return " ".join(shown) or "less than a minute"


def future_problem(backup: StoredBackup, created_at: datetime, now: datetime) -> str:
    """One sentence: how far ahead the backup is dated, and the two ways out."""
    return (
        f"its manifest is dated {_time(created_at)}, {_how_long(created_at - now)} in the future "
        f"by this machine's clock; check the clock of the machine that wrote it, then move or "
        f"delete this one backup's folder <prefix>/{backup.folder} by hand "
        f"({runbook_link(FUTURE_RUNBOOK_ANCHOR)}), or wait until "
        f"{_time(created_at - MAX_CLOCK_SKEW)}, when it verifies again"
    )


def _claimed_key_id(raw: bytes) -> str:
    """The key id a manifest names (load_manifest checked its form before looking it up)."""
    try:
        key_id = json.loads(raw).get("key_id")
    except (ValueError, AttributeError, RecursionError):
        return "?"
    return key_id if isinstance(key_id, str) else "?"


def _verify(store: BackupStore, backup: StoredBackup, keyring: Keyring, now: datetime) -> None:
    raw = b""
    try:
        raw = read_manifest_bytes(store, backup.folder + MANIFEST_NAME)
        manifest = load_manifest(raw, keyring, now=_PAST_EVERY_MANIFEST)
    except UnknownKeyError as exc:
        backup.problem = str(exc)
        backup.unknown_key_id = _claimed_key_id(raw)
        return
    except (ManifestError, ConfigError) as exc:
        backup.problem = str(exc)
        return
    if manifest.created_at > now + MAX_CLOCK_SKEW:
        backup.problem = future_problem(backup, manifest.created_at, now)
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
    backup.problem = _history_problem(store, backup)
    if backup.problem is None:
        backup.manifest = manifest


def _history_problem(store: BackupStore, backup: StoredBackup) -> str | None:
    """Whether the manifest's key was written over or hidden after the backup wrote it once.

    An overwrite may even verify (an older manifest put back on top); only the bucket's history
    shows it. The original copied back on top (the runbook's fix) has the original's bytes
    again, so its ETag matches: that backup is trusted again.
    """
    etags = store.version_etags(backup.folder + MANIFEST_NAME)
    if etags is None:
        return None
    written = [e for e in etags if e is not None]
    if backup.has_manifest_object and written and written[0] != written[-1]:
        return (
            f"its manifest was written over after the backup wrote it ({len(etags)} versions of "
            "it in the store; the newest differs from the oldest, the original)"
        )
    if not backup.has_manifest_object and etags:
        return (
            "its manifest was deleted without a version id after the backup wrote it (a delete "
            "marker hides it); the oldest version under the marker is the original"
        )
    return None


def list_backups(
    store: BackupStore, keyring: Keyring, *, now: datetime | None = None
) -> BackupCatalog:
    """List and verify every backup folder; raises if the store cannot be listed completely.

    Verification here is the manifest's MAC plus the presence and size of each object; the
    objects' SHA-256 is checked by whoever downloads them (the restore drill). Raises
    ``WrongKeyError`` when manifests exist and every one names a key that is not configured.
    """
    now = now or datetime.now(UTC)
    folders, foreign = _group(store.list(""))
    with_manifest = [b for b in folders.values() if b.has_manifest_object]
    for backup in with_manifest:
        _verify(store, backup, keyring, now)
    for backup in folders.values():
        if not backup.has_manifest_object:
            backup.problem = _history_problem(store, backup)
    if with_manifest and all(b.unknown_key_id is not None for b in with_manifest):
        raise WrongKeyError(_wrong_key_sentence(with_manifest, keyring))
    valid = sorted((b for b in folders.values() if b.state == "valid"), key=lambda b: b.created_at)
    incomplete = sorted(
        (b for b in folders.values() if b.state == "incomplete"), key=lambda b: b.folder
    )
    invalid = sorted((b for b in folders.values() if b.state == "invalid"), key=lambda b: b.folder)
    return BackupCatalog(valid, incomplete, invalid, foreign)


def newest_manifest(store: BackupStore, keyring: Keyring) -> Manifest | None:
    """The newest backup's verified manifest, reading as few manifests as it takes.

    Folders sort by their backup id's second; backups of the same second are all read, as the
    id's random tail says nothing of their order.
    """
    now = datetime.now(UTC)
    folders, _ = _group(store.list(""))
    by_second: dict[str, list[StoredBackup]] = {}
    for backup in folders.values():
        if backup.has_manifest_object:
            by_second.setdefault(backup.folder.rsplit("-", 1)[0], []).append(backup)
    for second in sorted(by_second, reverse=True):
        for backup in by_second[second]:
            _verify(store, backup, keyring, now)
        found = [b.manifest for b in by_second[second] if b.manifest is not None]
        if found:
            return max(found, key=lambda m: m.created_at)
    return None


UNTRUSTED_RUNBOOK_ANCHOR = "backup-manifest-untrusted"
UNTRUSTED_FIX = (
    "find out who wrote the manifest and restore the original from the bucket's version history "
    f"({runbook_link(UNTRUSTED_RUNBOOK_ANCHOR)}); retention deletes nothing meanwhile."
)


def untrusted_backups(catalog: BackupCatalog) -> str | None:
    """A clause naming the backups whose manifest cannot be read or was written over, if any.

    Checks over the retained backups say this rather than skip them: nobody knows what such a
    backup holds (its locks, its tenant keys) until a human has looked.
    """
    if not catalog.invalid:
        return None
    first = catalog.invalid[0]
    return (
        f"{len(catalog.invalid)} backup(s) cannot be checked because their manifest cannot be "
        f"trusted; {first.backup_id}: {(first.problem or '').rstrip('.')}"
    )


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


class WrongKeyError(ConfigError, NoBackupError):
    """No manifest in the store verifies because every one names a key that is not configured.

    A ``ConfigError`` (exit 2): the fix is the key setting, and discarding or "repairing" the
    backups would be the wrong reaction. Also a ``NoBackupError``, so a caller that reports "no
    usable backup" as a red result (the restore drill) still reports it, with this sentence.
    """


def _wrong_key_sentence(backups: list[StoredBackup], keyring: Keyring) -> str:
    written_with = sorted({b.unknown_key_id or "?" for b in backups})
    return (
        f"the backups in the store were all written with master key id "
        f"{' or '.join(written_with)}, which is none of the configured keys "
        f"({', '.join(keyring.key_ids)}), so {len(backups)} failed verification and none can be "
        f"read; set {ENV_ENCRYPTION_KEY} to the key the backups were written with (or add it to "
        f"{ENV_ENCRYPTION_KEYS_PREVIOUS})."
    )
