"""Loading backed-up rows back into Postgres: the restore paths' only way to write tables.

Two ways in, for two situations:

* ``load_into_empty`` (restore drill, full restore into a fresh database): plain ``COPY FROM``
  with the audit capture triggers switched off for the load, so the audit log ends up exactly as
  it was backed up (restoring must not add audit rows) and switched back on to their original
  ``ENABLE ALWAYS`` state before the transaction commits.
* ``merge_tenant`` (bring one tenant's data back into a live database): rows go through staging
  tables and ``INSERT ... ON CONFLICT DO NOTHING`` as ``service_role`` with an actor set, so the
  restored rows are scoped, audited, and never overwrite what is there.

Both run inside the caller's transaction: if any later check fails, nothing stays.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import psycopg
from psycopg import sql
from psycopg.copy import QueuedLibpqWriter
from psycopg.rows import tuple_row

from hardening_pipeline.backup.manifest import SequenceValue, TableEntry
from hardening_pipeline.db.tenant_tables import is_app_schema
from hardening_pipeline.errors import CheckFailed


def _split(qualified: str) -> sql.Identifier:
    schema, _, name = qualified.rpartition(".")
    return sql.Identifier(schema or "public", name)


def copy_in(
    conn: psycopg.Connection,
    target: sql.Composable,
    columns: Sequence[str],
    chunks: Iterable[bytes],
    *,
    queued: bool = False,
) -> None:
    """``COPY target (columns) FROM STDIN`` with ``chunks``.

    ``queued`` sends on a writer thread, so decrypting the next chunk overlaps sending this one.
    """
    query = sql.SQL("COPY {} ({}) FROM STDIN").format(
        target, sql.SQL(", ").join(map(sql.Identifier, columns))
    )
    with (
        conn.cursor() as cur,
        cur.copy(query, writer=QueuedLibpqWriter(cur) if queued else None) as copy,
    ):
        for chunk in chunks:
            copy.write(chunk)


@dataclass
class UserTriggers:
    """The user triggers of some tables and their enabled state, to switch off and restore."""

    states: list[tuple[str, str, str]]  # (qualified table, trigger, tgenabled)

    @classmethod
    def read(cls, conn: psycopg.Connection, tables: Iterable[str]) -> UserTriggers:
        names = sorted(set(tables))
        rows = conn.cursor(row_factory=tuple_row).execute(
            "SELECT c.oid::regclass::text, t.tgname, t.tgenabled FROM pg_catalog.pg_trigger t "
            "JOIN pg_catalog.pg_class c ON c.oid = t.tgrelid "
            "WHERE NOT t.tgisinternal AND c.oid::regclass::text = ANY(%s) ORDER BY 1, 2",
            (names,),
        )
        return cls([tuple(r) for r in rows.fetchall()])

    def disable(self, conn: psycopg.Connection) -> None:
        for table, trigger, _ in self.states:
            conn.execute(
                sql.SQL("ALTER TABLE {} DISABLE TRIGGER {}").format(
                    _split(table), sql.Identifier(trigger)
                )
            )

    def restore(self, conn: psycopg.Connection) -> None:
        modes = {"O": "ENABLE", "A": "ENABLE ALWAYS", "R": "ENABLE REPLICA", "D": "DISABLE"}
        for table, trigger, state in self.states:
            conn.execute(
                sql.SQL("ALTER TABLE {} {} TRIGGER {}").format(
                    _split(table), sql.SQL(modes[state]), sql.Identifier(trigger)
                )
            )


@dataclass
class DeferredKeys:
    """Keys and indexes of some tables, dropped for a bulk load and rebuilt after it.

    Checking four foreign keys and updating every index row by row is what makes a naive
    restore slow; building them once over the loaded data (as pg_restore does) is several
    times faster, and re-adding a foreign key validates every row, so nothing goes unchecked.
    """

    constraints: list[tuple[str, str, str, str]]  # (table, name, type, definition)
    indexes: list[tuple[str, str]]  # (index name, definition)

    @classmethod
    def read(cls, conn: psycopg.Connection, tables: Iterable[str]) -> DeferredKeys:
        names = sorted(set(tables))
        cur = conn.cursor(row_factory=tuple_row)
        constraints = cur.execute(
            "SELECT c.conrelid::regclass::text, c.conname, c.contype, "
            "pg_get_constraintdef(c.oid) FROM pg_catalog.pg_constraint c "
            "WHERE c.contype IN ('p', 'u', 'f') AND c.conrelid::regclass::text = ANY(%s) "
            "ORDER BY c.contype = 'f', 1, 2",
            (names,),
        ).fetchall()
        indexes = cur.execute(
            "SELECT i.indexrelid::regclass::text, pg_get_indexdef(i.indexrelid) "
            "FROM pg_catalog.pg_index i WHERE i.indrelid::regclass::text = ANY(%s) "
            "AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_constraint c "
            "WHERE c.conindid = i.indexrelid AND c.contype IN ('p', 'u', 'x')) ORDER BY 1",
            (names,),
        ).fetchall()
        return cls([tuple(r) for r in constraints], [tuple(r) for r in indexes])

    def drop(self, conn: psycopg.Connection) -> None:
        for table, name, _, _ in sorted(self.constraints, key=lambda c: c[2] != "f"):
            conn.execute(
                sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(
                    _split(table), sql.Identifier(name)
                )
            )
        for name, _ in self.indexes:
            conn.execute(sql.SQL("DROP INDEX {}").format(_split(name)))

    def rebuild(self, conn: psycopg.Connection) -> None:
        conn.execute("SET LOCAL maintenance_work_mem = '256MB'")
        for table, name, _, definition in sorted(self.constraints, key=lambda c: c[2] == "f"):
            conn.execute(
                sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} {}").format(
                    _split(table), sql.Identifier(name), sql.SQL(definition)
                )
            )
        for _, definition in self.indexes:
            conn.execute(sql.SQL(definition))


def load_into_empty(
    conn: psycopg.Connection,
    tables: Iterator[tuple[TableEntry, Iterator[bytes]]],
    *,
    replace: Sequence[str] = (),
    queued: bool = False,
) -> dict[str, int]:
    """COPY every table in, triggers off; ``replace`` tables are emptied first. Returns bytes."""
    loaded: dict[str, int] = {}
    for entry, chunks in tables:
        target = _split(entry.name)
        if entry.name in replace and entry.name not in loaded:
            conn.execute(sql.SQL("DELETE FROM {}").format(target))
        counted = _counting(chunks, entry.name, loaded)
        copy_in(conn, target, entry.columns, counted, queued=queued)
    return loaded


def _counting(chunks: Iterable[bytes], name: str, totals: dict[str, int]) -> Iterator[bytes]:
    totals.setdefault(name, 0)
    for chunk in chunks:
        totals[name] += len(chunk)
        yield chunk


def reset_sequences(conn: psycopg.Connection, tables: Iterable[str]) -> None:
    """Move each owned sequence past the largest restored value, so new rows never collide."""
    # Names, not regclass text, which depends on the session's search_path (a restore may
    # run with only pg_catalog on it, so the backup's functions cannot stand in for built-ins).
    query = (
        "SELECT * FROM (SELECT n.nspname || '.' || c.relname AS t, a.attname, "
        "pg_catalog.pg_get_serial_sequence(pg_catalog.quote_ident(n.nspname) || '.' || "
        "pg_catalog.quote_ident(c.relname), a.attname) AS s "
        "FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
        "JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid "
        "WHERE n.nspname || '.' || c.relname = ANY(%s) AND a.attnum > 0 "
        "AND NOT a.attisdropped) x WHERE s IS NOT NULL"
    )
    qualified = {t if "." in t else f"public.{t}" for t in tables}
    cur = conn.cursor(row_factory=tuple_row)
    rows = cur.execute(query, (sorted(qualified),)).fetchall()
    for table, column, sequence in rows:
        conn.execute(
            sql.SQL("SELECT setval({}, coalesce((SELECT max({}) FROM {}), 0) + 1, false)").format(
                sql.Literal(sequence), sql.Identifier(column), _split(table)
            )
        )


def restore_sequence_values(conn: psycopg.Connection, values: Iterable[SequenceValue]) -> None:
    """Move each sequence to where the backup recorded it, never back.

    ``reset_sequences`` only knows sequences a column owns; a counter no column owns (invoice
    numbers) would otherwise start again at its start value.
    """
    cur = conn.cursor(row_factory=tuple_row)
    for value in values:
        schema, _, name = value.name.partition(".")
        target = sql.Identifier(schema, name)
        (present,) = cur.execute(
            "SELECT pg_catalog.to_regclass(%s) IS NOT NULL", (target.as_string(conn),)
        ).fetchone()
        if not present:
            continue
        last, called = cur.execute(
            sql.SQL("SELECT last_value, is_called FROM {}").format(target)
        ).fetchone()
        handed_out = last if called else last - 1
        if value.last_value > handed_out:
            conn.execute(
                "SELECT pg_catalog.setval(%s::regclass, %s, true)",
                (target.as_string(conn), value.last_value),
            )


@dataclass
class MergeCount:
    """Rows offered from the backup and rows actually inserted (the rest already existed)."""

    table: str
    offered: int
    inserted: int


_GENERATED_QUERY = """
SELECT a.attname, a.attgenerated <> '' AS generated, a.attidentity <> '' AS identity,
       pg_catalog.pg_get_serial_sequence(%(t)s, a.attname) AS sequence
FROM pg_catalog.pg_attribute a
WHERE a.attrelid = pg_catalog.to_regclass(%(t)s) AND a.attnum > 0 AND NOT a.attisdropped
  AND (a.attgenerated <> '' OR a.attidentity <> '')
"""


def _special_columns(conn: psycopg.Connection, target: str) -> tuple[set[str], list[tuple]]:
    """Generated columns (computed, never inserted) and identity columns with their sequence."""
    rows = conn.cursor(row_factory=tuple_row).execute(_GENERATED_QUERY, {"t": target}).fetchall()
    generated = {r[0] for r in rows if r[1]}
    identities = [(r[0], r[3]) for r in rows if r[2] and r[3]]
    return generated, identities


def _tenant_column(entry: TableEntry, tenant_id: str) -> str:
    """The column that names the tenant of a row in a tenant's object, as the backup chose it.

    ``public.tenants`` by ``id``, another tenant table (``db/tenant_tables.py``: any schema of
    the app) by ``tenant_id``; any other table never belongs in a tenant's object and is
    refused.
    """
    schema, _, table = entry.name.rpartition(".")
    schema = schema or "public"
    column = "id" if (schema, table) == ("public", "tenants") else "tenant_id"
    if not is_app_schema(schema) or column not in entry.columns:
        raise CheckFailed(
            f"the backup's object for tenant {tenant_id} holds table {entry.name}, which has no "
            "tenant column; nothing was restored: check the store (the object was not written "
            "by `hardening backup`) and restore from another backup with --backup-id."
        )
    return column


def _check_tenant_rows(
    conn: psycopg.Connection, stage: sql.Identifier, entry: TableEntry, column: str, tenant_id: str
) -> None:
    """Refuse a staged table holding a row of another tenant, or of none.

    The object's digests only prove it is what the key holder wrote; a key holder can write
    another tenant's rows into this tenant's object, so the rows themselves are checked.
    """
    stray = (
        conn.cursor(row_factory=tuple_row)
        .execute(
            sql.SQL("SELECT count(*) FROM {} WHERE {}::text IS DISTINCT FROM %s").format(
                stage, sql.Identifier(column)
            ),
            (tenant_id,),
        )
        .fetchone()[0]
    )
    if stray:
        raise CheckFailed(
            f"the backup's object for tenant {tenant_id} holds {stray} row(s) of {entry.name} "
            "that belong to another tenant or to none; nothing was restored: the object was "
            "altered after the backup, so check the store and restore from another backup with "
            "--backup-id."
        )


def merge_tenant(
    conn: psycopg.Connection,
    tables: Iterator[tuple[TableEntry, Iterator[bytes]]],
    *,
    tenant_id: str,
    actor: str,
) -> list[MergeCount]:
    """Insert one tenant's backed-up rows that are missing, as service_role with an actor.

    Identity columns keep their backed-up values (``OVERRIDING SYSTEM VALUE``: the rows' ids
    are what other rows and the outside world refer to) and their sequences are moved past the
    largest value afterwards; generated columns are left for Postgres to compute. Every row
    must carry ``tenant_id`` (checked in its staging table, before it is inserted): otherwise
    ``CheckFailed``, and the caller's transaction keeps nothing.
    """
    conn.execute("SET LOCAL ROLE service_role")
    conn.execute(
        "SELECT set_config('app.tenant_id', %s, true), set_config('app.actor', %s, true)",
        (tenant_id, actor),
    )
    counts = []
    sequences: list[tuple[str, str, str]] = []
    for entry, chunks in tables:
        if entry.name == "audit_events":
            # The tenant's audit history stays in the backup: the target's log is its own, and
            # it records this merge's inserts as they happen.
            collections.deque(chunks, maxlen=0)
            continue
        column = _tenant_column(entry, tenant_id)
        stage = sql.Identifier(f"restore_stage_{len(counts)}")
        target = _split(entry.name)
        generated, identities = _special_columns(conn, target.as_string(conn))
        sequences += [(entry.name, column, seq) for column, seq in identities]
        conn.execute(
            sql.SQL("CREATE TEMP TABLE {} ON COMMIT DROP AS SELECT {} FROM {} WITH NO DATA").format(
                stage, sql.SQL(", ").join(map(sql.Identifier, entry.columns)), target
            )
        )
        copy_in(conn, stage, entry.columns, chunks)
        _check_tenant_rows(conn, stage, entry, column, tenant_id)
        cols = sql.SQL(", ").join(sql.Identifier(c) for c in entry.columns if c not in generated)
        inserted = conn.execute(
            sql.SQL(
                "INSERT INTO {} ({}) OVERRIDING SYSTEM VALUE SELECT {} FROM {} "
                "ON CONFLICT DO NOTHING"
            ).format(target, cols, cols, stage)
        ).rowcount
        counts.append(MergeCount(entry.name, entry.row_count, inserted))
    # Moving a sequence needs rights on it that service_role need not have; the rows are in.
    conn.execute("RESET ROLE")
    for table, column, sequence in sequences:
        _advance_sequence(conn, table, column, sequence)
    return counts


def _advance_sequence(conn: psycopg.Connection, table: str, column: str, sequence: str) -> None:
    """Move ``sequence`` past the largest ``column`` value, never backwards."""
    conn.execute(
        sql.SQL(
            "SELECT setval({seq}, m) FROM (SELECT max({col}) AS m FROM {table}) x, "
            "(SELECT CASE WHEN is_called THEN last_value ELSE last_value - 1 END AS v "
            "FROM {seqrel}) s WHERE m > v"
        ).format(
            seq=sql.Literal(sequence),
            col=sql.Identifier(column),
            table=_split(table),
            seqrel=sql.SQL(sequence),  # pg_get_serial_sequence output: already quoted
        )
    )
