"""The S3 store: a prefix in an S3-compatible bucket (Backblaze B2), within B2's limits.

Clients are built with checksums "when_required" because B2 rejects the ``x-amz-checksum-*``
headers boto3 >= 1.36 sends by default. For the same reason ``DeleteObjects`` is never used: it
sends those headers whatever the configuration says. Integrity is the backup format's job
(SHA-256 in the manifest plus authenticated encryption), not the transport's.

Object Lock (``object_lock``): every object is written with a retain-until date, and locks are
only ever extended. S3 requires Content-MD5 (or a flexible checksum, which B2 refuses) on a
locked write and on PutObjectRetention, so those requests carry Content-MD5 and no
``x-amz-checksum-*`` header; see ``_send_content_md5``.

Retries belong to botocore alone (``Config(retries=...)``, standard mode): every request,
including each multipart part, gets ``max_attempts`` tries in total with botocore's jittered
backoff. Nothing here loops on top of that, so the number of tries is the number configured.
"""

from __future__ import annotations

import base64
import hashlib
import logging
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from hardening_pipeline.backup.store.interface import (
    DEFAULT_PART_SIZE,
    MAX_PARTS,
    MIN_PART_SIZE,
    READ_CHUNK_SIZE,
    BackupStore,
    IncompleteUpload,
    ObjectLock,
    ObjectLockedError,
    ObjectNotFoundError,
    StoredObject,
    StoreError,
    check_key,
    check_prefix,
    require_nonempty_prefix,
)
from hardening_pipeline.backup.store.s3_errors import call_s3, error_code, redact_url, store_error
from hardening_pipeline.backup.store.s3_upload import upload_stream

log = logging.getLogger(__name__)

# Parts in flight at once for one object. Memory per object being uploaded is about
# (DEFAULT_UPLOAD_CONCURRENCY + 1) parts: the parts being sent plus the one being read.
# Measured once, 256 MiB in 16 MiB parts to the local test server on a shared 2-core VM:
# 1 at a time 3.2-4.5 s and 102 MiB peak RSS, 4 at a time 2.5 s and 157 MiB. Against a remote
# bucket, where each part waits on the network, parallel parts matter more.
DEFAULT_UPLOAD_CONCURRENCY = 4

# Requests that must prove their body with Content-MD5 when they carry a lock.
_MD5_OPERATIONS = ("PutObject", "UploadPart", "PutObjectRetention")
_NO_LOCK_CODES = ("NoSuchObjectLockConfiguration", "ObjectLockConfigurationNotFoundError")


def make_s3_client(
    endpoint_url: str | None,
    region: str,
    *,
    max_attempts: int = 5,
    connect_timeout: float = 10.0,
    read_timeout: float = 60.0,
    credentials: tuple[str, str] | None = None,
) -> Any:
    """Build a boto3 S3 client that Backblaze B2 accepts.

    ``max_attempts`` is the total number of tries per request, including the first, for
    botocore's own retries (throttling, 5xx, connection errors).

    Credentials come from boto3's usual chain (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``
    hold the B2 keyID and applicationKey). A fresh session keeps clients independent of boto3's
    module-level default session, which is not thread-safe to create clients from.
    ``credentials`` (key id, secret) replace that chain, for the pruning key of retention.
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
    key_id, secret = credentials or (None, None)
    session = boto3.session.Session(aws_access_key_id=key_id, aws_secret_access_key=secret)
    client = session.client("s3", endpoint_url=endpoint_url, region_name=region, config=config)
    client.meta.events.register("before-send.s3", _log_retry, unique_id="hardening-log-retry")
    return client


def _send_content_md5(params: dict[str, Any], **_: Any) -> None:
    """Content-MD5 instead of botocore's CRC32 on writes that carry or change a lock.

    S3 refuses a locked PutObject/UploadPart or a PutObjectRetention without Content-MD5 or a
    flexible checksum; B2 refuses the flexible-checksum headers boto3 >= 1.36 sends. So the
    checksum botocore planned for the request is dropped and Content-MD5 computed here, before
    ``apply_request_checksum`` runs. The body is read and rewound, so a part is not copied.
    """
    body = params.get("body")
    digest = hashlib.md5(usedforsecurity=False)
    if isinstance(body, bytes | bytearray):
        digest.update(body)
    elif body is not None:
        start = body.tell()
        for chunk in iter(lambda: body.read(1 << 20), b""):
            digest.update(chunk)
        body.seek(start)
    params["headers"]["Content-MD5"] = base64.b64encode(digest.digest()).decode("ascii")
    params.get("context", {}).pop("checksum", None)


def send_content_md5_on_lock_writes(client: Any) -> None:
    """Make ``client`` prove locked writes and retention changes with Content-MD5 (B2-safe)."""
    for operation in _MD5_OPERATIONS:
        client.meta.events.register(
            f"before-call.s3.{operation}",
            _send_content_md5,
            unique_id=f"hardening-content-md5-{operation}",
        )


def _log_retry(request: Any, event_name: str = "", **_: Any) -> None:
    """botocore retries quietly; a warning per retry shows a flaky store before it fails."""
    header = request.headers.get("amz-sdk-request") or b""
    if isinstance(header, bytes):
        header = header.decode("ascii", "replace")
    fields = dict(p.strip().split("=", 1) for p in header.split(";") if "=" in p)
    attempt, total = fields.get("attempt", "1"), fields.get("max", "?")
    if attempt.isdigit() and int(attempt) > 1:
        operation = event_name.rsplit(".", 1)[-1]
        log.warning("S3 %s failed; retrying (try %s of %s)", operation, attempt, total)


class S3Store(BackupStore):
    """A prefix in an S3-compatible bucket.

    Uploads go through s3transfer's managed transfer on the store's own (B2-safe) client: a
    stream of at most ``part_size`` bytes is one ``PutObject``; a longer one is a multipart
    upload of parts of exactly ``part_size`` bytes (the last may be shorter), each sent with a
    known Content-Length (B2 refuses chunked transfer encoding), up to ``upload_concurrency``
    at a time. Any failure, including the stream itself raising, aborts the upload, so no
    parts linger and nothing appears under the key.
    """

    def __init__(
        self,
        bucket: str,
        prefix: str,
        client: Any,
        *,
        part_size: int = DEFAULT_PART_SIZE,
        upload_concurrency: int = DEFAULT_UPLOAD_CONCURRENCY,
        max_parts: int = MAX_PARTS,
        object_lock: ObjectLock | None = None,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        # The URL behind these was validated in settings (parse_store_url); these are guards
        # against programming errors, not messages for users.
        if not bucket:
            raise ValueError("bucket must not be empty")
        if part_size < MIN_PART_SIZE:
            raise ValueError(f"part_size must be at least {MIN_PART_SIZE} bytes (S3 minimum)")
        if upload_concurrency < 1:
            raise ValueError("upload_concurrency must be at least 1")
        self.bucket = bucket
        prefix = prefix.strip("/")
        if prefix:
            check_key(prefix)
        self.prefix = f"{prefix}/" if prefix else ""
        self.client = client
        self.part_size = part_size
        self.upload_concurrency = upload_concurrency
        # S3's cap on parts per upload; with an unknown stream length the cap is checked as the
        # bytes arrive, so a too-small part size fails clearly instead of at part 10,001.
        self.max_parts = max_parts
        self._object_lock = object_lock
        # Retain-until dates are computed from this clock; tests move it with the server's.
        self.clock = clock or (lambda: datetime.now(UTC))
        if object_lock is not None:
            send_content_md5_on_lock_writes(client)

    # -- naming and errors --

    @property
    def endpoint(self) -> str:
        return redact_url(str(self.client.meta.endpoint_url))

    def describe(self) -> str:
        return f"s3://{self.bucket}/{self.prefix} at {self.endpoint}"

    def __repr__(self) -> str:
        return (
            f"S3Store(bucket={self.bucket!r}, prefix={self.prefix!r}, endpoint={self.endpoint!r})"
        )

    def _full(self, key: str) -> str:
        return self.prefix + check_key(key)

    def _call(self, action: str, fn: Callable[..., Any], **kwargs: Any) -> Any:
        return call_s3(action, fn, where=self.describe(), endpoint=self.endpoint, **kwargs)

    def _error(self, exc: BaseException, action: str) -> StoreError:
        return store_error(exc, action, where=self.describe(), endpoint=self.endpoint)

    # -- writing --

    def put(self, key: str, chunks: Iterable[bytes]) -> int:
        full = self._full(key)
        extra_args: dict[str, Any] = {}
        if self._object_lock is not None:
            extra_args["ObjectLockMode"] = self._object_lock.s3_mode
            extra_args["ObjectLockRetainUntilDate"] = self.clock() + self._object_lock.horizon
        return upload_stream(self, key, full, chunks, extra_args)

    def replace_unlocked(self, key: str, data: bytes, *, forget_older: bool = False) -> int:
        full = self._full(key)
        answer = self._call(
            f"upload {key}",
            self.client.put_object,
            Bucket=self.bucket,
            Key=full,
            Body=data,
            ContentMD5=base64.b64encode(hashlib.md5(data, usedforsecurity=False).digest()).decode(
                "ascii"
            ),
        )
        if not forget_older:
            return len(data)
        current = answer.get("VersionId") or "null"
        action = f"remove older versions of {key}"
        older = [v for v in self._versions(full, action, exact=True) if v[1] != current]
        self._delete_versions(older, action)
        return len(data)

    # -- reading --

    def get(self, key: str) -> Iterator[bytes]:
        full = self._full(key)
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            response = self.client.get_object(Bucket=self.bucket, Key=full)
        except (BotoCoreError, ClientError) as exc:
            if error_code(exc) in ("NoSuchKey", "404"):
                raise ObjectNotFoundError(f"{key} does not exist in {self.describe()}") from exc
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
        check_prefix(prefix)
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

    def _versions(
        self, full: str, action: str, *, exact: bool = False
    ) -> list[tuple[str, str, str | None]]:
        """Every (key, version id, ETag) under ``full``, or of that key alone, each key's newest
        first; delete markers too, after the versions, their ETag None."""
        return [
            (
                item["Key"],
                item.get("VersionId") or "null",
                item.get("ETag", "") if group == "Versions" else None,
            )
            for page in self._marker_pages(
                action,
                self.client.list_object_versions,
                "VersionIdMarker",
                Bucket=self.bucket,
                Prefix=full,
            )
            for group in ("Versions", "DeleteMarkers")
            for item in page.get(group, [])
            if not exact or item["Key"] == full
        ]

    def version_ids(self, key: str) -> list[str]:
        """The stored versions of ``key``, newest first (delete markers left out)."""
        found = self._versions(self._full(key), f"list the versions of {key}", exact=True)
        return [version for _, version, etag in found if etag is not None]

    def version_etags(self, key: str) -> list[str | None]:
        found = self._versions(self._full(key), f"read the history of {key}", exact=True)
        return [etag for _, _, etag in found]

    def _delete_versions(self, versions: list[tuple[str, str, str | None]], action: str) -> None:
        # One request per version: DeleteObjects would be faster but botocore attaches checksum
        # headers to it even under "when_required", and B2 rejects those.
        from botocore.exceptions import BotoCoreError, ClientError

        for full_key, version_id, _ in versions:
            try:
                self.client.delete_object(Bucket=self.bucket, Key=full_key, VersionId=version_id)
            except ClientError as exc:
                until = self._version_locked_until(full_key, version_id)
                if until is not None and until > self.clock():
                    raise ObjectLockedError(
                        f"could not {action} in {self.describe()}: "
                        f"{self._relative(full_key)} is locked until {until.isoformat()}"
                    ) from exc
                raise self._error(exc, action) from exc
            except BotoCoreError as exc:
                raise self._error(exc, action) from exc

    def delete(self, key: str) -> None:
        action = f"delete {key}"
        self._delete_versions(self._versions(self._full(key), action, exact=True), action)

    def delete_prefix(self, prefix: str) -> int:
        require_nonempty_prefix(prefix)
        action = f"delete {prefix}"
        versions = self._versions(self.prefix + prefix, action)
        self._delete_versions(versions, action)
        return len({key for key, _, _ in versions})

    # -- Object Lock --

    @property
    def object_lock(self) -> ObjectLock | None:
        return self._object_lock

    def lock_enabled(self) -> bool:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            answer = self.client.get_object_lock_configuration(Bucket=self.bucket)
        except (BotoCoreError, ClientError) as exc:
            if error_code(exc) in _NO_LOCK_CODES:
                return False
            raise self._error(exc, "read the bucket's Object Lock setting") from exc
        config = answer.get("ObjectLockConfiguration") or {}
        return config.get("ObjectLockEnabled") == "Enabled"

    def _version_locked_until(self, full_key: str, version_id: str | None) -> datetime | None:
        """The version's retain-until date, from HeadObject's ``x-amz-object-lock-*`` headers
        (GetObjectRetention errs for an unlocked version). B2 sends the lock headers only to a
        key with ``readFileRetentions``; without it a locked object looks unlocked."""
        from botocore.exceptions import BotoCoreError, ClientError

        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": full_key}
        if version_id is not None:
            kwargs["VersionId"] = version_id
        try:
            answer = self.client.head_object(**kwargs)
        except (BotoCoreError, ClientError) as exc:
            if error_code(exc) in ("404", "NoSuchKey", "405", "MethodNotAllowed"):
                # Gone, or a delete marker: neither holds data nor a lock.
                return None
            raise self._error(exc, f"read the lock of {self._relative(full_key)}") from exc
        until = answer.get("ObjectLockRetainUntilDate")
        return until.astimezone(UTC) if until is not None else None

    def locked_until(self, key: str) -> datetime | None:
        return self._version_locked_until(self._full(key), None)

    def extend_lock(self, prefix: str, until: datetime, *, last_key: str | None = None) -> int:
        if self._object_lock is None:
            return 0
        require_nonempty_prefix(prefix)
        action = f"extend the lock of {prefix}"
        last_full = self.prefix + last_key if last_key is not None else None
        versions = self._versions(self.prefix + prefix, action)
        extended = 0
        for full_key, version_id, etag in sorted(versions, key=lambda v: v[0] == last_full):
            if etag is None:
                continue  # a delete marker holds no data and no lock
            current = self._version_locked_until(full_key, version_id)
            if current is not None and current >= until:
                continue  # already long enough; a shorter date would be refused anyway
            self._call(
                action,
                self.client.put_object_retention,
                Bucket=self.bucket,
                Key=full_key,
                VersionId=version_id,
                Retention={"Mode": self._object_lock.s3_mode, "RetainUntilDate": until},
            )
            extended += 1
        return extended

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
