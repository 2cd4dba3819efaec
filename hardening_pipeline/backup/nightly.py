"""One backup run: snapshot -> per-tenant COPY -> zstd -> chunked AES-256-GCM -> store -> manifest.

The manifest is written last and only after every object is stored and every table's row count
matches the snapshot's total, so a backup that did not finish has no manifest and does not exist
for readers (retention removes its debris later). Two runs against one database cannot
interleave: a run holds an advisory lock on the source database for its whole length and a
second run refuses at once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from hardening_pipeline import __version__
from hardening_pipeline.backup.crypto import Keyring, generate_data_key
from hardening_pipeline.backup.export import (
    BackupLayout,
    TableStream,
    discover_layout,
    open_snapshot,
    read_snapshot_info,
)
from hardening_pipeline.backup.manifest import (
    MANIFEST_NAME,
    NON_TENANT_OBJECT_NAME,
    Manifest,
    ObjectEntry,
    backup_folder,
    new_backup_id,
    sign_manifest,
    tenant_object_name,
)
from hardening_pipeline.backup.object_format import ObjectEncoder
from hardening_pipeline.backup.store import BackupStore
from hardening_pipeline.db.connection import connect
from hardening_pipeline.errors import CheckFailed

log = logging.getLogger(__name__)

# Distinct from the migration lock; spells "hpbackup" in ASCII.
BACKUP_LOCK_KEY = 0x6870_6261_636B_7570


@dataclass
class BackupResult:
    """What a backup run produced; ``dry_run`` results were never written to the store."""

    manifest: Manifest
    location: str
    dry_run: bool
    seconds: float
    manifest_key: str
    stored_bytes: int = 0
    object_seconds: dict[str, float] = field(default_factory=dict)

    @property
    def backup_id(self) -> str:
        return self.manifest.backup_id

    @property
    def rows(self) -> int:
        return sum(t.row_count for o in self.manifest.objects for t in o.tables)

    @property
    def plaintext_bytes(self) -> int:
        return sum(o.plaintext_bytes for o in self.manifest.objects)

    @property
    def ciphertext_bytes(self) -> int:
        return sum(o.ciphertext_bytes for o in self.manifest.objects)


def _discard(chunks: Iterable[bytes]) -> int:
    return sum(len(c) for c in chunks)


def _verify_complete(
    layout: BackupLayout, objects: list[ObjectEntry], totals: dict[str, int]
) -> None:
    """Every row the snapshot counted is in some object, or the backup is not complete."""
    exported: dict[str, int] = {}
    for obj in objects:
        for table in obj.tables:
            exported[table.name] = exported.get(table.name, 0) + table.row_count
    missing = {
        name: (total, exported.get(name, 0))
        for name, total in totals.items()
        if exported.get(name, 0) != total
    }
    if missing:
        detail = ", ".join(f"{n}: {got} of {total} rows" for n, (total, got) in missing.items())
        raise CheckFailed(
            f"the export is incomplete ({detail}); rows whose tenant is missing cannot be "
            "backed up per tenant: run `hardening canaries` to find them. No manifest was written."
        )


def run_backup(
    url: str,
    store: BackupStore,
    keyring: Keyring,
    *,
    dry_run: bool = False,
    on_object: Callable[[str, int, int], None] | None = None,
) -> BackupResult:
    """Take one backup of the database at ``url`` into ``store`` (or nowhere, with ``dry_run``).

    ``on_object(name, done, total)`` is called after each object, for progress displays.
    """
    started = time.perf_counter()
    with connect(url, autocommit=True) as lock_conn:
        got = lock_conn.execute("SELECT pg_try_advisory_lock(%s) AS ok", (BACKUP_LOCK_KEY,))
        if not got.fetchone()["ok"]:
            raise CheckFailed(
                "another backup of this database is running; wait for it to finish (or check "
                "the Dagster run queue) before starting a new one."
            )
        try:
            return _run_locked(url, store, keyring, dry_run, on_object, started)
        finally:
            if not lock_conn.closed:
                lock_conn.execute("SELECT pg_advisory_unlock(%s)", (BACKUP_LOCK_KEY,))


def _run_locked(
    url: str,
    store: BackupStore,
    keyring: Keyring,
    dry_run: bool,
    on_object: Callable[[str, int, int], None] | None,
    started: float,
) -> BackupResult:
    data_key = generate_data_key()
    with connect(url) as conn:
        open_snapshot(conn)
        layout = discover_layout(conn)
        info = read_snapshot_info(conn, layout)
        created_at = info.taken_at.astimezone(UTC)
        backup_id = new_backup_id(created_at)
        folder = backup_folder("", backup_id, created_at)
        wrapped = keyring.wrap_data_key(data_key, backup_id)
        plan: list[tuple[str, str | None]] = [
            (tenant_object_name(t), t) for t in info.tenant_ids
        ] + [(NON_TENANT_OBJECT_NAME, None)]
        objects: list[ObjectEntry] = []
        object_seconds: dict[str, float] = {}
        stored = 0
        for index, (name, tenant_id) in enumerate(plan, 1):
            object_started = time.perf_counter()
            tables = layout.tenant_tables if tenant_id is not None else layout.shared_tables
            stream = TableStream(conn, tables, tenant_id)
            encoder = ObjectEncoder(stream, data_key, backup_id=backup_id, object_name=name)
            if dry_run:
                _discard(encoder)
            else:
                stored += store.put(folder + name, encoder)
            stats = encoder.stats
            objects.append(
                ObjectEntry(
                    name=name,
                    tenant_id=tenant_id,
                    tables=tuple(stream.entries),
                    plaintext_bytes=stats.plaintext_bytes,
                    plaintext_sha256=stats.plaintext_sha256,
                    compressed_bytes=stats.compressed_bytes,
                    ciphertext_bytes=stats.ciphertext_bytes,
                    sha256=stats.ciphertext_sha256,
                )
            )
            object_seconds[name] = time.perf_counter() - object_started
            if on_object:
                on_object(name, index, len(plan))
        conn.rollback()
    _verify_complete(layout, objects, info.table_totals)
    manifest = Manifest(
        backup_id=backup_id,
        created_at=created_at,
        finished_at=datetime.now(UTC),
        database=info.database,
        schema=info.schema,
        key_id=wrapped.key_id,
        wrapped_data_key=wrapped.ciphertext,
        objects=tuple(objects),
        metadata={"tool": f"hardening_pipeline {__version__}", "dry_run": str(dry_run).lower()},
    )
    signed = sign_manifest(manifest, keyring)
    manifest_key = folder + MANIFEST_NAME
    if not dry_run:
        stored += store.put(manifest_key, [signed])
    return BackupResult(
        manifest=manifest,
        location=store.describe() + "/" + folder.rstrip("/"),
        dry_run=dry_run,
        seconds=time.perf_counter() - started,
        manifest_key=manifest_key,
        stored_bytes=stored,
        object_seconds=object_seconds,
    )
