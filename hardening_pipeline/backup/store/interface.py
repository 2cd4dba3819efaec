"""The store interface: what every backup store promises, and the key rules they all share.

Everything above the store speaks ``BackupStore``: keys relative to the store's root or prefix,
bytes streamed in and out, and a small set of guarantees the backup and retention code rely on:

* ``put`` never leaves a partial object visible under the key. A half-written backup that looks
  complete is worse than none, because a restore would find it.
* ``list`` is complete or raises. Retention deletes whatever it does not see as worth keeping, so
  a silently truncated listing could make it delete the wrong things or miss debris.
* ``delete`` really frees the bytes. B2 buckets are versioned: a delete without a VersionId only
  hides the object and the storage bill keeps growing, so every version is deleted by id.

Failures surface as ``StoreError`` with one sentence saying what failed, where, and what to check.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta

from hardening_pipeline.errors import ConfigError, HardeningError

MIB = 1024 * 1024
# S3 (and B2) refuse parts under 5 MiB except the last one.
MIN_PART_SIZE = 5 * MIB
DEFAULT_PART_SIZE = 16 * MIB
# S3 allows at most 10,000 parts; with 16 MiB parts that caps one object at ~156 GiB.
MAX_PARTS = 10_000
READ_CHUNK_SIZE = 1 * MIB

# Temporary files of FileStore.put; listing skips them and keys may not look like them.
TEMP_PREFIX = ".tmp-"


class StoreError(HardeningError):
    """Reading, writing, listing or deleting in the backup store failed."""


class StoreAccessError(StoreError, ConfigError):
    """The store refused us for a configuration reason: credentials, bucket name, permissions.

    It is also a ``ConfigError`` so the CLI exits 2 (fix the configuration) rather than 1.
    """


class ObjectLockedError(StoreError):
    """The store refused to delete a version because its Object Lock has not expired yet.

    Retention treats this as a reason to keep the backup, never as a failure.
    """


class ObjectNotFoundError(StoreError):
    """The key does not exist in the store."""


class InvalidKeyError(StoreError, ValueError):
    """A key that could escape the store or that the store cannot represent faithfully.

    Keys can come from a manifest read back from the store, so a bad key is treated as hostile
    input (a ``StoreError``) as well as a programming error (a ``ValueError``).
    """


@dataclass(frozen=True)
class StoredObject:
    """One object in a listing; ``key`` is relative to the store's root or prefix."""

    key: str
    size: int
    last_modified: datetime


LOCK_MODES = ("compliance", "governance")


@dataclass(frozen=True)
class ObjectLock:
    """How a store locks what it writes: S3 Object Lock ``mode`` for ``horizon`` from now.

    COMPLIANCE locks can be extended but never shortened or removed, by any key; GOVERNANCE
    locks can be lifted by a key holding B2's ``bypassGovernance`` capability.
    """

    mode: str
    horizon: timedelta

    def __post_init__(self) -> None:
        if self.mode not in LOCK_MODES:
            raise ValueError(f"lock mode must be one of {LOCK_MODES}, got {self.mode!r}")
        if self.horizon <= timedelta(0):
            raise ValueError("a lock horizon must be positive")

    @property
    def s3_mode(self) -> str:
        return self.mode.upper()


@dataclass(frozen=True)
class IncompleteUpload:
    """A multipart upload that was started and neither completed nor aborted."""

    key: str
    upload_id: str
    initiated: datetime


def check_key(key: str) -> str:
    """Return ``key`` if it is a safe relative '/'-separated key, else raise ``InvalidKeyError``.

    The same rules apply to every store so that code tested against a folder behaves the same
    against a bucket: no absolute keys, no '.' or '..' segments, no empty segments, no
    backslashes or NUL bytes.
    """
    if not isinstance(key, str) or not key:
        raise InvalidKeyError(f"a store key must be a non-empty string, got {key!r}")
    if "\\" in key or "\x00" in key:
        raise InvalidKeyError(f"store key {key!r} contains a backslash or NUL byte")
    if key.startswith("/"):
        raise InvalidKeyError(f"store key {key!r} must be relative, not absolute")
    for part in key.split("/"):
        if part in ("", ".", ".."):
            raise InvalidKeyError(f"store key {key!r} has an empty, '.' or '..' segment")
        if part.startswith(TEMP_PREFIX):
            raise InvalidKeyError(f"store key {key!r} uses the reserved {TEMP_PREFIX!r} prefix")
    return key


def check_prefix(prefix: str) -> str:
    """A listing prefix may be '' or end mid-segment ('2026/11/2'), but may not escape."""
    if prefix == "":
        return prefix
    check_key(prefix.rstrip("/") or "/")
    return prefix


class BackupStore(ABC):
    """A flat namespace of byte objects under '/'-separated keys."""

    @abstractmethod
    def put(self, key: str, chunks: Iterable[bytes]) -> int:
        """Stream ``chunks`` into ``key`` and return the number of bytes written.

        Either the whole object appears under ``key`` or nothing new does, including when
        ``chunks`` itself raises part-way (for example when encryption fails).
        """

    @abstractmethod
    def get(self, key: str) -> Iterator[bytes]:
        """Stream the object's bytes; raises ``ObjectNotFoundError`` at call time if missing."""

    @abstractmethod
    def list(self, prefix: str = "") -> list[StoredObject]:
        """Every object whose key starts with ``prefix``, sorted by key; complete or raises."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove the object and every stored version of it; a missing key is not an error."""

    @abstractmethod
    def delete_prefix(self, prefix: str) -> int:
        """Remove every object (and version) under a non-empty ``prefix``; returns how many.

        Used by retention to drop a whole backup folder, including versions no longer visible
        in ``list`` (overwritten or hidden objects still cost storage on B2).
        """

    @abstractmethod
    def exists(self, key: str) -> bool:
        """Whether ``key`` currently holds an object."""

    @abstractmethod
    def abort_stale_uploads(self, older_than: timedelta, *, now: datetime | None = None) -> int:
        """Clean up uploads a crashed writer left behind; returns how many were removed."""

    @abstractmethod
    def describe(self) -> str:
        """Where the store is, for humans (logs, reports); never contains a secret."""

    def replace_unlocked(self, key: str, data: bytes, *, forget_older: bool = False) -> int:
        """Write ``data`` to ``key`` without a lock, even in a store that locks every object.

        For the few objects that must stay erasable (the tenant key ledger). With
        ``forget_older``, every older stored version of ``key`` is removed afterwards, so no
        earlier copy survives in the store's version history (that needs a key allowed to
        delete). A folder has no versions: an atomic replace is all of it.
        """
        return self.put(key, [data])

    def version_etags(self, key: str) -> list[str | None] | None:
        """The ETag of every stored version of exactly ``key``, newest first, and None for each
        delete marker; None for a store that keeps no history (a folder).

        The kit writes a manifest once: a newest version whose bytes differ from the first
        one's, or a version under a key that lists as absent, was someone else's doing.
        """
        return None

    # -- Object Lock: only buckets lock; a folder keeps these defaults --

    @property
    def object_lock(self) -> ObjectLock | None:
        """How this store locks new objects, or None when it does not lock."""
        return None

    def lock_enabled(self) -> bool:
        """Whether the store itself can hold locks (a bucket created with Object Lock)."""
        return False

    def locked_until(self, key: str) -> datetime | None:
        """The retain-until date of the current version of ``key``, None when unlocked."""
        return None

    def extend_lock(self, prefix: str, until: datetime, *, last_key: str | None = None) -> int:
        """Lock every version under ``prefix`` until at least ``until`` (never shorter).

        ``last_key`` is extended after everything else, so a lock on it that already reaches
        ``until`` proves the whole prefix does. Returns how many versions were extended.
        """
        return 0


def require_nonempty_prefix(prefix: str) -> str:
    # delete_prefix("") would empty the whole store: almost certainly a bug upstream.
    if not prefix:
        raise InvalidKeyError("refusing to delete with an empty prefix (it would empty the store)")
    return check_prefix(prefix)
