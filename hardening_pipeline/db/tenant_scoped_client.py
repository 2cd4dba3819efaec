"""TenantScopedClient: the only way backend code writes tenant data.

Every unit of work is one explicit transaction in which the tenant and the actor are set with
``set_config(..., true)`` (transaction-local: a pooled connection carries nothing to its next
borrower, and PgBouncer/Supavisor transaction mode keeps working). The same statement also
overrides, for this transaction only, every setting the policies and the audit capture read
(``request.jwt.claims`` cleared, ``row_security`` on), so session-level values a previous
borrower left on a pooled connection change nothing. Writes are checked *before any SQL is sent*:
the tenant id must be a real UUID, the table and every column must exist in the schema the client
read at start-up, and a row must not name another tenant. Every mapping it is given is copied once
into a plain dict, and only that copy is checked and sent: a mapping that answers differently on a
second read is never read twice. Every table is named with its schema (``public.messages``), so a
temporary table of the same name cannot take the writes. Anything the client cannot prove is
scoped is refused, not passed through.

Two modes:

* ``authenticated`` (default): the transaction runs as the ``authenticated`` role, so Postgres
  RLS filters every statement as a second line of defence.
* ``service_role``: for jobs that must bypass RLS. Still scoped by the client (every statement
  carries ``tenant_id = <tenant>``), and the actor (``service_role:<caller>``) is recorded in
  ``audit_events`` by the capture triggers. The database itself refuses a service-role write that
  does not come with an actor, so skipping this wrapper fails loudly.

Example::

    client = TenantScopedClient(pool, actor="user:42")
    with client.transaction(tenant_id) as tx:
        tx.insert("messages", {"development_id": d, "unit_id": u, "sender": "a", "body": "b"})
        rows = tx.select("messages", where={"unit_id": u})
"""

from __future__ import annotations

import contextlib
import datetime
import decimal
import ipaddress
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import psycopg
from psycopg import sql
from psycopg.rows import dict_row, tuple_row
from psycopg.types.json import Json, Jsonb
from psycopg_pool import ConnectionPool

from hardening_pipeline.db.service_role_mode import SERVICE_ROLE_ACTOR_PATTERN, UNATTRIBUTED_ACTOR
from hardening_pipeline.errors import HardeningError

Mode = Literal["authenticated", "service_role"]

# The tenants table is its own tenant: its "tenant column" is its primary key.
_TENANT_COLUMN_OVERRIDES = {"tenants": "id"}
# Tables the client never writes: the audit log is written by triggers only.
_NEVER_WRITABLE = frozenset({"audit_events"})
# Values travel as parameters, and only these types: each adapts to exactly one SQL literal.
# Anything else (a psycopg sql object, a dict, an object with its own adaptation) could change
# what the statement does, so it is refused before any SQL is sent. Subclasses are refused too:
# they can override equality, hashing or formatting. JSON goes in wrapped, as Jsonb(...)/Json(...).
_PLAIN_VALUE_TYPES = frozenset(
    {
        type(None),
        bool,
        int,
        float,
        decimal.Decimal,
        str,
        bytes,
        uuid.UUID,
        datetime.date,
        datetime.datetime,
        datetime.time,
        datetime.timedelta,
        ipaddress.IPv4Address,
        ipaddress.IPv6Address,
        Json,
        Jsonb,
    }
)

# Role and context in one round trip. set_config('role', ..., true) is SET LOCAL ROLE: the same
# setting, the same membership check, gone at the end of the transaction. Every other setting
# the policies and the audit capture read is set here too, transaction-locally, whatever the
# session holds: JWT claims win over app.tenant_id and app.actor (011, 015), so claims left on a
# pooled connection by `set_config(..., false)` would pick the tenant and the recorded actor;
# the request.jwt.claim.* settings are what older PostgREST and Supabase's auth.uid() read.
# row_security off would make every RLS-subject statement (and the audit capture) fail.
_ENTER_QUERY = (
    "SELECT set_config('role', %s, true), set_config('app.tenant_id', %s, true), "
    "set_config('app.actor', %s, true), set_config('request.jwt.claims', '', true), "
    "set_config('request.jwt.claim.sub', '', true), "
    "set_config('request.jwt.claim.role', '', true), set_config('row_security', 'on', true)"
)

_CATALOG_QUERY = """
SELECT n.nspname AS schema_name, c.relname AS table_name, a.attname AS column_name
FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p')
ORDER BY c.relname, a.attnum
"""


class TenantScopeError(HardeningError):
    """A write or read the client cannot prove stays inside one tenant; nothing was sent."""


def _plain_copy(value: object, what: str) -> dict[Any, Any]:
    """``value`` read exactly once into a plain dict: what is checked is what is sent.

    A Mapping can answer ``keys()``, ``items()`` and ``[key]`` differently on each call; reading
    it again after the checks would send something that was never checked.
    """
    if not isinstance(value, Mapping):
        raise TenantScopeError(f"{what} must be a mapping of column to value.")
    return dict(value)


def _is_plain_name(name: object) -> bool:
    """Exactly ``str``: a subclass can answer ``==`` and ``hash`` differently for each check."""
    return type(name) is str


def check_plain_value(value: object, where: str) -> None:
    """Refuse anything that is not a plain value (or a list/tuple of them) before SQL is built."""
    if type(value) in _PLAIN_VALUE_TYPES:
        return
    if type(value) in (list, tuple):
        for item in value:  # type: ignore[attr-defined]
            check_plain_value(item, where)
        return
    raise TenantScopeError(
        f"{where} is a {type(value).__name__}, not a plain value; pass str, int, float, "
        "Decimal, bool, bytes, UUID, date/time, None, a list of those, or JSON wrapped in "
        "psycopg's Jsonb(...)."
    )


@dataclass(frozen=True)
class TableInfo:
    """What the client knows of one tenant-scoped table."""

    name: str
    columns: tuple[str, ...]
    tenant_column: str
    schema: str = "public"

    @property
    def identifier(self) -> sql.Identifier:
        """The schema-qualified name: a temporary table of the same name never takes its place."""
        return sql.Identifier(self.schema, self.name)


def load_catalog(conn: psycopg.Connection) -> dict[str, TableInfo]:
    """The tenant-scoped tables of ``public`` (those with a tenant_id column, and ``tenants``)."""
    columns: dict[tuple[str, str], list[str]] = {}
    with conn.cursor(row_factory=tuple_row) as cur:
        for schema_name, table_name, column_name in cur.execute(_CATALOG_QUERY).fetchall():
            columns.setdefault((schema_name, table_name), []).append(column_name)
    catalog = {}
    for (schema, table), cols in columns.items():
        tenant_column = _TENANT_COLUMN_OVERRIDES.get(table, "tenant_id")
        if table in _NEVER_WRITABLE or tenant_column not in cols:
            continue
        catalog[table] = TableInfo(table, tuple(cols), tenant_column, schema)
    return catalog


def parse_tenant_id(value: object) -> uuid.UUID:
    """A tenant id is a UUID; anything else (None, '', 'abc', 42) is refused with a clear error."""
    if isinstance(value, uuid.UUID):
        return value
    if not isinstance(value, str) or not value.strip():
        raise TenantScopeError(
            f"a tenant id is required for tenant-scoped work (got {value!r}); "
            "pass the tenant's UUID."
        )
    try:
        return uuid.UUID(value.strip())
    except ValueError:
        raise TenantScopeError(
            f"tenant id {value!r} is not a UUID; pass the tenant's UUID."
        ) from None


class TenantScopedClient:
    """Hands out tenant-scoped transactions over a pool (or a connection string)."""

    def __init__(
        self,
        source: ConnectionPool | str,
        *,
        actor: str,
        mode: Mode = "authenticated",
    ) -> None:
        if mode not in ("authenticated", "service_role"):
            raise TenantScopeError(f"unknown mode {mode!r}; use 'authenticated' or 'service_role'.")
        if not isinstance(actor, str) or not actor.strip():
            raise TenantScopeError("an actor is required so audit_events can say who wrote.")
        if mode == "service_role" and not actor.startswith("service_role:"):
            actor = f"service_role:{actor}"
        if mode == "service_role" and not SERVICE_ROLE_ACTOR_PATTERN.fullmatch(actor):
            # The database would treat it as no actor at all (015), refused in enforce mode.
            raise TenantScopeError(
                f"the actor {actor!r} is not service_role:<name> with a <name> of 1-200 "
                "letters, digits or . _ : @ / + # = -; name the caller that way."
            )
        if actor == UNATTRIBUTED_ACTOR:
            # The audit guard reads this actor as "none given" (012's report mode marker).
            raise TenantScopeError(
                f"the actor {UNATTRIBUTED_ACTOR!r} is reserved; name the caller instead."
            )
        self._source = source
        self.actor = actor
        self.mode: Mode = mode
        self._catalog: dict[str, TableInfo] | None = None
        # Rendered statements by shape; see TenantTransaction._rendered.
        self._statements: dict[tuple[Any, ...], bytes] = {}

    @contextlib.contextmanager
    def _connection(self) -> Iterator[psycopg.Connection]:
        if isinstance(self._source, ConnectionPool):
            with self._source.connection() as conn:
                yield conn
        else:
            with psycopg.connect(self._source) as conn:
                yield conn

    @property
    def catalog(self) -> dict[str, TableInfo]:
        if self._catalog is None:
            with self._connection() as conn:
                self._catalog = load_catalog(conn)
                conn.rollback()
        return self._catalog

    @contextlib.contextmanager
    def transaction(self, tenant_id: uuid.UUID | str) -> Iterator[TenantTransaction]:
        """One unit of work for one tenant: committed on success, rolled back on any error."""
        tenant = parse_tenant_id(tenant_id)
        catalog = self.catalog
        with self._connection() as conn:
            with conn.transaction():
                conn.execute(_ENTER_QUERY, (self.mode, str(tenant), self.actor))
                tx = TenantTransaction(conn, tenant, catalog, self.mode, self._statements)
                try:
                    yield tx
                finally:
                    # The connection goes back to the pool (or closes) now; a kept reference
                    # must not run as the login role, or inside someone else's transaction.
                    tx._close()


class TenantTransaction:
    """Insert / update / delete / select inside one tenant; values always travel as parameters."""

    def __init__(
        self,
        conn: psycopg.Connection,
        tenant_id: uuid.UUID,
        catalog: Mapping[str, TableInfo],
        mode: Mode,
        statements: dict[tuple[Any, ...], bytes] | None = None,
    ) -> None:
        self._conn = conn
        self.tenant_id = tenant_id
        self._catalog = catalog
        self._mode = mode
        self._statements = {} if statements is None else statements
        self._closed = False

    def _close(self) -> None:
        self._closed = True

    def _open_connection(self) -> psycopg.Connection:
        if self._closed:
            raise TenantScopeError(
                "this tenant transaction has ended (its with block is over); open a new one "
                "with client.transaction(tenant_id)."
            )
        return self._conn

    @property
    def connection(self) -> psycopg.Connection:
        """The underlying connection, inside this tenant's transaction (for reads and tests)."""
        return self._open_connection()

    def _run(self, query: sql.Composable | bytes, params: Sequence[Any]) -> psycopg.Cursor:
        # A cursor of its own: a pooled connection's row factory is not ours to change.
        return self._open_connection().cursor(row_factory=dict_row).execute(query, params)

    def _rendered(self, key: tuple[Any, ...], build: Callable[[], sql.Composable]) -> bytes:
        """The statement for ``key``, composed and quoted once per client, not once per write.

        Only called after validation, so every identifier in ``key`` is a known table or column
        of the catalog; the cache therefore holds at most one entry per statement shape.
        """
        rendered = self._statements.get(key)
        if rendered is None:
            rendered = build().as_bytes(self._conn)
            self._statements[key] = rendered
        return rendered

    # -- validation: everything here runs before a statement is built ----------------------

    def _table(self, table: object) -> TableInfo:
        self._open_connection()
        if not _is_plain_name(table) or table not in self._catalog:
            raise TenantScopeError(
                f"table {table!r} is not a tenant-scoped table this client can prove is scoped; "
                "use one of: " + ", ".join(sorted(self._catalog)) + "."
            )
        return self._catalog[table]

    def _columns(self, info: TableInfo, names: Iterable[object]) -> list[str]:
        checked = []
        for name in names:
            if not _is_plain_name(name) or name not in info.columns:
                raise TenantScopeError(f"table {info.name} has no column {name!r}.")
            checked.append(name)
        return checked

    def _same_tenant(self, info: TableInfo, value: object) -> None:
        try:
            claimed = parse_tenant_id(value)
        except TenantScopeError:
            raise TenantScopeError(
                f"{info.name}.{info.tenant_column} must be this transaction's tenant "
                f"{self.tenant_id} (got {value!r})."
            ) from None
        if claimed != self.tenant_id:
            raise TenantScopeError(
                f"row aimed at tenant {claimed} inside a transaction for tenant {self.tenant_id}; "
                "open a transaction for that tenant instead."
            )

    def _scoped_row(self, info: TableInfo, row: Mapping[str, Any]) -> dict[str, Any]:
        scoped = _plain_copy(row, f"a row for {info.name}")
        if not scoped:
            raise TenantScopeError(f"a row for {info.name} must be a non-empty mapping.")
        self._columns(info, scoped)
        for column, value in scoped.items():
            check_plain_value(value, f"the value for {info.name}.{column}")
        if info.tenant_column in scoped:
            self._same_tenant(info, scoped[info.tenant_column])
        scoped[info.tenant_column] = self.tenant_id
        return scoped

    def _where_copy(self, info: TableInfo, where: object) -> dict[str, Any]:
        """The caller's where, read once; every later step uses only this copy."""
        return {} if where is None else _plain_copy(where, f"where for {info.name}")

    def _where(self, info: TableInfo, where: dict[str, Any]) -> tuple[sql.Composable, list]:
        """The condition and its parameters, both from one plain copy (see _where_copy)."""
        where = dict(where)
        self._columns(info, where)
        for column, value in where.items():
            check_plain_value(value, f"the where value for {info.name}.{column}")
        if info.tenant_column in where:
            self._same_tenant(info, where.pop(info.tenant_column))
        clauses = [sql.SQL("{} = %s").format(sql.Identifier(info.tenant_column))]
        clauses += [sql.SQL("{} = %s").format(sql.Identifier(c)) for c in where]
        return sql.SQL(" AND ").join(clauses), [self.tenant_id, *where.values()]

    # -- operations ---------------------------------------------------------------------------

    def insert(self, table: str, row: Mapping[str, Any]) -> dict[str, Any]:
        """Insert one row (tenant filled in, or checked if given); returns the stored row."""
        info = self._table(table)
        scoped = self._scoped_row(info, row)
        columns = tuple(scoped)
        query = self._rendered(
            ("insert", info.schema, info.name, columns),
            lambda: sql.SQL("INSERT INTO {} ({}) VALUES ({}) RETURNING *").format(
                info.identifier,
                sql.SQL(", ").join(map(sql.Identifier, columns)),
                sql.SQL(", ").join(sql.Placeholder() * len(columns)),
            ),
        )
        return self._run(query, list(scoped.values())).fetchone()

    def insert_many(self, table: str, rows: Iterable[Mapping[str, Any]]) -> int:
        """Bulk insert: every row is validated first, then sent in one COPY (or one batch).

        Rows must all have the same columns. COPY is only used in service-role mode, because
        Postgres does not allow COPY FROM into a table with RLS for roles subject to it.
        """
        info = self._table(table)
        scoped = [self._scoped_row(info, r) for r in rows]
        if not scoped:
            return 0
        columns = list(scoped[0])
        for r in scoped:
            if list(r) != columns:
                raise TenantScopeError(
                    f"insert_many into {info.name} needs the same columns in every row."
                )
        if self._mode == "service_role":
            copy = sql.SQL("COPY {} ({}) FROM STDIN").format(
                info.identifier, sql.SQL(", ").join(map(sql.Identifier, columns))
            )
            with self._open_connection().cursor() as cur, cur.copy(copy) as writer:
                for r in scoped:
                    writer.write_row([r[c] for c in columns])
        else:
            query = sql.SQL("INSERT INTO {} ({}) VALUES ({})").format(
                info.identifier,
                sql.SQL(", ").join(map(sql.Identifier, columns)),
                sql.SQL(", ").join(sql.Placeholder() * len(columns)),
            )
            with self._open_connection().cursor() as cur:
                cur.executemany(query, [[r[c] for c in columns] for r in scoped])
        return len(scoped)

    def update(
        self, table: str, values: Mapping[str, Any], *, where: Mapping[str, Any]
    ) -> list[dict[str, Any]]:
        """Update this tenant's rows matching ``where``; returns the updated rows."""
        info = self._table(table)
        if not isinstance(values, Mapping):
            raise TenantScopeError(f"update of {info.name} needs at least one value to set.")
        values = _plain_copy(values, f"the values for {info.name}")
        where = self._where_copy(info, where)
        if not values:
            raise TenantScopeError(f"update of {info.name} needs at least one value to set.")
        self._columns(info, values)
        for column, value in values.items():
            check_plain_value(value, f"the value for {info.name}.{column}")
        if info.tenant_column in values:
            self._same_tenant(info, values.pop(info.tenant_column))
            if not values:
                return self.select(table, where=where)
        if not where:
            raise TenantScopeError(
                f"updating {info.name} needs a where clause; to touch every row of the tenant "
                "say so explicitly with where={'tenant_id': <tenant>}."
            )
        condition, where_params = self._where(info, where)
        query = sql.SQL("UPDATE {} SET {} WHERE {} RETURNING *").format(
            info.identifier,
            sql.SQL(", ").join(sql.SQL("{} = %s").format(sql.Identifier(c)) for c in values),
            condition,
        )
        return self._run(query, [*values.values(), *where_params]).fetchall()

    def delete(self, table: str, *, where: Mapping[str, Any]) -> list[dict[str, Any]]:
        """Delete this tenant's rows matching ``where``; returns the deleted rows."""
        info = self._table(table)
        where = self._where_copy(info, where)
        if not where:
            raise TenantScopeError(
                f"deleting rows of {info.name} needs a where clause; to remove every row of the "
                "tenant say so explicitly with where={'tenant_id': <tenant>}."
            )
        condition, params = self._where(info, where)
        query = sql.SQL("DELETE FROM {} WHERE {} RETURNING *").format(info.identifier, condition)
        return self._run(query, params).fetchall()

    def select(
        self,
        table: str,
        *,
        where: Mapping[str, Any] | None = None,
        columns: Sequence[str] | None = None,
        order_by: Sequence[str] | None = None,
        limit: int | None = None,
    ) -> list[dict[str, Any]]:
        """Read this tenant's rows (also filtered by RLS in authenticated mode)."""
        info = self._table(table)
        condition, params = self._where(info, self._where_copy(info, where))
        selected = self._columns(info, columns) if columns else None
        ordering = self._columns(info, order_by) if order_by else []
        if limit is not None and (not isinstance(limit, int) or limit < 0):
            raise TenantScopeError(f"limit must be a non-negative integer (got {limit!r}).")
        query = sql.SQL("SELECT {} FROM {} WHERE {}").format(
            sql.SQL(", ").join(map(sql.Identifier, selected)) if selected else sql.SQL("*"),
            info.identifier,
            condition,
        )
        if ordering:
            query += sql.SQL(" ORDER BY {}").format(
                sql.SQL(", ").join(map(sql.Identifier, ordering))
            )
        if limit is not None:
            query += sql.SQL(" LIMIT %s")
            params.append(limit)
        return self._run(query, params).fetchall()
