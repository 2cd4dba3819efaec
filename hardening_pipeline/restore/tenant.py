"""Bring one tenant back from a backup into a database you name (the "we deleted it" day).

The target must already have the schema (``hardening migrate``), or hold nothing at all in the
backed-up schemas: then the backup's own schema is rebuilt there first (roles, pre-data,
post-data), with its migration record and its lookup tables but none of the shared rows that
are every tenant's (the audit log, tables pointing at tenants' rows). Without ``merge`` the restore
refuses a database that still holds the tenant, so it never mixes old and new data by accident;
with ``merge`` it inserts only the rows that are missing and leaves existing ones alone. Rows go
in as ``service_role`` with the actor ``service_role:restore:<backup-id>``, so the audit log
records the restore like any other write.

It restores exactly what was asked or nothing: the newest backup, refused when that one fails
verification (an older one only when named with ``--backup-id``), and only rows that carry the
tenant's id: one row of another tenant, or of none, and none of the tenant's rows are committed.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import psycopg

from hardening_pipeline.backup.catalog import (
    BackupCatalog,
    NoBackupError,
    StoredBackup,
    find_backup,
    list_backups,
)
from hardening_pipeline.backup.crypto import Keyring
from hardening_pipeline.backup.export import FOREIGN_KEY_EDGES
from hardening_pipeline.backup.manifest import Manifest, ObjectEntry
from hardening_pipeline.backup.store import BackupStore
from hardening_pipeline.backup.tenant_key_copies import read_store_ledger
from hardening_pipeline.backup.tenant_key_use import ObjectKeys, erased_sentence
from hardening_pipeline.backup.tenant_keys import TenantErasedError
from hardening_pipeline.db.connection import connect
from hardening_pipeline.db.migrations import read_applied
from hardening_pipeline.errors import CheckFailed, ConfigError
from hardening_pipeline.restore.archive import open_archive
from hardening_pipeline.restore.binding import SourceIdentity, foreign_backup_sentence, is_of
from hardening_pipeline.restore.bulk_load import (
    MergeCount,
    _split,
    copy_in,
    merge_tenant,
    reset_sequences,
    restore_sequence_values,
)
from hardening_pipeline.restore.reader import TableReader, fetched_backup, read_schema_sections
from hardening_pipeline.restore.schema import SchemaRestore
from hardening_pipeline.restore.sessions import OneSession, is_superuser
from hardening_pipeline.settings import check_database_url

MIGRATIONS_TABLE = "hardening.schema_migrations"


_USER_TABLES = """
SELECT count(*) AS n FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p', 'v', 'm') AND n.nspname = ANY(%s)
"""


def _is_empty(url: str, schemas: Sequence[str]) -> bool:
    """No table or view in any of the backed-up schemas: a database the app was never in."""
    with connect(url) as conn:
        return conn.execute(_USER_TABLES, (list(schemas),)).fetchone()["n"] == 0


def _reference_tables(
    conn: psycopg.Connection, manifest: Manifest, shared: ObjectEntry
) -> set[str]:
    """Shared tables that belong to no tenant: no tenant column, no key into tenants' rows.

    Lookup tables (plans, countries) come back whole, because the tenant's rows refer to them;
    the audit log, the kit's seal records and anything pointing at a tenant table stay out.
    """
    tenant_tables = {t.name for o in manifest.objects if o.tenant_id is not None for t in o.tables}
    excluded = {
        t.name
        for t in shared.tables
        if "tenant_id" in t.columns
        or (t.name.startswith("hardening.") and t.name != MIGRATIONS_TABLE)
    }
    edges = [(r["child"], r["parent"]) for r in conn.execute(FOREIGN_KEY_EDGES).fetchall()]
    changed = True
    while changed:
        changed = False
        for child, parent in edges:
            if child not in excluded and (parent in excluded or parent in tenant_tables):
                excluded.add(child)
                changed = True
    return {t.name for t in shared.tables} - excluded


def rebuild_schema(
    conn: psycopg.Connection, store: BackupStore, backup: StoredBackup, data_key: bytes
) -> None:
    """Give an empty target the backup's schema, its migration record and its lookup tables.

    Runs in ``conn``'s transaction, as the role the user connected as (never a superuser: the
    backup's code runs there with that role's rights only). Pre-data, then the lookup rows,
    then keys, triggers and policies, so no app trigger fires while rows go in. The tenant's
    rows then go in through the audited merge like on any other target. Shared rows that are
    every tenant's (the audit log, tables pointing at tenants' rows) stay out: this restores
    one tenant.
    """
    manifest = backup.manifest
    assert manifest is not None and manifest.app_schema is not None
    if is_superuser(conn):
        raise ConfigError(
            "--into connects as a superuser, and rebuilding the backup's schema there would run "
            "its owners' code with a superuser's rights; connect as the role that owns the app "
            "(on Supabase: postgres), or migrate the target and restore the rows only."
        )
    shared = next((o for o in manifest.objects if o.tenant_id is None), None)
    names = {manifest.app_schema.name} | ({shared.name} if shared else set())
    with fetched_backup(store, manifest, backup.folder, only=names) as fetched:
        sections = read_schema_sections(fetched[manifest.app_schema.name], manifest, data_key)
        roles = [r.name for r in manifest.app_schema.roles]
        with open_archive(sections, manifest.app_schema.pg_dump_version, roles) as archive:
            schema = SchemaRestore(OneSession(conn), archive, manifest.app_schema)
            rebuild = schema.prepare()
            if not rebuild.failed:
                # Keys before the lookup rows: which tables are lookups is read from the
                # foreign keys. Triggers come after, so none fires while rows go in.
                schema.build_all([*schema.keys, *schema.foreign], rebuild, workers=1)
            # pg_restore's session settings (row_security off, an empty search_path) must not
            # reach the rest, which names tables as the manifest does and runs under policies.
            conn.execute("RESET ALL")
            if not rebuild.failed and shared is not None:
                wanted = _reference_tables(conn, manifest, shared)
                reader = TableReader(fetched[shared.name], manifest, data_key)
                for table, chunks in reader:
                    if table.name in wanted:
                        copy_in(conn, _split(table.name), table.columns, chunks)
                    else:
                        for _ in chunks:  # read through: the digests are still checked
                            pass
                reset_sequences(conn, sorted(wanted))
            if not rebuild.failed:
                restore_sequence_values(conn, manifest.app_schema.sequences)
                schema.finish_rest(rebuild)
            conn.execute("RESET ALL")
        if rebuild.failed:
            raise CheckFailed(
                f"the backup's schema could not be rebuilt in the target ({rebuild.failed[0]}); "
                "nothing was written: install the extensions and roles the app needs there, or "
                "restore into a database that already has the app's schema."
            )


@dataclass
class TenantRestoreResult:
    backup_id: str
    tenant_id: str
    counts: list[MergeCount]
    created_at: datetime

    @property
    def inserted(self) -> int:
        return sum(c.inserted for c in self.counts)


def _chosen_backup(catalog: BackupCatalog, backup_id: str | None, tenant: str) -> StoredBackup:
    """The named backup, or the newest one only if it verifies: never an older one unasked.

    Quietly restoring the backup before a broken newest one would bring back rows deleted
    since and undo edits, and breaking the newest takes only write access to the store.
    """
    try:
        return find_backup(catalog, backup_id, newest_must_be_valid=True)
    except NoBackupError as exc:
        older = catalog.newest
        if backup_id is not None or older is None:
            raise
        taken = older.created_at.isoformat(timespec="seconds")
        raise NoBackupError(
            f"{str(exc).rstrip('.')}, so tenant {tenant} was not restored from an older backup "
            "in its place; check the store, then name an older backup with --backup-id <id> "
            f"(the newest verified one is {older.backup_id}, taken at {taken})."
        ) from None


def restore_tenant(
    store: BackupStore,
    keyring: Keyring,
    *,
    tenant_id: str,
    target_url: str,
    backup_id: str | None = None,
    merge: bool = False,
    source: SourceIdentity | None = None,
) -> TenantRestoreResult:
    try:
        tenant = str(uuid.UUID(tenant_id))
    except ValueError:
        raise ConfigError(f"--tenant {tenant_id!r} is not a UUID; pass the tenant's id.") from None
    check_database_url(target_url, "--into")
    catalog = list_backups(store, keyring)
    backup = _chosen_backup(catalog, backup_id, tenant)
    manifest = backup.manifest
    assert manifest is not None
    if backup_id is None and source is not None and not is_of(manifest.database, source):
        raise CheckFailed(foreign_backup_sentence(manifest.backup_id, manifest.database, source))
    entries = [o for o in manifest.objects if o.tenant_id == tenant]
    copy = source.ledger_copy if source else None
    keys = ObjectKeys(store, manifest, keyring, catalog=catalog, database_copy=copy)
    if not entries:
        _refuse_if_erased(store, keyring, tenant, manifest.backup_id)
        raise ConfigError(
            f"backup {manifest.backup_id} holds no tenant {tenant}; pick another with --backup-id."
        )
    tenant_key = keys.for_object(entries[0])
    data_key = keys.shared
    rebuild = manifest.app_schema is not None and _is_empty(target_url, manifest.app_schema.schemas)
    with connect(target_url, client_encoding="UTF8") as conn:
        if rebuild:
            # One transaction with the tenant's rows below: a failure leaves nothing behind.
            rebuild_schema(conn, store, backup, data_key)
        applied = {m.filename for m in read_applied(conn)}
        missing = [m for m in manifest.schema.applied_migrations if m not in applied]
        if missing:
            raise ConfigError(
                f"the target database lacks migration(s) {', '.join(missing)}; run "
                "`hardening migrate` against it first."
            )
        exists = conn.execute("SELECT 1 FROM public.tenants WHERE id = %s", (tenant,)).fetchone()
        if not rebuild:
            conn.rollback()
        if exists and not merge:
            raise ConfigError(
                f"the target database already holds tenant {tenant}; pass --merge to add only "
                "the rows that are missing, or restore into another database."
            )
        with fetched_backup(store, manifest, backup.folder, only={entries[0].name}) as fetched:
            reader = TableReader(fetched[entries[0].name], manifest, tenant_key)
            merging: list[str] = []  # the table the merge is on when it fails

            def tables():
                for entry, chunks in reader:
                    merging[:] = [entry.name if "." in entry.name else f"public.{entry.name}"]
                    yield entry, chunks

            try:
                with conn.transaction():
                    counts = merge_tenant(
                        conn,
                        tables(),
                        tenant_id=tenant,
                        actor=f"service_role:restore:{manifest.backup_id}",
                    )
            except psycopg.Error as exc:
                # The target's schema or rows disagree with the backup (a column it lacks, a
                # parent row that is gone): one sentence, nothing written, no traceback.
                reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                raise CheckFailed(
                    f"tenant {tenant} could not be restored into the target ({reason}); nothing "
                    f"was written: {_merge_fix(exc, merging[0] if merging else '')}"
                ) from exc
    return TenantRestoreResult(manifest.backup_id, tenant, counts, manifest.created_at)


def _refuse_if_erased(store: BackupStore, keyring: Keyring, tenant: str, backup_id: str) -> None:
    """A tenant erased since: say so, rather than suggest another backup that cannot help."""
    found = read_store_ledger(store, keyring)
    erased = next((e for e in found[0].erased if e.tenant_id == tenant), None) if found else None
    if erased is not None:
        raise TenantErasedError(erased_sentence(erased, backup_id))


_EMPTY_TARGET = "or restore into an empty database, where the backup's own schema is rebuilt first."


def _merge_fix(exc: psycopg.Error, table: str) -> str:
    """What to do about a merge the target's schema or rows refused, naming table and column.

    Missing migrations are refused before the merge, so what is left is the app's own drift
    since the backup, or rows the target no longer has: ``hardening migrate`` fixes neither.
    """
    diag = exc.diag
    table = f"{diag.schema_name}.{diag.table_name}" if diag.table_name else table or "a table"
    column = diag.column_name or ""
    if not column and (found := re.search(r'column "([^"]+)"', diag.message_primary or "")):
        column = found[1]
    if isinstance(exc, psycopg.errors.UndefinedColumn):
        return (
            f"{table} has no column {column} there, which the backup's rows carry; add it back "
            f"to {table} as the app's schema defined it when the backup was taken, " + _EMPTY_TARGET
        )
    if isinstance(exc, psycopg.errors.UndefinedTable):
        return f"the target has no table {table}; create it as the app's schema defines it, " + (
            _EMPTY_TARGET
        )
    if isinstance(exc, psycopg.errors.NotNullViolation):
        return (
            f"{table}.{column} is NOT NULL there but the backup's rows have no value for it (a "
            f"column added since the backup); give {table}.{column} a DEFAULT, " + _EMPTY_TARGET
        )
    if isinstance(exc, psycopg.errors.ForeignKeyViolation):
        return (
            f"a row of {table} refers to a row the target no longer has "
            f"({diag.constraint_name}); restore or recreate that row first, " + _EMPTY_TARGET
        )
    return f"bring {table} to the shape it had in the backup, " + _EMPTY_TARGET
