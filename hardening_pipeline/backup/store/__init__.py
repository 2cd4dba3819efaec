"""Where backup objects live: a local folder or an S3-compatible bucket (Backblaze B2).

One module per concern:

* ``interface``: ``BackupStore``, the guarantees every store gives, the key rules and errors;
* ``file_store``: ``FileStore``, a folder (first runs, demos, tests);
* ``s3_store``: ``S3Store`` and ``make_s3_client``, a bucket prefix, B2-safe;
* ``s3_upload``: how ``S3Store`` streams one object up, in parts;
* ``s3_errors``: botocore failures as one sentence naming what to fix.

``open_store`` turns a ``BACKUP_STORE_URL`` into one of them. Import from this package, not from
the modules, so a store can move between modules without touching its users.
"""

from __future__ import annotations

from hardening_pipeline.backup.store.file_store import FileStore
from hardening_pipeline.backup.store.interface import (
    DEFAULT_PART_SIZE,
    MAX_PARTS,
    MIN_PART_SIZE,
    BackupStore,
    IncompleteUpload,
    InvalidKeyError,
    ObjectLock,
    ObjectLockedError,
    ObjectNotFoundError,
    StoreAccessError,
    StoredObject,
    StoreError,
    check_key,
)
from hardening_pipeline.backup.store.s3_store import (
    DEFAULT_UPLOAD_CONCURRENCY,
    S3Store,
    make_s3_client,
)
from hardening_pipeline.errors import ConfigError
from hardening_pipeline.settings import (
    ENV_OBJECT_LOCK,
    ENV_S3_ENDPOINT_URL,
    ENV_STORE_URL,
    parse_store_url,
)

__all__ = [
    "DEFAULT_PART_SIZE",
    "DEFAULT_UPLOAD_CONCURRENCY",
    "MAX_PARTS",
    "MIN_PART_SIZE",
    "BackupStore",
    "FileStore",
    "IncompleteUpload",
    "InvalidKeyError",
    "ObjectLock",
    "ObjectLockedError",
    "ObjectNotFoundError",
    "S3Store",
    "StoreAccessError",
    "StoreError",
    "StoredObject",
    "check_key",
    "make_s3_client",
    "open_store",
]


def open_store(
    url: str,
    *,
    endpoint_url: str | None,
    region: str,
    part_size: int = DEFAULT_PART_SIZE,
    max_attempts: int = 5,
    upload_concurrency: int = DEFAULT_UPLOAD_CONCURRENCY,
    connect_timeout: float = 10.0,
    read_timeout: float = 60.0,
    object_lock: ObjectLock | None = None,
    credentials: tuple[str, str] | None = None,
) -> BackupStore:
    """Open the store ``url`` names: ``file:///path`` or ``s3://bucket/prefix``.

    The URL is checked by ``settings.parse_store_url``, the same check ``load_settings`` runs,
    so a bad URL is a ``ConfigError`` naming the variable and the fix. ``max_attempts`` is the
    total number of tries of each S3 request (botocore's retries; there is no other layer).
    Nothing is contacted here; the first operation reports an unreachable store.
    ``object_lock`` locks every object written (a bucket only); ``credentials`` (key id,
    secret) replace boto3's credential chain.
    """
    location = parse_store_url(url)
    if location.scheme == "file":
        assert location.path is not None
        if object_lock is not None:
            raise ConfigError(
                f"{ENV_OBJECT_LOCK} is {object_lock.mode} but {ENV_STORE_URL} is a folder, which "
                f"cannot lock; use an s3:// bucket with Object Lock enabled or set "
                f"{ENV_OBJECT_LOCK}=off."
            )
        return FileStore(location.path)
    try:
        client = make_s3_client(
            endpoint_url,
            region,
            max_attempts=max_attempts,
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            credentials=credentials,
        )
    except ValueError as exc:  # botocore: "Invalid endpoint: ..."
        raise ConfigError(
            f"{ENV_S3_ENDPOINT_URL} is not a usable endpoint ({exc}); set it to the bucket's "
            f"S3 endpoint, like https://s3.us-west-004.backblazeb2.com."
        ) from None
    return S3Store(
        location.bucket,
        location.prefix,
        client,
        part_size=part_size,
        upload_concurrency=upload_concurrency,
        object_lock=object_lock,
    )
