"""Probe rows for the drill checks: rows any app's tables accept, built from the restored catalog.

Probe rows are built from the restored catalog, not from the demo schema: every NOT NULL column
without a default gets a value that fits its type, and a foreign key the row of an existing parent
of the same tenant (or a probe parent built the same way). A database with fewer than two tenants
with messages (a new install, a single customer) gets synthetic probe tenants, each with a
development, a unit and a message, inside a transaction that is rolled back.

A probe row no value fits, or one the database refuses, is a ``CheckRefuted`` naming the table
and column, so the check that needed it is red, never crashed.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql


class CheckRefuted(Exception):
    """The guarantee a drill check tried to break did not hold; the message says how."""


# Probe rows: a row any app's table accepts, built from the restored catalog. Each NOT NULL
# column without a default gets a value of its type; a foreign key gets an existing parent row
# of the probe's tenant, else a probe parent built the same way (up to a few levels deep).
PROBE_ACTOR = "drill:probe"
_PROBE_PARENT_DEPTH = 4

_TABLE_OID = """
SELECT c.oid FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = %s AND c.relname = %s AND c.relkind IN ('r', 'p')
"""

_COLUMNS = """
SELECT a.attname::text AS name,
       pg_catalog.format_type(a.atttypid, a.atttypmod) AS type,
       (a.attnotnull OR t.typnotnull) AND NOT a.atthasdef AND t.typdefault IS NULL
           AND a.attidentity = '' AND a.attgenerated = '' AS required,
       b.oid AS base_oid, b.typname::text AS base_name, b.typtype::text AS base_kind,
       b.typcategory::text AS category,
       CASE WHEN b.typname IN ('varchar', 'bpchar')
            THEN nullif(greatest(a.atttypmod, t.typtypmod), -1) - 4 END AS max_length
FROM pg_catalog.pg_attribute a
JOIN pg_catalog.pg_type t ON t.oid = a.atttypid
JOIN pg_catalog.pg_type b ON b.oid = CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE t.oid END
WHERE a.attrelid = %s AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum
"""

# Widest keys first: a composite key takes all its columns from one parent row.
_FOREIGN_KEYS = """
SELECT c.conname::text AS name, pn.nspname::text AS parent_schema, pc.relname::text AS parent,
       ARRAY(SELECT a.attname::text FROM unnest(c.conkey) WITH ORDINALITY AS k(num, i)
             JOIN pg_catalog.pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.num
             ORDER BY k.i) AS columns,
       ARRAY(SELECT a.attname::text FROM unnest(c.confkey) WITH ORDINALITY AS k(num, i)
             JOIN pg_catalog.pg_attribute a ON a.attrelid = c.confrelid AND a.attnum = k.num
             ORDER BY k.i) AS parent_columns
FROM pg_catalog.pg_constraint c
JOIN pg_catalog.pg_class pc ON pc.oid = c.confrelid
JOIN pg_catalog.pg_namespace pn ON pn.oid = pc.relnamespace
WHERE c.conrelid = %s AND c.contype = 'f'
ORDER BY cardinality(c.conkey) DESC, c.conname
"""

# A value for each kind of column, as text the column's own type reads (psycopg sends a str
# untyped, so Postgres parses it as the column's type): by type name, then by type category.
_VALUE_BY_TYPE = {
    "uuid": None,  # a new one each time
    "bool": "false",
    "json": "{}",
    "jsonb": "{}",
    "bytea": "",
    "inet": "127.0.0.1",
    "cidr": "127.0.0.1/32",
}
_VALUE_BY_CATEGORY = {
    "N": "1",  # numbers: 1 fits ">= 0" and "> 0" checks alike
    "D": "now",  # date, time, timestamp(tz): now
    "T": "0",  # interval
    "A": "{}",  # arrays
    "R": "empty",  # ranges
}


# Probe rows go into the drill's throwaway copy only, inside transactions the checks roll back
# (the one committed probe tenant is deleted again), so they carry the drill's probe marker.
_PROBE_INSERT = sql.SQL("INSERT INTO {} ({}) VALUES ({}) RETURNING *")  # refused-write probe
_PROBE_INSERT_DEFAULTS = sql.SQL("INSERT INTO {} DEFAULT VALUES RETURNING *")  # refused-write probe


_Name = tuple[str, str]  # (schema, table)
_Path = tuple[_Name, ...]  # the tables a probe parent is being built for
_Row = dict[str, Any]


@dataclass(frozen=True)
class _Column:
    name: str
    type: str
    required: bool
    base_oid: int
    base_name: str
    base_kind: str
    category: str
    max_length: int | None


@dataclass(frozen=True)
class _ForeignKey:
    name: str
    parent: tuple[str, str]
    columns: tuple[str, ...]
    parent_columns: tuple[str, ...]


@dataclass(frozen=True)
class _Table:
    name: tuple[str, str]
    columns: dict[str, _Column]
    foreign_keys: tuple[_ForeignKey, ...]

    @property
    def label(self) -> str:
        return ".".join(self.name)

    @property
    def identifier(self) -> sql.Identifier:
        return sql.Identifier(*self.name)


class ProbeRows:
    """Builds and inserts probe rows that fit the restored tables' real columns and keys.

    Each value is chosen from the catalog: a marker string for text, 1 for numbers, false for
    booleans, a new uuid, now for dates and times, an enum's first label, and for a foreign key
    the row of an existing parent of the same tenant. Where no value fits, ``CheckRefuted`` names
    the column and its table.
    """

    def __init__(self, conn: psycopg.Connection) -> None:
        self.conn = conn
        self._tables: dict[tuple[str, str], _Table | None] = {}

    def table(self, schema: str, name: str) -> _Table | None:
        """The table's columns and foreign keys; None when the restored database lacks it."""
        key = (schema, name)
        if key not in self._tables:
            found = self.conn.execute(_TABLE_OID, key).fetchone()
            if found is None:
                self._tables[key] = None
            else:
                columns = self.conn.execute(_COLUMNS, (found["oid"],)).fetchall()
                keys = self.conn.execute(_FOREIGN_KEYS, (found["oid"],)).fetchall()
                self._tables[key] = _Table(
                    key,
                    {c["name"]: _Column(**c) for c in columns},
                    tuple(
                        _ForeignKey(
                            k["name"],
                            (k["parent_schema"], k["parent"]),
                            tuple(k["columns"]),
                            tuple(k["parent_columns"]),
                        )
                        for k in keys
                    ),
                )
        return self._tables[key]

    def _known(self, schema: str, name: str) -> _Table:
        table = self.table(schema, name)
        if table is None:
            raise CheckRefuted(f"cannot build a probe row: the table {schema}.{name} is missing")
        return table

    def _build(
        self, table: _Name, given: Mapping[str, Any], tenant: uuid.UUID | None, path: _Path
    ) -> _Row:
        """Column -> value for a row of ``table``: ``given``, the tenant, and every required
        column filled; may insert probe parent rows (inside the caller's transaction)."""
        info = self._known(*table)
        row = {name: value for name, value in given.items() if name in info.columns}
        if tenant is not None and "tenant_id" in info.columns:
            row.setdefault("tenant_id", tenant)
        for key in info.foreign_keys:
            needed = [c for c in key.columns if c not in row and info.columns[c].required]
            if needed:
                parent = self._parent_row(info, key, row, tenant, needed, path + (table,))
                for column, parent_column in zip(key.columns, key.parent_columns, strict=True):
                    row.setdefault(column, parent[parent_column])
        for column in info.columns.values():
            if column.required and column.name not in row:
                row[column.name] = self._value(info, column)
        return row

    def insert(
        self,
        table: _Name,
        given: Mapping[str, Any],
        tenant: uuid.UUID | None,
        *,
        _path: _Path = (),
    ) -> _Row:
        """Build a probe row of ``table`` and insert it; the inserted row, as stored.

        A refusal by the database is raised as it is (the probes that expect one need its
        type); a row that cannot be built raises ``CheckRefuted``.
        """
        row = self._build(table, given, tenant, _path)
        target = sql.Identifier(*table)
        if row:
            statement = _PROBE_INSERT.format(
                target,
                sql.SQL(", ").join(sql.Identifier(c) for c in row),
                sql.SQL(", ").join(sql.Placeholder() * len(row)),
            )
        else:
            statement = _PROBE_INSERT_DEFAULTS.format(target)
        inserted = self.conn.execute(statement, list(row.values())).fetchone()
        assert inserted is not None
        return dict(inserted)

    def _parent_row(
        self,
        child: _Table,
        key: _ForeignKey,
        row: Mapping[str, Any],
        tenant: uuid.UUID | None,
        needed: list[str],
        path: _Path,
    ) -> Mapping[str, Any]:
        parent = self._known(*key.parent)
        match = {
            pc: row[c] for c, pc in zip(key.columns, key.parent_columns, strict=True) if c in row
        }
        if tenant is not None and key.parent == ("public", "tenants"):
            match.setdefault(key.parent_columns[0], tenant)
        elif tenant is not None and "tenant_id" in parent.columns:
            match.setdefault("tenant_id", tenant)
        where = sql.SQL(" AND ").join(sql.SQL("{} = %s").format(sql.Identifier(c)) for c in match)
        found = self.conn.execute(
            sql.SQL("SELECT * FROM {} WHERE {} LIMIT 1").format(
                parent.identifier, where if match else sql.SQL("true")
            ),
            list(match.values()),
        ).fetchone()
        if found is not None:
            return found
        what = f"column {', '.join(needed)} of {child.label}"
        matching = " with " + ", ".join(f"{c} = {v}" for c, v in match.items()) if match else ""
        if parent.name in path or len(path) > _PROBE_PARENT_DEPTH:
            raise CheckRefuted(
                f"cannot fill {what}: no row in {parent.label}{matching} to refer to "
                f"(foreign key {key.name}), and no probe row of it can be built here"
            )
        with _probe_failure(lambda reason: f"{reason}; needed for {what} (foreign key {key.name})"):
            built = self.insert(parent.name, match, tenant, _path=path)
        return built

    def _value(self, table: _Table, column: _Column) -> str:
        if column.base_kind == "e":
            label = self.conn.execute(
                "SELECT enumlabel FROM pg_catalog.pg_enum WHERE enumtypid = %s "
                "ORDER BY enumsortorder LIMIT 1",
                (column.base_oid,),
            ).fetchone()
            if label is not None:
                return str(label["enumlabel"])
        elif column.base_name in _VALUE_BY_TYPE:
            return _VALUE_BY_TYPE[column.base_name] or str(uuid.uuid4())
        elif column.category == "S":
            token = uuid.uuid4().hex[:12]
            marker = f"drill-probe-{token}"
            limit = column.max_length
            return marker if limit is None or limit >= len(marker) else token[: max(limit, 1)]
        elif column.category in _VALUE_BY_CATEGORY:
            return _VALUE_BY_CATEGORY[column.category]
        raise CheckRefuted(
            f"cannot fill column {column.name} ({column.type}) of {table.label}: "
            "no probe value fits that type"
        )


def first_line(exc: BaseException) -> str:
    """The first line of an error's message (its type when it has none), for a one-line red."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


@contextlib.contextmanager
def _probe_failure(explain: Callable[[str], str]) -> Iterator[None]:
    """A probe row that cannot be built, or that the database refuses, becomes a red saying
    where (``explain`` adds what the row was for); never an exception of another kind."""
    try:
        yield
    except CheckRefuted as exc:
        raise CheckRefuted(explain(str(exc))) from exc
    except psycopg.Error as exc:
        table = exc.diag.table_name
        where = f" of {exc.diag.schema_name}.{table}" if table else ""
        raise CheckRefuted(
            explain(f"the database refused a probe row{where}: {first_line(exc)}")
        ) from exc


def message_on_unit(tenant: uuid.UUID, unit: Mapping[str, Any]) -> dict[str, Any]:
    """A message of ``tenant`` in ``unit`` (whichever tenant's), as far as messages has them."""
    given = {"tenant_id": tenant, "unit_id": unit["id"]}
    if "development_id" in unit:
        given["development_id"] = unit["development_id"]
    return given


def first_unit(conn: psycopg.Connection, tenant: uuid.UUID) -> dict[str, Any] | None:
    """The tenant's unit with the lowest id; None when it has none."""
    return conn.execute(
        "SELECT * FROM units WHERE tenant_id = %s ORDER BY id LIMIT 1", (tenant,)
    ).fetchone()


def add_probe_tenant(probe: ProbeRows, *, with_rows: bool = True) -> uuid.UUID:
    """A synthetic tenant, with a development, a unit and a message unless ``with_rows`` is
    false, all built from the catalog; its text columns (slug, name) carry ``drill-probe-``."""
    tenant = uuid.uuid4()
    with _probe_failure(lambda reason: f"could not add a synthetic probe tenant: {reason}"):
        probe.insert(("public", "tenants"), {"id": tenant}, None)
        if with_rows:
            for table in ("developments", "units"):
                if probe.table("public", table) is not None:
                    probe.insert(("public", table), {}, tenant)
            unit = first_unit(probe.conn, tenant) if probe.table("public", "units") else None
            given = message_on_unit(tenant, unit) if unit else {}
            probe.insert(("public", "messages"), given, tenant)
    return tenant


@dataclass(frozen=True)
class ProbeTenants:
    """Two tenants with messages, and how many of them are synthetic probe tenants."""

    tenants: list[uuid.UUID]
    added: int
    rows: ProbeRows

    @property
    def note(self) -> str:
        if not self.added:
            return ""
        plural = "s" if self.added > 1 else ""
        return f" ({self.added} synthetic probe tenant{plural}, rolled back)"


@contextlib.contextmanager
def probe_tenants(conn: psycopg.Connection) -> Iterator[ProbeTenants]:
    """Two tenants with messages: the restored ones, topped up with synthetic probe tenants.

    Everything happens inside one transaction that is rolled back, so the restored copy is the
    same afterwards (the drill compares it with the manifest before its checks run anyway).
    """
    with conn.transaction(force_rollback=True):
        conn.execute("SELECT set_config('app.actor', %s, true)", (PROBE_ACTOR,))
        rows = conn.execute(
            "SELECT tenant_id FROM messages GROUP BY tenant_id ORDER BY tenant_id LIMIT 2"
        ).fetchall()
        tenants = [r["tenant_id"] for r in rows]
        probe = ProbeRows(conn)
        added = 0
        while len(tenants) < 2:
            tenants.append(add_probe_tenant(probe))
            added += 1
        yield ProbeTenants(tenants, added, probe)
