"""The file store: a folder on a local or mounted file system, for first runs, demos and tests.

``put`` writes a temporary file beside the target, fsyncs it and renames it into place, so a
reader sees the old object or the whole new one, never a torn write.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from hardening_pipeline.backup.store.interface import (
    READ_CHUNK_SIZE,
    TEMP_PREFIX,
    BackupStore,
    InvalidKeyError,
    ObjectNotFoundError,
    StoredObject,
    StoreError,
    check_key,
    check_prefix,
    require_nonempty_prefix,
)


class FileStore(BackupStore):
    """A folder on a local or mounted file system, for first runs, demos and tests."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).expanduser().resolve()

    def describe(self) -> str:
        return f"folder {self.root}"

    def __repr__(self) -> str:
        return f"FileStore({str(self.root)!r})"

    def _path(self, key: str) -> Path:
        path = self.root.joinpath(*check_key(key).split("/"))
        # Belt and braces against symlinks inside the root pointing elsewhere.
        resolved = path.resolve()
        if resolved != self.root and self.root not in resolved.parents:
            raise InvalidKeyError(f"store key {key!r} resolves outside {self.root}")
        return path

    def put(self, key: str, chunks: Iterable[bytes]) -> int:
        target = self._path(key)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp_name = tempfile.mkstemp(prefix=TEMP_PREFIX, dir=target.parent)
        except OSError as exc:
            raise StoreError(f"could not write {key} in {self.describe()}: {exc.strerror}") from exc
        tmp = Path(tmp_name)
        written = 0
        try:
            with os.fdopen(fd, "wb") as fh:
                for chunk in chunks:
                    fh.write(chunk)
                    written += len(chunk)
                fh.flush()
                # Without fsync a crash after the rename can leave an empty or torn file under
                # the final name on some file systems.
                os.fsync(fh.fileno())
            os.replace(tmp, target)
        except BaseException as exc:
            tmp.unlink(missing_ok=True)
            if isinstance(exc, OSError):
                raise StoreError(
                    f"could not write {key} in {self.describe()}: {exc.strerror or exc}"
                ) from exc
            raise
        self._fsync_dir(target.parent)
        return written

    @staticmethod
    def _fsync_dir(directory: Path) -> None:
        # Makes the rename itself durable; not every platform lets a directory be opened.
        try:
            dir_fd = os.open(directory, os.O_RDONLY)
        except OSError:
            return
        try:
            os.fsync(dir_fd)
        except OSError:
            pass
        finally:
            os.close(dir_fd)

    def get(self, key: str) -> Iterator[bytes]:
        path = self._path(key)
        try:
            fh = open(path, "rb")
        except FileNotFoundError as exc:
            raise ObjectNotFoundError(f"{key} does not exist in {self.describe()}") from exc
        except OSError as exc:
            raise StoreError(f"could not read {key} in {self.describe()}: {exc.strerror}") from exc
        return self._read(fh, key)

    def _read(self, fh: Any, key: str) -> Iterator[bytes]:
        with fh:
            while True:
                try:
                    chunk = fh.read(READ_CHUNK_SIZE)
                except OSError as exc:
                    raise StoreError(
                        f"could not read {key} in {self.describe()}: {exc.strerror}"
                    ) from exc
                if not chunk:
                    return
                yield chunk

    def list(self, prefix: str = "") -> list[StoredObject]:
        check_prefix(prefix)
        # Walk only the deepest folder the prefix fully names, then filter on the full prefix.
        folder_parts = prefix.split("/")[:-1]
        start = self.root.joinpath(*folder_parts)
        if self.root.exists() and not self.root.is_dir():
            # An empty answer here would read as "no backups": say the store is broken instead.
            raise StoreError(f"the backup store {self.root} is not a folder; fix BACKUP_STORE_URL")
        if not start.is_dir():
            return []
        found: list[StoredObject] = []

        def fail(exc: OSError) -> None:
            # os.walk swallows errors by default: that would be a silent partial listing.
            raise StoreError(
                f"could not list {exc.filename or start} in {self.describe()}: {exc.strerror}"
            ) from exc

        for dirpath, dirnames, filenames in os.walk(start, onerror=fail):
            dirnames.sort()
            for name in filenames:
                if name.startswith(TEMP_PREFIX):
                    continue
                path = Path(dirpath, name)
                key = path.relative_to(self.root).as_posix()
                if not key.startswith(prefix):
                    continue
                try:
                    st = path.stat()
                except FileNotFoundError:
                    continue  # deleted while we walked: it is not there any more
                except OSError as exc:
                    fail(exc)
                found.append(
                    StoredObject(key, st.st_size, datetime.fromtimestamp(st.st_mtime, UTC))
                )
        found.sort(key=lambda o: o.key)
        return found

    def delete(self, key: str) -> None:
        path = self._path(key)
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:
            raise StoreError(
                f"could not delete {key} in {self.describe()}: {exc.strerror}"
            ) from exc
        self._prune_empty_dirs(path.parent)

    def delete_prefix(self, prefix: str) -> int:
        require_nonempty_prefix(prefix)
        objects = self.list(prefix)
        for obj in objects:
            self.delete(obj.key)
        return len(objects)

    def _prune_empty_dirs(self, directory: Path) -> None:
        # Empty date folders would otherwise pile up forever after retention.
        while directory != self.root and self.root in directory.parents:
            try:
                directory.rmdir()
            except OSError:
                return
            directory = directory.parent

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def abort_stale_uploads(self, older_than: timedelta, *, now: datetime | None = None) -> int:
        """Remove temporary files a killed writer left behind (older than ``older_than``)."""
        if not self.root.is_dir():
            return 0
        cutoff = (now or datetime.now(UTC)) - older_than
        removed = 0
        # Listed first: pruning emptied folders while rglob walks them would trip it up.
        for tmp in list(self.root.rglob(f"{TEMP_PREFIX}*")):
            try:
                if datetime.fromtimestamp(tmp.stat().st_mtime, UTC) < cutoff:
                    tmp.unlink()
                    removed += 1
            except FileNotFoundError:
                continue
            # A writer killed during its first object leaves a folder holding only this file;
            # list() never shows it, so nothing else would ever remove the empty folder.
            self._prune_empty_dirs(tmp.parent)
        return removed
