"""One backup run: snapshot -> per-tenant COPY -> zstd -> chunked AES-256-GCM -> store -> manifest.

The manifest is written last and only after every object is stored and every table's row count
matches the snapshot's total, so a backup that did not finish has no manifest and does not exist
for readers (retention removes its debris later). Two runs against one database cannot
interleave: a run holds an advisory lock on the source database for its whole length and a
second run refuses at once.

With ``workers > 1`` the objects are exported by that many threads, each with its own
connection joined to the main connection's exported snapshot (``pg_export_snapshot``), so every
object still shows the same instant. zstd and AES-GCM release the GIL and COPY waits on the
socket, so threads overlap real work. The manifest lists objects in the same order whatever
the number of workers, and a failure in any worker fails the run before the manifest.

Every read waits at most ``lock_timeout`` for a table lock: a session holding ``LOCK TABLE`` (any
role with UPDATE can) turns the run red, naming that session, instead of stalling it for ever.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import psycopg

from hardening_pipeline import __version__
from hardening_pipeline.backup import dependencies
from hardening_pipeline.backup.app_schema import (
    SCHEMA_OBJECT_NAME,
    check_schemas_exist,
    dump_schema,
    read_extensions,
    read_roles,
    read_sequences,
    server_version_num,
)
from hardening_pipeline.backup.crypto import Keyring, data_key_id, generate_data_key
from hardening_pipeline.backup.erased_audit import record_erased_audit
from hardening_pipeline.backup.export import (
    DEFAULT_SCHEMAS,
    BackupLayout,
    TableStream,
    discover_layout,
    export_snapshot,
    join_snapshot,
    omit_erased,
    open_snapshot,
    read_snapshot_info,
    verify_complete,
)
from hardening_pipeline.backup.manifest import (
    MANIFEST_NAME,
    NON_TENANT_OBJECT_NAME,
    AppSchemaEntry,
    Manifest,
    ObjectEntry,
    SchemaExtension,
    SchemaRole,
    SectionEntry,
    SequenceValue,
    backup_folder,
    new_backup_id,
    tenant_object_name,
)
from hardening_pipeline.backup.manifest_signing import sign_manifest
from hardening_pipeline.backup.object_format import ObjectEncoder
from hardening_pipeline.backup.pg_tools import PgTool, find_pg_tool
from hardening_pipeline.backup.store import BackupStore
from hardening_pipeline.backup.tenant_digests import tenant_digest_key
from hardening_pipeline.backup.tenant_key_use import BackupTenantKeys, prepare_tenant_keys
from hardening_pipeline.db.blockers import describe_lock_blockers, exclusive_lock_holders
from hardening_pipeline.db.catalog import read_catalog
from hardening_pipeline.db.connection import connect
from hardening_pipeline.db.job_locks import job_locks_available, take_job_lock
from hardening_pipeline.errors import CheckFailed, ConfigError, HardeningError
from hardening_pipeline.hardening.status import run_status_check

log = logging.getLogger(__name__)

# The connection holding the backup's job lock, as pg_stat_activity shows it.
LOCK_CONNECTION_NAME = "hardening backup lock"
# Databases migrated before 013 only. Distinct from the migration lock; "hpbackup" in ASCII.
BACKUP_LOCK_KEY = 0x6870_6261_636B_7570
# Each worker holds a connection for the whole run; more than this is a typo, not a plan.
MAX_WORKERS = 32
# Seconds any read of a backup waits for a table lock before the run fails red.
DEFAULT_LOCK_TIMEOUT = 60.0


class BackupInterrupted(HardeningError):
    """The database failed part-way (connection cut, server restart): worth running again."""


class BackupBlocked(CheckFailed):
    """A session held a table lock longer than the backup's bound; nothing was published."""


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


def run_backup(
    url: str,
    store: BackupStore,
    keyring: Keyring,
    *,
    dry_run: bool = False,
    workers: int = 1,
    on_object: Callable[[str, int, int], None] | None = None,
    schemas: Sequence[str] = DEFAULT_SCHEMAS,
    pg_dump_path: str | None = None,
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
) -> BackupResult:
    """Take one backup of the database at ``url`` into ``store`` (or nowhere, with ``dry_run``).

    ``workers`` objects are exported at a time, each by its own connection on the same
    snapshot. ``on_object(name, done, total)`` is called after each object, for progress
    displays (from the worker threads, one call at a time). ``schemas`` (``BACKUP_SCHEMAS``)
    are backed up whole: their DDL by ``pg_dump`` (``pg_dump_path``, or found) and every
    table's rows. A read that waits ``lock_timeout`` seconds for a table lock fails the run.
    """
    if not lock_timeout > 0:
        raise ConfigError(
            f"the backup's lock timeout must be above 0 seconds (got {lock_timeout!r})."
        )
    if isinstance(workers, bool) or not isinstance(workers, int) or not 1 <= workers <= MAX_WORKERS:
        raise ConfigError(
            f"backup workers must be a whole number from 1 to {MAX_WORKERS} (got {workers!r})."
        )
    started = time.perf_counter()
    # Named, so pg_stat_activity tells the idle-in-transaction lock holder from the export.
    with connect(url, application_name=LOCK_CONNECTION_NAME) as lock_conn:
        advisory = _lock_backup_job(lock_conn)
        try:
            return _run_locked(
                url,
                store,
                keyring,
                _Options(dry_run, workers, tuple(schemas), pg_dump_path, lock_timeout),
                on_object,
                started,
            )
        except psycopg.errors.LockNotAvailable as exc:
            raise _blocked(url, tuple(schemas), lock_timeout) from exc
        except psycopg.Error as exc:
            # A raw driver error would reach the CLI as a traceback and Dagster as noise; say
            # what it means for the backup instead.
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise BackupInterrupted(
                f"the backup was interrupted by a database error ({reason}); no manifest was "
                "written, so this run left no backup: check the database and run it again."
            ) from exc
        finally:
            if not lock_conn.closed and not lock_conn.broken:
                # The lock dies with its session anyway; a failed release must not hide the cause.
                with contextlib.suppress(psycopg.Error):
                    if advisory:
                        lock_conn.execute("SELECT pg_advisory_unlock(%s)", (BACKUP_LOCK_KEY,))
                    lock_conn.rollback()


def _blocked(url: str, schemas: tuple[str, ...], lock_timeout: float) -> BackupBlocked:
    """The red sentence for a read that gave up on a table lock, naming who held it."""
    who, fix = describe_lock_blockers(exclusive_lock_holders(url, schemas))
    return BackupBlocked(
        f"the backup waited {lock_timeout:g} s for a table lock and gave up ({who}); no manifest "
        f"was written, so this run left no backup: {fix}, then run the backup again."
    )


def _bound_lock_waits(conn: psycopg.Connection, seconds: float) -> None:
    """Make ``conn``'s open transaction wait at most ``seconds`` for any lock."""
    conn.execute(
        "SELECT set_config('lock_timeout', %s, true)", (f"{max(1, int(seconds * 1000))}ms",)
    )


def _lock_backup_job(lock_conn: psycopg.Connection) -> bool:
    """Take the backup's job lock in ``lock_conn``'s transaction, held for the whole run.

    A database migrated before 013 has no job-lock table and keeps the advisory lock (True).
    """
    if job_locks_available(lock_conn):
        take_job_lock(lock_conn, "backup", lock_timeout_ms=None)
        return False
    got = lock_conn.execute("SELECT pg_try_advisory_lock(%s) AS ok", (BACKUP_LOCK_KEY,))
    if not got.fetchone()["ok"]:
        raise CheckFailed(
            "another backup of this database is running; wait for it to finish (or check "
            "the Dagster run queue) before starting a new one."
        )
    return True


@dataclass(frozen=True)
class _Options:
    dry_run: bool
    workers: int
    schemas: tuple[str, ...]
    pg_dump_path: str | None
    lock_timeout: float


@dataclass(frozen=True)
class _Job:
    """One object of the plan: its place in the manifest, its name and its tenant."""

    index: int
    name: str
    tenant_id: str | None


class _ObjectExporter:
    """Exports planned objects from a shared work list, on as many connections as workers.

    Results land at their plan index, so the manifest order never depends on which worker
    finished first. The first failure stops every worker from starting another object and is
    re-raised once all of them have stopped.
    """

    def __init__(
        self,
        layout: BackupLayout,
        jobs: list[_Job],
        store: BackupStore,
        data_key: bytes,
        tenant_keys: BackupTenantKeys,
        backup_id: str,
        folder: str,
        dry_run: bool,
        on_object: Callable[[str, int, int], None] | None,
        lock_timeout: float,
    ) -> None:
        self._lock_timeout = lock_timeout
        self._layout = layout
        self._store = store
        self._data_key = data_key
        self._tenant_keys = tenant_keys
        self._backup_id = backup_id
        self._folder = folder
        self._dry_run = dry_run
        self._on_object = on_object
        self._total = len(jobs)
        # Largest first: the shared object (the whole audit log) is usually the biggest, and
        # starting it last would leave one worker running alone at the end.
        self._pending = sorted(jobs, key=lambda j: (j.tenant_id is not None, j.index))
        self._lock = threading.Lock()
        self._done = 0
        self._failure: BaseException | None = None
        self.entries: list[ObjectEntry | None] = [None] * len(jobs)
        self.seconds: list[float] = [0.0] * len(jobs)
        self.stored = 0

    def _next(self) -> _Job | None:
        with self._lock:
            if self._failure is not None or not self._pending:
                return None
            return self._pending.pop(0)

    def _export(self, conn: psycopg.Connection, job: _Job) -> None:
        started = time.perf_counter()
        tenant_key = self._tenant_keys.key_for(job.tenant_id)
        # A tenant's rows and digests under the tenant's own key (erasable), the rest shared.
        digest_key = tenant_digest_key(tenant_key)
        stream = TableStream(conn, self._layout.tables_of(job.tenant_id), job.tenant_id, digest_key)
        key = tenant_key or self._data_key
        encoder = ObjectEncoder(
            stream, key, backup_id=self._backup_id, object_name=job.name, digest_key=digest_key
        )
        stored = (
            _discard(encoder)
            if self._dry_run
            else self._store.put(self._folder + job.name, encoder)
        )
        stats = encoder.stats
        entry = ObjectEntry(
            name=job.name,
            tenant_id=job.tenant_id,
            tables=tuple(stream.entries),
            plaintext_bytes=stats.plaintext_bytes,
            plaintext_sha256=stats.plaintext_sha256,
            compressed_bytes=stats.compressed_bytes,
            ciphertext_bytes=stats.ciphertext_bytes,
            sha256=stats.ciphertext_sha256,
            tenant_key_id=data_key_id(tenant_key).hex() if tenant_key else None,
        )
        with self._lock:
            self.entries[job.index] = entry
            self.seconds[job.index] = time.perf_counter() - started
            if not self._dry_run:
                self.stored += stored
            self._done += 1
            if self._on_object:
                self._on_object(job.name, self._done, self._total)

    def work(self, conn: psycopg.Connection) -> None:
        """Export objects on ``conn`` until the list is empty or some worker failed."""
        try:
            while (job := self._next()) is not None:
                self._export(conn, job)
        except BaseException as exc:  # recorded for the caller; the run fails with it
            with self._lock:
                if self._failure is None:
                    self._failure = exc

    def work_joined(self, url: str, snapshot_id: str) -> None:
        """A worker of its own: a new connection on the exported snapshot, closed afterwards."""
        try:
            conn = connect(url)
        except BaseException as exc:
            with self._lock:
                self._failure = self._failure or exc
            return
        with conn:
            try:
                join_snapshot(conn, snapshot_id)
                _bound_lock_waits(conn, self._lock_timeout)
            except BaseException as exc:
                with self._lock:
                    self._failure = self._failure or exc
                return
            self.work(conn)
            with contextlib.suppress(psycopg.Error):
                conn.rollback()

    def raise_failure(self) -> None:
        if self._failure is not None:
            raise self._failure


class _SchemaExport:
    """The schema object: ``pg_dump`` runs beside the row export, on the same snapshot.

    The dump runs in its own thread because two ``pg_dump`` processes cost a few hundred
    milliseconds of mostly waiting, which the row export can fill. The (small) object is
    stored after the data objects, from the backup's own thread, so a run that dies half-way
    leaves the same debris as before backups carried the schema.
    """

    def __init__(
        self,
        url: str,
        snapshot_id: str,
        schemas: tuple[str, ...],
        pg_dump: PgTool,
        store: BackupStore,
        data_key: bytes,
        backup_id: str,
        folder: str,
        dry_run: bool,
        lock_timeout: float | None = None,
    ) -> None:
        self._args = (url, snapshot_id, schemas, pg_dump)
        self._lock_timeout = lock_timeout
        self._store = store
        self._data_key = data_key
        self._backup_id = backup_id
        self._folder = folder
        self._dry_run = dry_run
        self.sections: tuple[SectionEntry, ...] = ()
        self.stats = None
        self.stored = 0
        self.failure: BaseException | None = None
        self._dumped: dict[str, bytes] = {}
        self._thread = threading.Thread(target=self._run, name="backup-schema", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def join(self) -> None:
        self._thread.join()

    def raise_failure(self) -> None:
        if self.failure is not None:
            raise self.failure

    def _run(self) -> None:
        try:
            self._dumped = dump_schema(*self._args, lock_wait_timeout=self._lock_timeout)
        except BaseException as exc:  # re-raised by raise_failure() in the backup's thread
            self.failure = exc

    def store_object(self) -> None:
        """Encrypt and store the dump (after ``join`` and ``raise_failure``)."""
        dumped = self._dumped
        self.sections = tuple(
            SectionEntry(name, len(text), hashlib.sha256(text).hexdigest())
            for name, text in dumped.items()
        )
        encoder = ObjectEncoder(
            list(dumped.values()),
            self._data_key,
            backup_id=self._backup_id,
            object_name=SCHEMA_OBJECT_NAME,
        )
        if self._dry_run:
            _discard(encoder)
        else:
            self.stored = self._store.put(self._folder + SCHEMA_OBJECT_NAME, encoder)
        self.stats = encoder.stats


def _source_red_lines(url: str) -> tuple[str, ...] | None:
    """The status lines red on the source now; None when the check cannot run (not recorded).

    A drill of this backup then calls red only what the restore broke, and shows the rest as
    inherited from the source.
    """
    try:
        report = run_status_check(url)
    except (HardeningError, psycopg.Error):
        return None
    return tuple(sorted(line.name for line in report.lines if not line.passed))


def _run_locked(
    url: str,
    store: BackupStore,
    keyring: Keyring,
    options: _Options,
    on_object: Callable[[str, int, int], None] | None,
    started: float,
) -> BackupResult:
    dry_run, workers = options.dry_run, options.workers
    data_key = generate_data_key()
    with connect(url) as conn:
        open_snapshot(conn)
        _bound_lock_waits(conn, options.lock_timeout)
        # Refused here, before a row is read: an older pg_dump would write a schema the
        # restore cannot trust (or refuse half-way through the backup).
        pg_dump = find_pg_tool("pg_dump", server_version_num(conn), options.pg_dump_path)
        check_schemas_exist(conn, options.schemas)
        # Before anything is stored: a schema that uses a schema left out would not restore.
        dependencies.check_dependencies_carried(conn, options.schemas)
        dependencies.check_tenant_tables_carried(conn, options.schemas)
        layout = discover_layout(conn, options.schemas)
        info = read_snapshot_info(conn, layout)
        catalog = read_catalog(conn, options.schemas)
        roles = read_roles(conn, options.schemas)
        extensions = tuple(SchemaExtension(*e) for e in read_extensions(conn))
        sequences = tuple(SequenceValue(*q) for q in read_sequences(conn, options.schemas))
        created_at = info.taken_at.astimezone(UTC)
        backup_id = new_backup_id(created_at)
        folder = backup_folder("", backup_id, created_at)
        wrapped = keyring.wrap_data_key(data_key, backup_id)
        # Recorded in both ledger copies before any object encrypted under them is stored.
        tenant_keys = prepare_tenant_keys(
            store, url, keyring, info.tenant_ids, dry_run=dry_run, now=created_at
        )
        erased = [e.tenant_id for e in tenant_keys.ledger.erased]
        layout = omit_erased(conn, layout, info.table_totals, erased)
        if not dry_run:  # the seals of the audit rows left out, before any object is stored
            record_erased_audit(store, conn, erased)
        plan: list[tuple[str, str | None]] = [
            (tenant_object_name(t), t) for t in info.tenant_ids
        ] + [(NON_TENANT_OBJECT_NAME, None)]
        jobs = [_Job(i, name, tenant) for i, (name, tenant) in enumerate(plan)]
        exporter = _ObjectExporter(
            layout,
            jobs,
            store,
            data_key,
            tenant_keys,
            backup_id,
            folder,
            dry_run,
            on_object,
            options.lock_timeout,
        )
        # The main connection works too; pg_dump and the other workers read its snapshot,
        # which stays valid because this transaction stays open until all of them finished.
        snapshot_id = export_snapshot(conn)
        schema_export = _SchemaExport(
            url,
            snapshot_id,
            options.schemas,
            pg_dump,
            store,
            data_key,
            backup_id,
            folder,
            dry_run,
            lock_timeout=options.lock_timeout,
        )
        schema_export.start()
        threads = [
            threading.Thread(
                target=exporter.work_joined,
                args=(url, snapshot_id),
                name=f"backup-worker-{n}",
                daemon=True,
            )
            for n in range(1, workers)
        ]
        for thread in threads:
            thread.start()
        exporter.work(conn)
        for thread in threads:
            thread.join()
        schema_export.join()
        exporter.raise_failure()
        schema_export.raise_failure()
        conn.rollback()
    schema_export.store_object()
    # After the export, never in its way: the check reads tables an export may be waiting for.
    source_red = _source_red_lines(url)
    stats = schema_export.stats
    assert stats is not None
    app_schema = AppSchemaEntry(
        name=SCHEMA_OBJECT_NAME,
        schemas=options.schemas,
        pg_dump_version=pg_dump.version,
        sections=schema_export.sections,
        roles=tuple(SchemaRole(r.name, r.bypassrls) for r in roles),
        catalog=catalog,
        source_red_lines=source_red,
        extensions=extensions,
        sequences=sequences,
        plaintext_bytes=stats.plaintext_bytes,
        plaintext_sha256=stats.plaintext_sha256,
        compressed_bytes=stats.compressed_bytes,
        ciphertext_bytes=stats.ciphertext_bytes,
        sha256=stats.ciphertext_sha256,
    )
    objects = [e for e in exporter.entries if e is not None]
    if len(objects) != len(plan):  # unreachable without a failure above; never publish less
        raise CheckFailed(
            f"only {len(objects)} of {len(plan)} backup objects were exported; no manifest was "
            "written."
        )
    object_seconds = {job.name: exporter.seconds[job.index] for job in jobs}
    stored = exporter.stored + schema_export.stored
    verify_complete(objects, info.table_totals)
    manifest = Manifest(
        backup_id=backup_id,
        created_at=created_at,
        finished_at=datetime.now(UTC),
        database=info.database,
        schema=info.schema,
        key_id=wrapped.key_id,
        wrapped_data_key=wrapped.ciphertext,
        objects=tuple(objects),
        metadata={
            "tool": f"hardening_pipeline {__version__}",
            "dry_run": str(dry_run).lower(),
            **tenant_keys.manifest_metadata(),
        },
        app_schema=app_schema,
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
