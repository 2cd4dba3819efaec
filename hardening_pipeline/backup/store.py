"""Where backup objects live: a local folder or an S3-compatible bucket (Backblaze B2).

Everything above this module speaks ``BackupStore``: keys relative to the store's root or prefix,
bytes streamed in and out, and a small set of guarantees the backup and retention code rely on:

* ``put`` never leaves a partial object visible under the key. A half-written backup that looks
  complete is worse than none, because a restore would find it.
* ``list`` is complete or raises. Retention deletes whatever it does not see as worth keeping, so
  a silently truncated listing could make it delete the wrong things or miss debris.
* ``delete`` really frees the bytes. B2 buckets are versioned: a delete without a VersionId only
  hides the object and the storage bill keeps growing, so every version is deleted by id.

S3 clients are built with checksums "when_required" because B2 rejects the ``x-amz-checksum-*``
headers boto3 >= 1.36 sends by default. For the same reason ``DeleteObjects`` is never used: it
sends those headers whatever the configuration says. Integrity is the backup format's job
(SHA-256 in the manifest plus authenticated encryption), not the transport's.

Failures surface as ``StoreError`` with one sentence saying what failed, where, and what to check.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse, urlsplit, urlunsplit

from hardening_pipeline.errors import ConfigError, HardeningError

__all__ = [
    "DEFAULT_PART_SIZE",
    "MIN_PART_SIZE",
    "BackupStore",
    "FileStore",
    "IncompleteUpload",
    "InvalidKeyError",
    "ObjectNotFoundError",
    "S3Store",
    "StoreAccessError",
    "StoreError",
    "StoredObject",
    "make_s3_client",
    "open_store",
]

log = logging.getLogger(__name__)

MIB = 1024 * 1024
# S3 (and B2) refuse parts under 5 MiB except the last one.
MIN_PART_SIZE = 5 * MIB
DEFAULT_PART_SIZE = 16 * MIB
# S3 allows at most 10,000 parts; with 16 MiB parts that caps one object at ~156 GiB.
MAX_PARTS = 10_000
READ_CHUNK_SIZE = 1 * MIB

ENV_STORE_URL = "BACKUP_STORE_URL"
ENV_S3_ENDPOINT_URL = "BACKUP_S3_ENDPOINT_URL"

# Temporary files of FileStore.put; listing skips them and keys may not look like them.
_TEMP_PREFIX = ".tmp-"


class StoreError(HardeningError):
    """Reading, writing, listing or deleting in the backup store failed."""


class StoreAccessError(StoreError, ConfigError):
    """The store refused us for a configuration reason: credentials, bucket name, permissions.

    It is also a ``ConfigError`` so the CLI exits 2 (fix the configuration) rather than 1.
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
        if part.startswith(_TEMP_PREFIX):
            raise InvalidKeyError(f"store key {key!r} uses the reserved {_TEMP_PREFIX!r} prefix")
    return key


def _check_prefix(prefix: str) -> str:
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


def _require_nonempty_prefix(prefix: str) -> str:
    # delete_prefix("") would empty the whole store: almost certainly a bug upstream.
    if not prefix:
        raise InvalidKeyError("refusing to delete with an empty prefix (it would empty the store)")
    return _check_prefix(prefix)


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
            fd, tmp_name = tempfile.mkstemp(prefix=_TEMP_PREFIX, dir=target.parent)
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
        _check_prefix(prefix)
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
                if name.startswith(_TEMP_PREFIX):
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
        _require_nonempty_prefix(prefix)
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
        for tmp in list(self.root.rglob(f"{_TEMP_PREFIX}*")):
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


# --- S3 ----------------------------------------------------------------------------------------

_RETRYABLE_CODES = frozenset(
    {
        "InternalError",
        "ServiceUnavailable",
        "SlowDown",
        "RequestTimeout",
        "Throttling",
        "ThrottlingException",
    }
)
_ACCESS_CODES = frozenset(
    {
        "AccessDenied",
        "AllAccessDisabled",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "NoSuchBucket",
        "InvalidBucketName",
        "PermanentRedirect",
        "AuthorizationHeaderMalformed",
    }
)


def make_s3_client(
    endpoint_url: str | None,
    region: str,
    *,
    max_attempts: int = 5,
    connect_timeout: float = 10.0,
    read_timeout: float = 60.0,
) -> Any:
    """Build a boto3 S3 client that Backblaze B2 accepts.

    ``max_attempts`` is the total number of tries per request, including the first, for
    botocore's own retries (throttling, 5xx, connection errors).

    Credentials come from boto3's usual chain (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``
    hold the B2 keyID and applicationKey). A fresh session keeps clients independent of boto3's
    module-level default session, which is not thread-safe to create clients from.
    """
    import boto3
    from botocore.config import Config

    config = Config(
        # B2 rejects x-amz-checksum-* / x-amz-sdk-checksum-algorithm (boto3 >= 1.36 default).
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        # total_max_attempts counts the first try; botocore's "max_attempts" counts only retries.
        retries={"mode": "standard", "total_max_attempts": max_attempts},
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
    )
    return boto3.session.Session().client(
        "s3", endpoint_url=endpoint_url, region_name=region, config=config
    )


def _redact_url(url: str) -> str:
    """Drop any user:password@ from a URL before it reaches a log line."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))


def _is_transient(exc: BaseException) -> bool:
    """Worth trying again: the network hiccuped or the server was briefly unhappy."""
    from botocore.exceptions import ClientError, ConnectionError, HTTPClientError

    if isinstance(exc, ConnectionError | HTTPClientError):
        return True
    if isinstance(exc, ClientError):
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        code = exc.response.get("Error", {}).get("Code", "")
        return status >= 500 or status == 429 or code in _RETRYABLE_CODES
    return False


class S3Store(BackupStore):
    """A prefix in an S3-compatible bucket, written with B2's restrictions in mind.

    Small objects go up in one ``PutObject``. Larger streams use multipart upload with parts of
    exactly ``part_size`` bytes (the last may be shorter), each sent with a known Content-Length
    (B2 refuses chunked transfer encoding). A failed part is retried with exponential backoff on
    top of botocore's own retries, because a nightly backup that dies on one flaky part costs a
    night; any failure aborts the upload so no parts linger and nothing appears under the key.
    """

    def __init__(
        self,
        bucket: str,
        prefix: str,
        client: Any,
        *,
        part_size: int = DEFAULT_PART_SIZE,
        part_attempts: int = 4,
        retry_base_delay: float = 1.0,
        retry_max_delay: float = 30.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not bucket:
            raise ConfigError(
                f"{ENV_STORE_URL} must name a bucket, like s3://my-bucket/backups; fix it."
            )
        if part_size < MIN_PART_SIZE:
            raise ValueError(f"part_size must be at least {MIN_PART_SIZE} bytes (S3 minimum)")
        if part_attempts < 1:
            raise ValueError("part_attempts must be at least 1")
        self.bucket = bucket
        prefix = prefix.strip("/")
        if prefix:
            check_key(prefix)
        self.prefix = f"{prefix}/" if prefix else ""
        self.client = client
        self.part_size = part_size
        self.part_attempts = part_attempts
        self.retry_base_delay = retry_base_delay
        self.retry_max_delay = retry_max_delay
        self._sleep = sleep

    # -- naming and errors --

    @property
    def endpoint(self) -> str:
        return _redact_url(str(self.client.meta.endpoint_url))

    def describe(self) -> str:
        return f"s3://{self.bucket}/{self.prefix} at {self.endpoint}"

    def __repr__(self) -> str:
        return (
            f"S3Store(bucket={self.bucket!r}, prefix={self.prefix!r}, endpoint={self.endpoint!r})"
        )

    def _full(self, key: str) -> str:
        return self.prefix + check_key(key)

    def _error(self, exc: BaseException, action: str) -> StoreError:
        """One sentence: what failed, where, and what to check."""
        from botocore.exceptions import (
            ClientError,
            ConnectTimeoutError,
            EndpointConnectionError,
            NoCredentialsError,
            PartialCredentialsError,
            ReadTimeoutError,
        )

        where = self.describe()
        if isinstance(exc, NoCredentialsError | PartialCredentialsError):
            return StoreAccessError(
                f"could not {action} in {where}: no S3 credentials found; set AWS_ACCESS_KEY_ID "
                f"and AWS_SECRET_ACCESS_KEY (the B2 keyID and applicationKey)"
            )
        if isinstance(exc, ConnectTimeoutError | ReadTimeoutError):
            return StoreError(
                f"could not {action}: timed out talking to the backup store at {self.endpoint}; "
                f"check {ENV_S3_ENDPOINT_URL} and the network"
            )
        if isinstance(exc, EndpointConnectionError):
            detail = str(exc.kwargs.get("error") or exc)
            reason = "connection refused" if "refused" in detail.lower() else "no connection"
            return StoreError(
                f"could not {action}: could not reach the backup store at {self.endpoint}: "
                f"{reason}; check {ENV_S3_ENDPOINT_URL} and the network"
            )
        if isinstance(exc, ClientError):
            err = exc.response.get("Error", {})
            code = err.get("Code") or "error"
            message = (err.get("Message") or "").rstrip(".")
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            said = f"{code}{f' ({message})' if message else ''}"
            if code in _ACCESS_CODES or status in (401, 403):
                return StoreAccessError(
                    f"could not {action} in {where}: the store said {said}; check the bucket "
                    f"name in {ENV_STORE_URL}, the key's permissions and AWS_ACCESS_KEY_ID/"
                    f"AWS_SECRET_ACCESS_KEY"
                )
            if "unsupported header" in message.lower():
                return StoreError(
                    f"could not {action} in {where}: the store said {said}; the S3 client must "
                    f"be built with checksums 'when_required' (use make_s3_client)"
                )
            return StoreError(f"could not {action} in {where}: the store said {said}")
        return StoreError(f"could not {action} in {where}: {type(exc).__name__}: {exc}")

    def _call(self, action: str, fn: Callable[..., Any], **kwargs: Any) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return fn(**kwargs)
        except (BotoCoreError, ClientError) as exc:
            raise self._error(exc, action) from exc

    def _with_retries(self, action: str, fn: Callable[..., Any], **kwargs: Any) -> Any:
        """Call ``fn`` up to ``part_attempts`` times, backing off exponentially if transient."""
        from botocore.exceptions import BotoCoreError, ClientError

        for attempt in range(1, self.part_attempts + 1):
            try:
                return fn(**kwargs)
            except (BotoCoreError, ClientError) as exc:
                if attempt == self.part_attempts or not _is_transient(exc):
                    raise self._error(exc, action) from exc
                delay = min(self.retry_max_delay, self.retry_base_delay * 2 ** (attempt - 1))
                log.warning(
                    "%s failed (attempt %d of %d, %s); retrying in %.1fs",
                    action,
                    attempt,
                    self.part_attempts,
                    type(exc).__name__,
                    delay,
                )
                self._sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    # -- writing --

    def put(self, key: str, chunks: Iterable[bytes]) -> int:
        full = self._full(key)
        buffer = bytearray()
        iterator = iter(chunks)
        for chunk in iterator:
            buffer += chunk
            if len(buffer) > self.part_size:
                # More than one part's worth: switch to multipart with what we have so far.
                return self._put_multipart(key, full, buffer, iterator)
        self._with_retries(
            f"upload {key}",
            self.client.put_object,
            Bucket=self.bucket,
            Key=full,
            Body=bytes(buffer),
        )
        return len(buffer)

    def _put_multipart(self, key: str, full: str, buffer: bytearray, rest: Iterator[bytes]) -> int:
        created = self._call(
            f"start uploading {key}",
            self.client.create_multipart_upload,
            Bucket=self.bucket,
            Key=full,
        )
        upload_id = created["UploadId"]
        parts: list[dict[str, Any]] = []
        written = 0

        def send(body: bytes) -> None:
            nonlocal written
            number = len(parts) + 1
            if number > MAX_PARTS:
                raise StoreError(
                    f"could not upload {key} to {self.describe()}: more than {MAX_PARTS} parts; "
                    f"raise the part size"
                )
            response = self._with_retries(
                f"upload part {number} of {key}",
                self.client.upload_part,
                Bucket=self.bucket,
                Key=full,
                UploadId=upload_id,
                PartNumber=number,
                Body=body,
            )
            parts.append({"PartNumber": number, "ETag": response["ETag"]})
            written += len(body)

        try:
            while True:
                while len(buffer) >= self.part_size:
                    with memoryview(buffer) as view:
                        part = bytes(view[: self.part_size])
                    del buffer[: self.part_size]
                    send(part)
                chunk = next(rest, None)
                if chunk is None:
                    break
                buffer += chunk
            if buffer:
                send(bytes(buffer))
                buffer.clear()
            self._call(
                f"finish uploading {key}",
                self.client.complete_multipart_upload,
                Bucket=self.bucket,
                Key=full,
                UploadId=upload_id,
                MultipartUpload={"Parts": parts},
            )
        except BaseException:
            self._abort(key, full, upload_id)
            raise
        return written

    def _abort(self, key: str, full: str, upload_id: str) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.abort_multipart_upload(Bucket=self.bucket, Key=full, UploadId=upload_id)
        except (BotoCoreError, ClientError) as exc:
            # The original error matters more; abort_stale_uploads sweeps this one later.
            log.warning(
                "could not abort the failed upload of %s (%s): %s; "
                "abort_stale_uploads will remove its parts later",
                key,
                upload_id,
                exc,
            )

    # -- reading --

    def get(self, key: str) -> Iterator[bytes]:
        full = self._full(key)
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            response = self.client.get_object(Bucket=self.bucket, Key=full)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                raise ObjectNotFoundError(f"{key} does not exist in {self.describe()}") from exc
            raise self._error(exc, f"download {key}") from exc
        except BotoCoreError as exc:
            raise self._error(exc, f"download {key}") from exc
        return self._stream(key, response["Body"])

    def _stream(self, key: str, body: Any) -> Iterator[bytes]:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            yield from body.iter_chunks(READ_CHUNK_SIZE)
        except (BotoCoreError, ClientError, OSError) as exc:
            raise self._error(exc, f"download {key}") from exc
        finally:
            body.close()

    def exists(self, key: str) -> bool:
        # Not HeadObject: a HEAD answer has no body, so a wrong bucket name and a missing key
        # both come back as a bare 404 and a misconfigured store would look merely empty. The
        # exact key, if present, sorts first among the keys it prefixes.
        full = self._full(key)
        page = self._call(
            f"check {key}",
            self.client.list_objects_v2,
            Bucket=self.bucket,
            Prefix=full,
            MaxKeys=1,
        )
        return any(item["Key"] == full for item in page.get("Contents", []))

    def list(self, prefix: str = "") -> list[StoredObject]:
        _check_prefix(prefix)
        found: list[StoredObject] = []
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": self.prefix + prefix}
        seen_tokens: set[str] = set()
        while True:
            page = self._call(
                f"list {prefix or 'the store'}", self.client.list_objects_v2, **kwargs
            )
            for item in page.get("Contents", []):
                found.append(
                    StoredObject(
                        key=self._relative(item["Key"]),
                        size=int(item["Size"]),
                        last_modified=item["LastModified"].astimezone(UTC),
                    )
                )
            if not page.get("IsTruncated"):
                break
            token = page.get("NextContinuationToken")
            # A truncated page without a usable token would end the loop early: a silent
            # partial listing, which is exactly what retention must never act on.
            if not token or token in seen_tokens:
                raise StoreError(
                    f"could not list {prefix or 'the store'} in {self.describe()}: the store "
                    f"returned a truncated page without a new continuation token"
                )
            seen_tokens.add(token)
            kwargs["ContinuationToken"] = token
        found.sort(key=lambda o: o.key)
        return found

    def _relative(self, full_key: str) -> str:
        if not full_key.startswith(self.prefix):
            raise StoreError(
                f"the store returned {full_key!r}, outside the prefix of {self.describe()}"
            )
        return full_key[len(self.prefix) :]

    # -- deleting --

    def _marker_pages(
        self, action: str, method: Any, next_marker: str, **kwargs: Any
    ) -> Iterator[dict[str, Any]]:
        """Every page of a listing paged by ``KeyMarker`` plus one more marker (versions,
        multipart uploads). A truncated page that brings no new markers raises: ending there
        would be a silent partial listing, which retention must never act on."""
        while True:
            page = self._call(action, method, **kwargs)
            yield page
            if not page.get("IsTruncated"):
                return
            key_marker = page.get("NextKeyMarker")
            other_marker = page.get(f"Next{next_marker}")
            if not key_marker or (
                key_marker == kwargs.get("KeyMarker") and other_marker == kwargs.get(next_marker)
            ):
                raise StoreError(
                    f"could not {action} in {self.describe()}: the store returned a truncated "
                    f"page without a new marker"
                )
            kwargs["KeyMarker"] = key_marker
            if other_marker:
                kwargs[next_marker] = other_marker
            else:
                kwargs.pop(next_marker, None)

    def _versions(self, full_prefix: str, action: str) -> list[tuple[str, str]]:
        """Every (key, version id) under ``full_prefix``: versions and delete markers alike."""
        return [
            (item["Key"], item.get("VersionId") or "null")
            for page in self._marker_pages(
                action,
                self.client.list_object_versions,
                "VersionIdMarker",
                Bucket=self.bucket,
                Prefix=full_prefix,
            )
            for item in page.get("Versions", []) + page.get("DeleteMarkers", [])
        ]

    def _delete_versions(self, versions: list[tuple[str, str]], action: str) -> None:
        # One request per version: DeleteObjects would be faster but botocore attaches checksum
        # headers to it even under "when_required", and B2 rejects those.
        for full_key, version_id in versions:
            self._call(
                action,
                self.client.delete_object,
                Bucket=self.bucket,
                Key=full_key,
                VersionId=version_id,
            )

    def delete(self, key: str) -> None:
        full = self._full(key)
        action = f"delete {key}"
        versions = [v for v in self._versions(full, action) if v[0] == full]
        self._delete_versions(versions, action)

    def delete_prefix(self, prefix: str) -> int:
        _require_nonempty_prefix(prefix)
        action = f"delete {prefix}"
        versions = self._versions(self.prefix + prefix, action)
        self._delete_versions(versions, action)
        return len({key for key, _ in versions})

    # -- debris --

    def list_incomplete_uploads(self) -> list[IncompleteUpload]:
        """Multipart uploads under this prefix that were never completed or aborted."""
        return [
            IncompleteUpload(
                key=self._relative(item["Key"]),
                upload_id=item["UploadId"],
                initiated=item["Initiated"].astimezone(UTC),
            )
            for page in self._marker_pages(
                "list incomplete uploads",
                self.client.list_multipart_uploads,
                "UploadIdMarker",
                Bucket=self.bucket,
                Prefix=self.prefix,
            )
            for item in page.get("Uploads", [])
        ]

    def abort_stale_uploads(self, older_than: timedelta, *, now: datetime | None = None) -> int:
        """Abort multipart uploads started before ``now - older_than``.

        A generous ``older_than`` (a day) avoids aborting an upload another process is still
        writing. Uploaded parts of an incomplete upload are billed on B2 until aborted.
        """
        cutoff = (now or datetime.now(UTC)) - older_than
        aborted = 0
        for upload in self.list_incomplete_uploads():
            if upload.initiated < cutoff:
                self._call(
                    f"abort the stale upload of {upload.key}",
                    self.client.abort_multipart_upload,
                    Bucket=self.bucket,
                    Key=self.prefix + upload.key,
                    UploadId=upload.upload_id,
                )
                aborted += 1
        return aborted


# --- opening a store from configuration --------------------------------------------------------


def open_store(
    url: str,
    *,
    endpoint_url: str | None,
    region: str,
    part_size: int = DEFAULT_PART_SIZE,
    max_attempts: int = 5,
    connect_timeout: float = 10.0,
    read_timeout: float = 60.0,
) -> BackupStore:
    """Open the store ``BACKUP_STORE_URL`` names: ``file:///path`` or ``s3://bucket/prefix``.

    Raises ``ConfigError`` for anything else, naming the variable and the fix. Nothing is
    contacted here; the first operation reports an unreachable store.
    """
    try:
        parsed = urlparse(url.strip())
    except ValueError as exc:  # e.g. an unclosed "[" of an IPv6 address
        raise ConfigError(
            f"{ENV_STORE_URL} is not a valid URL ({exc}); fix the variable."
        ) from None
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise ConfigError(
                f"{ENV_STORE_URL} file URLs need an absolute path, like file:///var/backups "
                f"(three slashes), got a host {parsed.netloc!r}; fix the variable."
            )
        path = unquote(parsed.path)
        if not path.startswith("/") or "\x00" in path:
            raise ConfigError(
                f"{ENV_STORE_URL} file URLs need an absolute path, like file:///var/backups; "
                f"fix the variable."
            )
        return FileStore(Path(path))
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise ConfigError(
                f"{ENV_STORE_URL} must name a bucket, like s3://my-bucket/backups; "
                f"fix the variable."
            )
        if parsed.username or parsed.password or parsed.query:
            raise ConfigError(
                f"{ENV_STORE_URL} must be just s3://bucket/prefix; put credentials in "
                f"AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY and the endpoint in "
                f"{ENV_S3_ENDPOINT_URL}."
            )
        prefix = unquote(parsed.path).strip("/")
        if prefix:
            try:
                check_key(prefix)
            except InvalidKeyError as exc:
                raise ConfigError(
                    f"{ENV_STORE_URL} has an unusable prefix {prefix!r} (no '.', '..' or empty "
                    f"segments); fix the variable."
                ) from exc
        try:
            client = make_s3_client(
                endpoint_url,
                region,
                max_attempts=max_attempts,
                connect_timeout=connect_timeout,
                read_timeout=read_timeout,
            )
        except ValueError as exc:  # botocore: "Invalid endpoint: ..."
            raise ConfigError(
                f"{ENV_S3_ENDPOINT_URL} is not a usable endpoint ({exc}); set it to the bucket's "
                f"S3 endpoint, like https://s3.us-west-004.backblazeb2.com."
            ) from None
        return S3Store(parsed.netloc, prefix, client, part_size=part_size)
    shown = f"{parsed.scheme}://" if parsed.scheme else "a value without a scheme"
    raise ConfigError(
        f"{ENV_STORE_URL} must be s3://bucket/prefix or file:///absolute/path (got {shown}); "
        f"fix the variable or unset it to use the default local folder."
    )
