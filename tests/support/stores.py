"""A store wrapper for tests: records every call and can fail a chosen one.

Ordering guarantees (manifest written last, manifest deleted first) are about the sequence of
calls a store sees, so the tests wrap a real store and read that sequence back instead of
trusting the code under test to describe itself.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import datetime, timedelta

from hardening_pipeline.backup.store import BackupStore, ObjectLock, StoredObject, StoreError


class RecordingStore(BackupStore):
    """Delegates to ``inner``; ``calls`` holds ``(operation, key)`` in the order they happened.

    ``fail_put_at`` makes the k-th ``put`` (1-based) raise ``StoreError`` after consuming its
    chunks, like a network that dies at the end of an upload. ``fail_list`` makes ``list`` raise.
    """

    def __init__(
        self, inner: BackupStore, *, fail_put_at: int | None = None, fail_list: bool = False
    ) -> None:
        self.inner = inner
        self.fail_put_at = fail_put_at
        self.fail_list = fail_list
        self.calls: list[tuple[str, str]] = []
        self.puts = 0

    def put(self, key: str, chunks: Iterable[bytes]) -> int:
        self.puts += 1
        self.calls.append(("put", key))
        if self.puts == self.fail_put_at:
            for _ in chunks:
                pass
            raise StoreError(f"injected failure writing {key}")
        return self.inner.put(key, chunks)

    def get(self, key: str) -> Iterator[bytes]:
        self.calls.append(("get", key))
        return self.inner.get(key)

    def list(self, prefix: str = "") -> list[StoredObject]:
        self.calls.append(("list", prefix))
        if self.fail_list:
            raise StoreError("injected failure listing the store")
        return self.inner.list(prefix)

    def delete(self, key: str) -> None:
        self.calls.append(("delete", key))
        self.inner.delete(key)

    def delete_prefix(self, prefix: str) -> int:
        self.calls.append(("delete_prefix", prefix))
        return self.inner.delete_prefix(prefix)

    def exists(self, key: str) -> bool:
        return self.inner.exists(key)

    def abort_stale_uploads(self, older_than: timedelta, *, now: datetime | None = None) -> int:
        self.calls.append(("abort_stale_uploads", ""))
        return self.inner.abort_stale_uploads(older_than, now=now)

    def describe(self) -> str:
        return self.inner.describe()

    @property
    def object_lock(self) -> ObjectLock | None:
        return self.inner.object_lock

    def lock_enabled(self) -> bool:
        return self.inner.lock_enabled()

    def locked_until(self, key: str) -> datetime | None:
        return self.inner.locked_until(key)

    def extend_lock(self, prefix: str, until: datetime, *, last_key: str | None = None) -> int:
        self.calls.append(("extend_lock", prefix))
        return self.inner.extend_lock(prefix, until, last_key=last_key)

    def replace_unlocked(self, key: str, data: bytes, *, forget_older: bool = False) -> int:
        # Not a put: the key ledger's writes leave the put count to the backup's objects.
        self.calls.append(("replace_unlocked", key))
        return self.inner.replace_unlocked(key, data, forget_older=forget_older)

    def mutations(self) -> list[tuple[str, str]]:
        """Only the calls that change the store."""
        return [
            c for c in self.calls if c[0] in ("put", "replace_unlocked", "delete", "delete_prefix")
        ]
