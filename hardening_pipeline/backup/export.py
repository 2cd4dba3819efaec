"""Read a database's tenant data out of one consistent snapshot, as streams of ``COPY`` text.

Everything is read inside a single ``REPEATABLE READ READ ONLY`` transaction, so every object of
a backup shows the same instant. Rows leave Postgres through ``COPY (SELECT ... ORDER BY pk) TO
STDOUT`` and are handed on chunk by chunk, never collected, so memory stays flat whatever the
table size. The ordering makes each table's text, and so its SHA-256, reproducible: a restore
re-exports the restored database with the same code and must get the same digests.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime

import psycopg
from psycopg import sql
from psycopg.rows import tuple_row

from hardening_pipeline.backup.ledger_table import LEDGER_HOME, ledger_shaped_tables
from hardening_pipeline.backup.manifest import (
    DatabaseIdentity,
    ObjectEntry,
    SchemaVersion,
    TableEntry,
)
from hardening_pipeline.backup.tenant_digests import new_digest
from hardening_pipeline.db.tenant_tables import display_name, find_tenant_tables
from hardening_pipeline.errors import CheckFailed

# What BACKUP_SCHEMAS defaults to; generated columns are left out of every column list because
# Postgres computes them again on load and refuses values for them.
DEFAULT_SCHEMAS = ("public", "hardening")

_TABLES_QUERY = """
SELECT n.nspname AS schema_name, c.relname AS table_name,
       array_agg(a.attname ORDER BY a.attnum) AS columns,
       coalesce((SELECT array_agg(pa.attname ORDER BY k.ord)
                 FROM pg_catalog.pg_index i
                 CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
                 JOIN pg_catalog.pg_attribute pa
                   ON pa.attrelid = i.indrelid AND pa.attnum = k.attnum
                 WHERE i.indrelid = c.oid AND i.indisprimary), '{}') AS primary_key
FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
     AND a.attgenerated = ''
WHERE c.relkind IN ('r', 'p') AND n.nspname = ANY(%s)
  AND NOT (c.relkind = 'r' AND c.relispartition)
GROUP BY n.nspname, c.relname, c.oid
ORDER BY n.nspname, c.relname
"""

# Child -> parent table of every foreign key (self-references left out: they order nothing).
FOREIGN_KEY_EDGES = """
SELECT c.conrelid::regclass::text AS child, c.confrelid::regclass::text AS parent
FROM pg_catalog.pg_constraint c
WHERE c.contype = 'f' AND c.conrelid <> c.confrelid
"""


# Never in a backup object: the key ledger's database copy holds every tenant's wrapped key, and
# a wrapped key inside a locked backup could never be destroyed by ``erase-tenant``. Renamed or
# moved it keeps its columns, so discover_layout also leaves out every table shaped like it.
NEVER_BACKED_UP = frozenset({LEDGER_HOME})


AUDIT_LOG = ("public", "audit_events")


# How the manifest names a table: bare in ``public``, ``schema.table`` elsewhere.
manifest_table_name = display_name


@dataclass(frozen=True)
class TableSpec:
    """One table to export: its columns in order and how its rows are scoped and sorted."""

    schema: str
    name: str
    columns: tuple[str, ...]
    order_by: tuple[str, ...]
    tenant_column: str | None
    # The audit log is split like a tenant table; its shared part holds the rest: rows with no
    # tenant of this backup, less those of ``omitted`` (erased) tenants, which no object holds.
    remainder_of: str | None = None
    omitted: tuple[str, ...] = ()

    @property
    def qualified(self) -> str:
        return manifest_table_name(self.schema, self.name)

    def identifier(self) -> sql.Composable:
        return sql.Identifier(self.schema, self.name)


@dataclass(frozen=True)
class BackupLayout:
    """Which tables go into each tenant's object and which into the shared object, in load order."""

    tenant_tables: tuple[TableSpec, ...]
    shared_tables: tuple[TableSpec, ...]

    def tables_of(self, tenant_id: str | None) -> tuple[TableSpec, ...]:
        """The tables of a tenant's object, or (``None``) of the shared object."""
        return self.shared_tables if tenant_id is None else self.tenant_tables


def _load_order(tables: Sequence[TableSpec], edges: Sequence[tuple[str, str]]) -> list[TableSpec]:
    """Parents before children (foreign-key order), ties broken by name for determinism."""
    by_name = {t.qualified: t for t in tables}
    parents: dict[str, set[str]] = {name: set() for name in by_name}
    for child, parent in edges:
        if child in by_name and parent in by_name:
            parents[child].add(parent)
    ordered: list[TableSpec] = []
    placed: set[str] = set()
    while len(ordered) < len(by_name):
        ready = sorted(n for n in by_name if n not in placed and parents[n] <= placed)
        if not ready:  # a foreign-key cycle: fall back to name order for the rest
            ready = sorted(n for n in by_name if n not in placed)
        for name in ready:
            ordered.append(by_name[name])
            placed.add(name)
    return ordered


def discover_layout(
    conn: psycopg.Connection, schemas: Sequence[str] = DEFAULT_SCHEMAS
) -> BackupLayout:
    """Find every table to back up; a table added later is picked up without code changes.

    A tenant table (``db/tenant_tables.py``: a ``tenant_id`` column, in any schema of the app)
    whose ``tenant_id`` has the type of ``tenants.id`` goes into each tenant's object
    (``tenants`` itself by ``id``); every other table of ``schemas`` (the audit log, the app's
    lookup tables, a ``tenant_id`` of another type) into the shared object.
    """
    found = find_tenant_tables(conn, with_tenants=True)
    tenant_type = next(
        (t.tenant_type for t in found if (t.schema, t.name) == ("public", "tenants")), None
    )
    # The audit log too: a tenant's audit rows go into its object, so erase-tenant erases them
    # with the rest (backup/erased_audit.py keeps their seal hashes).
    split_by_tenant = {
        (t.schema, t.name): t.tenant_column for t in found if t.tenant_type == tenant_type
    }
    cur = conn.cursor(row_factory=tuple_row)
    never = NEVER_BACKED_UP | ledger_shaped_tables(conn)
    tenant, shared = [], []
    for schema, table, columns, primary_key in cur.execute(
        _TABLES_QUERY, (list(schemas),)
    ).fetchall():
        if (schema, table) in never:
            continue
        order_by = tuple(primary_key) or tuple(columns)
        tenant_column = split_by_tenant.get((schema, table))
        spec = TableSpec(schema, table, tuple(columns), order_by, tenant_column)
        (tenant if tenant_column else shared).append(spec)
        if tenant_column and (schema, table) == AUDIT_LOG:
            shared.append(dataclasses.replace(spec, tenant_column=None, remainder_of=tenant_column))
    edges = [tuple(r) for r in cur.execute(FOREIGN_KEY_EDGES).fetchall()]
    return BackupLayout(tuple(_load_order(tenant, edges)), tuple(_load_order(shared, edges)))


@functools.lru_cache(maxsize=1024)
def _copy_out_parts(table: TableSpec, scoped: bool) -> tuple[sql.SQL, sql.SQL]:
    """The text around the tenant literal, composed and quoted once per table.

    A backup of 10,000 small tenants runs 50,000 COPYs; composing every identifier of every
    one of them again was a tenth of the export's time. Identifier quoting (double quotes,
    doubled inside) does not depend on the connection, so rendering without one is exact.
    """
    head = sql.SQL("COPY (SELECT {} FROM {}").format(
        sql.SQL(", ").join(map(sql.Identifier, table.columns)), table.identifier()
    )
    if scoped:
        head += sql.SQL(" WHERE {} = ").format(sql.Identifier(table.tenant_column or ""))
    elif table.remainder_of:
        head += sql.SQL(" WHERE ") + _remainder(table)
    tail = sql.SQL(" ORDER BY {}) TO STDOUT").format(
        sql.SQL(", ").join(map(sql.Identifier, table.order_by))
    )
    return sql.SQL(head.as_string(None)), sql.SQL(tail.as_string(None))


def _not_omitted(table: TableSpec) -> sql.Composable:
    """Rows of no omitted tenant: a NULL tenant is no omitted one (``<> ALL`` alone says NULL)."""
    return sql.SQL("({c} IS NULL OR {c} <> ALL({o}::uuid[]))").format(
        c=sql.Identifier(table.remainder_of or ""), o=sql.Literal(list(table.omitted))
    )


def _remainder(table: TableSpec) -> sql.Composable:
    """Rows of no tenant in ``public.tenants``, and of no omitted tenant."""
    column = sql.Identifier(table.remainder_of or "")
    rest = sql.SQL(
        "({c} IS NULL OR NOT EXISTS (SELECT FROM public.tenants t WHERE t.id = {t}.{c}))"
    ).format(c=column, t=table.identifier())
    if table.omitted:
        rest += sql.SQL(" AND ") + _not_omitted(table)
    return rest


def count_query(table: TableSpec) -> sql.Composed:
    """How many rows the backup must hold of ``table``: all, less an omitted tenant's."""
    query = sql.SQL("SELECT count(*) FROM {}").format(table.identifier())
    if table.omitted:
        query += sql.SQL(" WHERE ") + _not_omitted(table)
    return query


def copy_out_query(table: TableSpec, tenant_id: str | None) -> sql.Composed:
    """``COPY (SELECT cols FROM t [WHERE tenant = x] ORDER BY pk) TO STDOUT``.

    COPY takes no bind parameters, so the tenant id travels as a quoted literal.
    """
    scoped = tenant_id is not None and bool(table.tenant_column)
    head, tail = _copy_out_parts(table, scoped)
    if scoped:
        return sql.Composed([head, sql.Literal(tenant_id), tail])
    return sql.Composed([head, tail])


# COPY TO hands over one message per row. Hashing, counting and compressing row by row kept the
# GIL busy with per-row Python work (and a second worker thread waiting for it); batches of this
# size make that per-batch work while memory stays flat. A batch never spans two tables.
_BATCH_BYTES = 256 * 1024


class TableStream:
    """Iterate the COPY text of several tables in order; per-table entries fill in as it goes."""

    def __init__(
        self,
        conn: psycopg.Connection,
        tables: Sequence[TableSpec],
        tenant_id: str | None,
        digest_key: bytes | None = None,
    ) -> None:
        self._conn = conn
        self._tables = tables
        self._tenant_id = tenant_id
        # Set for a tenant object under a tenant key: its digests are keyed (tenant_digests.py).
        self._digest_key = digest_key
        self.entries: list[TableEntry] = []

    def __iter__(self) -> Iterator[bytes]:
        for table in self._tables:
            digest = new_digest(self._digest_key)
            size = rows = 0
            batch = bytearray()
            with self._conn.cursor() as cur:
                with cur.copy(copy_out_query(table, self._tenant_id)) as copy:
                    for chunk in copy:
                        batch += chunk
                        if len(batch) >= _BATCH_BYTES:
                            data = bytes(batch)
                            batch.clear()
                            digest.update(data)
                            size += len(data)
                            # COPY text escapes newlines inside values: one newline, one row.
                            rows += data.count(b"\n")
                            yield data
            if batch:
                data = bytes(batch)
                digest.update(data)
                size += len(data)
                rows += data.count(b"\n")
                yield data
            self.entries.append(
                TableEntry(
                    name=table.qualified,
                    columns=table.columns,
                    row_count=rows,
                    bytes=size,
                    sha256=digest.hexdigest(),
                )
            )


@dataclass(frozen=True)
class SnapshotInfo:
    """Facts read inside the snapshot that the manifest records."""

    taken_at: datetime
    database: DatabaseIdentity
    schema: SchemaVersion
    tenant_ids: tuple[str, ...]
    table_totals: dict[str, int]


def pin_text_output(conn: psycopg.Connection) -> None:
    """Fix the session settings COPY's text depends on, for this transaction.

    The same rows must give the same bytes on the source and on a restored copy whose server
    has another time zone or encoding, or the digests a restore is checked with would differ.
    """
    conn.execute("SET LOCAL client_encoding = 'UTF8'")
    conn.execute("SET LOCAL TimeZone = 'UTC'")
    conn.execute("SET LOCAL DateStyle = 'ISO, MDY'")
    conn.execute("SET LOCAL IntervalStyle = 'postgres'")


def open_snapshot(conn: psycopg.Connection) -> None:
    """Start the read-only snapshot transaction every read of this backup runs in.

    ``conn`` must be a fresh, non-autocommit connection: its first statement opens the
    transaction, and everything after it (until rollback) sees the same snapshot.
    """
    conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
    conn.read_only = True
    conn.execute("SET LOCAL statement_timeout = 0")
    conn.execute("SET LOCAL idle_in_transaction_session_timeout = 0")
    pin_text_output(conn)


def export_snapshot(conn: psycopg.Connection) -> str:
    """The id other connections pass to ``join_snapshot`` to read the very same instant.

    Valid only while ``conn``'s snapshot transaction stays open, so the exporting connection
    must outlive every reader that joins it.
    """
    row = conn.cursor(row_factory=tuple_row).execute("SELECT pg_export_snapshot()").fetchone()
    return str(row[0])


def join_snapshot(conn: psycopg.Connection, snapshot_id: str) -> None:
    """Start ``conn``'s read-only transaction on a snapshot another connection exported.

    ``SET TRANSACTION SNAPSHOT`` must be the transaction's first statement, so ``conn`` must be
    fresh and non-autocommit, like for ``open_snapshot``. The id travels as a literal: the
    statement takes no bind parameters.
    """
    conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
    conn.read_only = True
    conn.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(snapshot_id)))
    conn.execute("SET LOCAL statement_timeout = 0")
    conn.execute("SET LOCAL idle_in_transaction_session_timeout = 0")
    pin_text_output(conn)


def omit_erased(
    conn: psycopg.Connection, layout: BackupLayout, totals: dict[str, int], erased: Sequence[str]
) -> BackupLayout:
    """Leave erased tenants' audit rows out of the backup (``erased_audit`` records their
    seal hashes)."""
    if not erased:
        return layout
    shared = []
    for table in layout.shared_tables:
        if table.remainder_of:
            table = dataclasses.replace(table, omitted=tuple(sorted(erased)))
            count = conn.cursor(row_factory=tuple_row).execute(count_query(table)).fetchone()
            totals[table.qualified] = count[0]
        shared.append(table)
    return dataclasses.replace(layout, shared_tables=tuple(shared))


def read_snapshot_info(conn: psycopg.Connection, layout: BackupLayout) -> SnapshotInfo:
    """Identity, schema version, tenant list and per-table row totals, all from the snapshot."""
    cur = conn.cursor(row_factory=tuple_row)
    taken_at, dbname, version = cur.execute(
        "SELECT now(), current_database(), current_setting('server_version')"
    ).fetchone()
    try:
        with conn.transaction():
            row = cur.execute("SELECT system_identifier FROM pg_control_system()").fetchone()
        system_id = str(row[0])
    except psycopg.errors.InsufficientPrivilege:
        system_id = "unknown"
    migrations = cur.execute(
        "SELECT filename, sha256 FROM hardening.schema_migrations ORDER BY filename"
    ).fetchall()
    if not migrations:
        raise CheckFailed(
            "the database has no migrations applied; run `hardening migrate` before backing up."
        )
    tenant_ids = tuple(str(r[0]) for r in cur.execute("SELECT id FROM public.tenants ORDER BY id"))
    totals = {}
    for table in (*layout.tenant_tables, *layout.shared_tables):
        totals[table.qualified] = cur.execute(count_query(table)).fetchone()[0]
    return SnapshotInfo(
        taken_at=taken_at,
        database=DatabaseIdentity(system_id, dbname, version),
        schema=SchemaVersion(
            last_migration=migrations[-1][0],
            last_migration_sha256=migrations[-1][1],
            applied_migrations=tuple(m[0] for m in migrations),
        ),
        tenant_ids=tenant_ids,
        table_totals=totals,
    )


def verify_complete(objects: Sequence[ObjectEntry], totals: dict[str, int]) -> None:
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
