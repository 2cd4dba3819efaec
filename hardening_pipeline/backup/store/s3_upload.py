"""Streaming one object into an S3 store: s3transfer's managed upload, on the store's client.

s3transfer reads parts from a file, not from an iterator of chunks, and reports a failed part as
a bare ``ClientError`` from a worker thread; the two adapters here give it the file it expects
and turn each failure into the store's one-sentence ``StoreError``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from hardening_pipeline.backup.store.interface import StoreError

if TYPE_CHECKING:
    from hardening_pipeline.backup.store.s3_store import S3Store

log = logging.getLogger(__name__)


def upload_stream(
    store: S3Store, key: str, full: str, chunks: Iterable[bytes], extra_args: dict[str, Any]
) -> int:
    """Upload ``chunks`` as ``key`` (``full`` in the bucket) in ``store``'s part size and
    concurrency, with ``extra_args`` (the lock) on the request; returns the bytes written."""
    from s3transfer.manager import TransferConfig, TransferManager

    source = _ChunkReader(chunks, key=key, store=store)
    config = TransferConfig(
        # One more byte than a part: exactly one part's worth still goes up in one request.
        multipart_threshold=store.part_size + 1,
        multipart_chunksize=store.part_size,
        max_request_concurrency=store.upload_concurrency,
        # Bounds the parts held in memory while they wait for a free connection.
        max_in_memory_upload_chunks=store.upload_concurrency,
    )
    client = _NamedStepsClient(store, key)
    with TransferManager(client, config) as manager:
        manager.upload(source, store.bucket, full, extra_args=extra_args).result()
    return source.consumed


class _ChunkReader:
    """The ``chunks`` iterator as the readable, non-seekable file s3transfer reads parts from.

    s3transfer expects ``read(n)`` to return ``n`` bytes until the end, so chunks are cut and
    joined here. Reading more than ``limit`` bytes (S3's part count cap) fails the upload.
    """

    def __init__(self, chunks: Iterable[bytes], *, key: str, store: S3Store) -> None:
        self._chunks = iter(chunks)
        self._pending = bytearray()
        self._done = False
        self._limit = store.max_parts * store.part_size
        self._key = key
        self._store = store
        self.consumed = 0

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        while not self._done and (size < 0 or len(self._pending) < size):
            chunk = next(self._chunks, None)
            if chunk is None:
                self._done = True
            else:
                self._pending += chunk
        if size < 0 or size >= len(self._pending):
            data = bytes(self._pending)
            self._pending.clear()
        else:
            with memoryview(self._pending) as view:
                data = bytes(view[:size])
            del self._pending[:size]
        self.consumed += len(data)
        if self.consumed > self._limit:
            raise StoreError(
                f"could not upload {self._key} to {self._store.describe()}: more than "
                f"{self._store.max_parts} parts; raise the part size"
            )
        return data


class _NamedStepsClient:
    """The store's client as s3transfer sees it, with each upload step's failure named.

    A bare ``ClientError`` from a worker thread says neither the key nor which part failed;
    wrapping the four upload calls turns each failure into the store's one-sentence
    ``StoreError`` ("upload part 3 of <key> ..."). Everything else is the real client.
    """

    def __init__(self, store: S3Store, key: str) -> None:
        self._store = store
        self._key = key

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store.client, name)

    def put_object(self, **kwargs: Any) -> Any:
        return self._store._call(f"upload {self._key}", self._store.client.put_object, **kwargs)

    def create_multipart_upload(self, **kwargs: Any) -> Any:
        return self._store._call(
            f"start uploading {self._key}", self._store.client.create_multipart_upload, **kwargs
        )

    def upload_part(self, **kwargs: Any) -> Any:
        action = f"upload part {kwargs.get('PartNumber')} of {self._key}"
        return self._store._call(action, self._store.client.upload_part, **kwargs)

    def complete_multipart_upload(self, **kwargs: Any) -> Any:
        return self._store._call(
            f"finish uploading {self._key}",
            self._store.client.complete_multipart_upload,
            **kwargs,
        )

    def abort_multipart_upload(self, **kwargs: Any) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return self._store.client.abort_multipart_upload(**kwargs)
        except (BotoCoreError, ClientError) as exc:
            # The original error matters more; abort_stale_uploads sweeps this one later.
            log.warning(
                "could not abort the failed upload of %s (%s): %s; "
                "abort_stale_uploads will remove its parts later",
                self._key,
                kwargs.get("UploadId"),
                exc,
            )
            return None
