"""Fetch a backup's objects, prove they are intact, and read them back as per-table COPY text.

Order matters: every object is downloaded and its SHA-256 compared with the (authenticated)
manifest *before anything is decrypted*, so a corrupted or swapped object stops the restore
before a single row is loaded. Downloads land in a private temporary folder as ciphertext;
plaintext never touches disk. Decryption then authenticates every chunk before yielding it, and
the stream is cut into tables by the byte counts the manifest records.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from hardening_pipeline.backup.crypto import BackupIntegrityError
from hardening_pipeline.backup.manifest import AppSchemaEntry, Manifest, ObjectEntry, TableEntry
from hardening_pipeline.backup.object_format import ObjectDecoder
from hardening_pipeline.backup.store import BackupStore, StoreError
from hardening_pipeline.backup.tenant_digests import new_digest, part_digest_key

_READ_SIZE = 1 << 20


@dataclass(frozen=True)
class FetchedObject:
    """A downloaded, checksum-verified (still encrypted) object."""

    entry: ObjectEntry | AppSchemaEntry
    path: Path


@contextlib.contextmanager
def fetched_backup(
    store: BackupStore,
    manifest: Manifest,
    folder: str,
    *,
    only: set[str] | None = None,
) -> Iterator[dict[str, FetchedObject]]:
    """Download (and verify) every object of a backup, or only the named ones; cleaned up after."""
    workdir = Path(tempfile.mkdtemp(prefix="hp-restore-"))
    os.chmod(workdir, 0o700)
    try:
        fetched: dict[str, FetchedObject] = {}
        for entry in manifest.stored_objects:
            if only is not None and entry.name not in only:
                continue
            fetched[entry.name] = FetchedObject(entry, _download(store, folder, entry, workdir))
        yield fetched
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _download(
    store: BackupStore, folder: str, entry: ObjectEntry | AppSchemaEntry, workdir: Path
) -> Path:
    target = workdir / entry.name
    digest = hashlib.sha256()
    size = 0
    try:
        with open(target, "wb") as out:
            for chunk in store.get(folder + entry.name):
                digest.update(chunk)
                size += len(chunk)
                out.write(chunk)
    except StoreError as exc:
        raise BackupIntegrityError(
            f"backup object {entry.name!r} could not be read: {exc}"
        ) from exc
    if size != entry.ciphertext_bytes or digest.hexdigest() != entry.sha256:
        raise BackupIntegrityError(
            f"backup object {entry.name!r} does not match its manifest (size {size} vs "
            f"{entry.ciphertext_bytes}, SHA-256 {digest.hexdigest()[:16]}... vs "
            f"{entry.sha256[:16]}...); it was corrupted, truncated or replaced."
        )
    return target


def file_chunks(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as handle:
        while chunk := handle.read(_READ_SIZE):
            yield chunk


# The schema of even a large app is a few MiB of SQL; more than this is not a schema dump.
MAX_SCHEMA_BYTES = 256 << 20


def read_schema_sections(
    fetched: FetchedObject, manifest: Manifest, data_key: bytes
) -> dict[str, bytes]:
    """Decrypt the schema object and cut it into its ``pg_dump`` sections, each digest checked."""
    entry = fetched.entry
    if not isinstance(entry, AppSchemaEntry) or entry.plaintext_bytes > MAX_SCHEMA_BYTES:
        raise BackupIntegrityError(f"backup object {entry.name!r} is not a schema object.")
    decoder = ObjectDecoder(
        file_chunks(fetched.path),
        data_key,
        backup_id=manifest.backup_id,
        object_name=entry.name,
        expected_sha256=entry.sha256,
    )
    plaintext = bytearray()
    for chunk in decoder:
        plaintext += chunk
        if len(plaintext) > entry.plaintext_bytes:
            break
    if len(plaintext) != entry.plaintext_bytes:
        raise BackupIntegrityError(
            f"schema object {entry.name!r} holds {len(plaintext)} bytes, the manifest says "
            f"{entry.plaintext_bytes}."
        )
    sections, offset = {}, 0
    for section in entry.sections:
        part = bytes(plaintext[offset : offset + section.bytes])
        offset += section.bytes
        if hashlib.sha256(part).hexdigest() != section.sha256:
            raise BackupIntegrityError(
                f"schema section {section.name} does not match its recorded SHA-256."
            )
        sections[section.name] = part
    return sections


class TableReader:
    """Iterate ``(table, chunks)`` pairs over one decrypted object, checking each table's digest.

    Consume each table's chunks fully before moving to the next one (as a ``COPY FROM`` does).
    A digest or length mismatch raises ``BackupIntegrityError``; so does anything the decoder
    finds at the end of the stream, which is why callers load inside one transaction.
    """

    def __init__(self, fetched: FetchedObject, manifest: Manifest, data_key: bytes) -> None:
        self._entry = fetched.entry
        self._digest_key = part_digest_key(manifest, fetched.entry, data_key)
        self._decoder = ObjectDecoder(
            file_chunks(fetched.path),
            data_key,
            backup_id=manifest.backup_id,
            object_name=fetched.entry.name,
            expected_sha256=fetched.entry.sha256,
            # Every table's digest is checked below, which covers the whole plaintext.
            digest_plaintext=False,
        )

    def __iter__(self) -> Iterator[tuple[TableEntry, Iterator[bytes]]]:
        plaintext = iter(self._decoder)
        pending = b""
        for table in self._entry.tables:
            holder = {"pending": pending}
            yield table, self._table_chunks(table, plaintext, holder, self._digest_key)
            pending = holder["pending"]
        # Drain: the decoder's end-of-stream checks (final chunk, trailing bytes, SHA-256).
        extra = len(pending) + sum(len(c) for c in plaintext)
        if extra:
            raise BackupIntegrityError(
                f"backup object {self._entry.name!r} holds {extra} bytes beyond its tables."
            )

    @staticmethod
    def _table_chunks(
        table: TableEntry,
        plaintext: Iterator[bytes],
        holder: dict[str, bytes],
        digest_key: bytes | None,
    ) -> Iterator[bytes]:
        remaining = table.bytes
        digest = new_digest(digest_key)
        buffer = holder["pending"]
        while remaining > 0:
            if not buffer:
                buffer = next(plaintext, b"")
                if not buffer:
                    raise BackupIntegrityError(
                        f"table {table.name} ends early: {remaining} bytes missing."
                    )
            piece, buffer = buffer[:remaining], buffer[remaining:]
            remaining -= len(piece)
            digest.update(piece)
            yield piece
        holder["pending"] = buffer
        if digest.hexdigest() != table.sha256:
            raise BackupIntegrityError(f"table {table.name} does not match its recorded SHA-256.")
