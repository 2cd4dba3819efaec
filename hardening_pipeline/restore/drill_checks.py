"""The drill checks: the guarantees must come back with the data, proved on the restored copy.

Each check tries to break one guarantee on the restored database: another tenant's rows, no
tenant at all, ``anon``, rewriting the audit log (in replica mode, where ordinary triggers are
skipped), a message pointing at another tenant's unit, and a write through TenantScopedClient
that must leave exactly its audit rows. They are package code, not a pytest suite, so the drill
runs from an installed wheel without ``tests/`` and without the test dependencies.

Probe rows are built from the restored catalog, not from the demo schema: every NOT NULL column
without a default gets a value that fits its type, and a foreign key the row of an existing parent
of the same tenant (or a probe parent built the same way). A database with fewer than two tenants
with messages (a new install, a single customer) gets synthetic probe tenants, each with a
development, a unit and a message, inside a transaction that is rolled back.

A check passes only when it could look and the guarantee held; a database that cannot be checked
(a probe row no value fits, named by table and column; a connection error) fails it.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import errors, sql

from hardening_pipeline.db.connection import connect
from hardening_pipeline.db.tenant_scoped_client import TenantScopedClient


class CheckRefuted(Exception):
    """The guarantee a drill check tried to break did not hold; the message says how."""


@dataclass(frozen=True)
class CheckOutcome:
    """One drill check on the restored database."""

    name: str
    passed: bool
    detail: str
    seconds: float


@dataclass
class DrillChecksRun:
    """Every drill check's outcome, in the order they ran."""

    outcomes: list[CheckOutcome] = field(default_factory=list)

    @property
    def passed(self) -> int:
        return sum(o.passed for o in self.outcomes)

    @property
    def failed(self) -> int:
        return len(self.outcomes) - self.passed

    @property
    def output(self) -> str:
        """One line per check and a summary line, for the drill report."""
        lines = [
            f"{'PASSED' if o.passed else 'FAILED'} {o.name}: {o.detail}" for o in self.outcomes
        ]
        lines.append(f"{self.passed} passed, {self.failed} failed")
        return "\n".join(lines)


def _expect_refused(
    conn: psycopg.Connection,
    error: type[psycopg.Error],
    statements: list[str],
    what: str,
) -> None:
    """Run ``statements`` in a rolled-back transaction; they must fail with ``error``."""
    try:
        with conn.transaction(force_rollback=True):
            for statement in statements:
                conn.execute(statement.encode())
    except error:
        return
    except psycopg.Error as exc:
        raise CheckRefuted(
            f"{what} failed with {type(exc).__name__} instead of {error.__name__}: "
            f"{str(exc).strip().splitlines()[0]}"
        ) from exc
    raise CheckRefuted(f"{what} succeeded; it must be refused")


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


def _first_line(exc: BaseException) -> str:
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
            explain(f"the database refused a probe row{where}: {_first_line(exc)}")
        ) from exc


def _on_unit(tenant: uuid.UUID, unit: Mapping[str, Any]) -> dict[str, Any]:
    """A message of ``tenant`` in ``unit`` (whichever tenant's), as far as messages has them."""
    given = {"tenant_id": tenant, "unit_id": unit["id"]}
    if "development_id" in unit:
        given["development_id"] = unit["development_id"]
    return given


def _first_unit(conn: psycopg.Connection, tenant: uuid.UUID) -> dict[str, Any] | None:
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
            unit = _first_unit(probe.conn, tenant) if probe.table("public", "units") else None
            given = _on_unit(tenant, unit) if unit else {}
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


def _as_tenant(conn: psycopg.Connection, tenant: uuid.UUID) -> None:
    conn.execute("SET LOCAL ROLE authenticated")
    conn.execute("SELECT set_config('app.tenant_id', %s, true)", (str(tenant),))


# Tables where a permissive kit policy grants the tenant its own rows through app.tenant_id. On
# a table the kit adopted, its policy is RESTRICTIVE: what a tenant may see is the app's own
# policies' business (JWT, memberships), and the kit only promises that no foreign row shows.
_KIT_SCOPED_TABLES = """
SELECT DISTINCT c.relname
FROM pg_catalog.pg_policy p
JOIN pg_catalog.pg_class c ON c.oid = p.polrelid
WHERE c.relnamespace = 'public'::regnamespace AND p.polpermissive
  AND pg_catalog.pg_get_expr(p.polqual, p.polrelid) ~ 'hardening\\.current_tenant_ids?\\('
"""


def tables_scoped_by_kit_policy(conn: psycopg.Connection) -> set[str]:
    """The public tables whose own rows a tenant sees through the kit's permissive policy."""
    return {r["relname"] for r in conn.execute(_KIT_SCOPED_TABLES).fetchall()}


def each_tenant_sees_only_its_rows(url: str) -> str:
    with connect(url) as conn, probe_tenants(conn) as probe:
        sees_own = "messages" in tables_scoped_by_kit_policy(conn)
        for tenant in probe.tenants:
            with conn.transaction(force_rollback=True):
                _as_tenant(conn, tenant)
                seen = conn.execute("SELECT DISTINCT tenant_id FROM messages").fetchall()
            visible = [r["tenant_id"] for r in seen]
            if (visible != [tenant]) if sees_own else any(t != tenant for t in visible):
                raise CheckRefuted(
                    f"as authenticated in tenant {tenant}, messages of tenants "
                    f"{sorted(str(t) for t in visible)} are visible{probe.note}"
                )
    count = len(probe.tenants)
    if sees_own:
        return f"{count} tenants each see only their own messages{probe.note}"
    return (
        f"{count} tenants see no other tenant's messages (the app's policies decide own)"
        f"{probe.note}"
    )


def no_tenant_context_sees_nothing(url: str) -> str:
    with connect(url) as conn, probe_tenants(conn) as probe:
        total = conn.execute("SELECT count(*) AS n FROM messages").fetchone()["n"]
        with conn.transaction(force_rollback=True):
            conn.execute("SET LOCAL ROLE authenticated")
            visible = conn.execute("SELECT count(*) AS n FROM messages").fetchone()["n"]
    if visible:
        raise CheckRefuted(
            f"authenticated without a tenant sees {visible} of {total} messages{probe.note}"
        )
    return f"authenticated without a tenant sees 0 of {total} messages{probe.note}"


def anon_reads_nothing(url: str) -> str:
    with connect(url) as conn:
        _expect_refused(
            conn,
            errors.InsufficientPrivilege,
            ["SET LOCAL ROLE anon", "SELECT 1 FROM messages LIMIT 1"],
            "reading messages as anon",
        )
    return "anon is refused on messages"


# Rewrites of the audit log the restored database must refuse, whoever sends them.
AUDIT_REWRITES = {
    "update": "UPDATE audit_events SET actor = 'x'",  # refused-write probe
    "delete": "DELETE FROM audit_events",  # refused-write probe
    "truncate": "TRUNCATE audit_events",  # refused-write probe
}


def _audit_statement_refused(statement: str) -> Callable[[str], str]:
    def check(url: str) -> str:
        with connect(url) as conn:
            _expect_refused(
                conn,
                errors.InsufficientPrivilege,
                ["SET LOCAL session_replication_role = replica", statement],
                f"{statement} in replica mode",
            )
        return f"{statement} refused, even in replica mode"

    return check


def _unit_key(conn: psycopg.Connection, name: str | None) -> bool:
    """Whether ``name`` is a foreign key of messages that covers its unit_id column."""
    found = conn.execute(
        "SELECT 1 FROM pg_catalog.pg_constraint c JOIN pg_catalog.pg_attribute a "
        "ON a.attrelid = c.conrelid AND a.attnum = ANY (c.conkey) "
        "WHERE c.conrelid = 'public.messages'::regclass AND c.contype = 'f' "
        "AND c.conname = %s AND a.attname = 'unit_id'",
        (name,),
    ).fetchone()
    return found is not None


def cross_tenant_message_is_refused(url: str) -> str:
    """A message of one tenant on another tenant's unit; the composite key must refuse it.

    The same probe on the tenant's own unit must be accepted first, so a refusal proves the key
    on the unit and not a probe row the table would refuse anyway.
    """
    with connect(url) as conn, probe_tenants(conn) as probe:
        a, b = probe.tenants
        theirs = _first_unit(conn, b)
        if theirs is None:
            raise CheckRefuted(f"tenant {b} has messages but no units{probe.note}")
        own = _first_unit(conn, a) or probe.rows.insert(("public", "units"), {}, a)
        messages = ("public", "messages")
        try:
            with conn.transaction(force_rollback=True):
                probe.rows.insert(messages, _on_unit(a, own), a)
        except psycopg.Error as exc:
            raise CheckRefuted(
                f"a probe message of tenant {a} on its own unit was refused, so the cross-tenant "
                f"probe would prove nothing: {_first_line(exc)}"
            ) from exc
        try:
            with conn.transaction(force_rollback=True):
                probe.rows.insert(messages, _on_unit(a, theirs), a)
        except errors.ForeignKeyViolation as exc:
            key = exc.diag.constraint_name
            if not _unit_key(conn, key):
                raise CheckRefuted(
                    f"the message of tenant {a} on a unit of tenant {b} was refused by {key}, "
                    f"not by a key on its unit{probe.note}"
                ) from exc
            return (
                f"a message of one tenant pointing at another tenant's unit is refused ({key})"
                f"{probe.note}"
            )
    raise CheckRefuted(f"a message of tenant {a} was accepted on a unit of tenant {b}{probe.note}")


def _client_tenant(conn: psycopg.Connection) -> uuid.UUID | None:
    """A restored tenant for the client's write: one with messages first, else any."""
    row = conn.execute(
        "SELECT t.id FROM tenants t ORDER BY EXISTS "
        "(SELECT 1 FROM messages m WHERE m.tenant_id = t.id) DESC, t.id LIMIT 1"
    ).fetchone()
    conn.rollback()
    return None if row is None else row["id"]


@contextlib.contextmanager
def _committed_probe_tenant(conn: psycopg.Connection) -> Iterator[uuid.UUID]:
    """A synthetic probe tenant other connections see (the client opens its own), removed after.

    Only for a restored copy without any tenant; its text columns carry ``drill-probe-``.
    """
    with conn.transaction():
        conn.execute("SELECT set_config('app.actor', %s, true)", (PROBE_ACTOR,))
        tenant = add_probe_tenant(ProbeRows(conn), with_rows=False)
    try:
        yield tenant
    finally:
        with contextlib.suppress(psycopg.Error), conn.transaction():
            conn.execute("SELECT set_config('app.actor', %s, true)", (PROBE_ACTOR,))
            conn.execute("DELETE FROM tenants WHERE id = %s", (tenant,))  # refused-write probe


def client_writes_are_audited(url: str) -> str:
    with connect(url) as conn:
        restored = _client_tenant(conn)
        if restored is not None:
            return _audited_client_write(conn, url, restored)
        with _committed_probe_tenant(conn) as tenant:
            detail = _audited_client_write(conn, url, tenant)
    return f"{detail} (a synthetic probe tenant, removed after)"


def _audited_client_write(conn: psycopg.Connection, url: str, tenant: uuid.UUID) -> str:
    before = conn.execute("SELECT coalesce(max(id), 0) AS m FROM audit_events").fetchone()["m"]
    # Through RLS where the kit's policy grants the tenant its rows; else as a service job.
    mode = (
        "authenticated"
        if "onboarding_attempts" in tables_scoped_by_kit_policy(conn)
        else ("service_role")
    )
    conn.rollback()
    client = TenantScopedClient(url, actor="drill:smoke", mode=mode)
    with client.transaction(tenant) as tx:
        row = tx.insert("onboarding_attempts", {"email": "drill@example.com"})
        tx.delete("onboarding_attempts", where={"id": row["id"]})
    events = conn.execute(
        "SELECT operation, actor, tenant_id FROM audit_events WHERE id > %s ORDER BY id",
        (before,),
    ).fetchall()
    conn.rollback()
    got = [(e["operation"], e["actor"], e["tenant_id"]) for e in events]
    wanted = [("INSERT", client.actor, tenant), ("DELETE", client.actor, tenant)]
    if got != wanted:
        raise CheckRefuted(f"a client insert and delete left audit rows {got}, not {wanted}")
    return "a client insert and delete left one audit row each, with the actor and tenant"


def audit_triggers_are_enabled_always(url: str) -> str:
    with connect(url) as conn:
        # The kit's triggers (functions in the hardening schema); the app's own keep their state.
        rows = conn.execute(
            "SELECT c.relname, t.tgname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "
            "JOIN pg_proc p ON p.oid = t.tgfoid "
            "WHERE NOT t.tgisinternal AND t.tgenabled <> 'A' "
            "AND p.pronamespace = 'hardening'::regnamespace ORDER BY 1, 2"
        ).fetchall()
        kit_triggers = conn.execute(
            "SELECT count(*) AS n FROM pg_trigger t JOIN pg_proc p ON p.oid = t.tgfoid "
            "WHERE p.pronamespace = 'hardening'::regnamespace"
        ).fetchone()["n"]
    if rows:
        names = ", ".join(f"{r['tgname']} on {r['relname']}" for r in rows)
        raise CheckRefuted(f"triggers not ENABLE ALWAYS (replica mode skips them): {names}")
    if kit_triggers == 0:
        raise CheckRefuted("the restored database has none of the kit's audit triggers")
    return f"all {kit_triggers} of the kit's triggers are ENABLE ALWAYS"


DRILL_CHECKS: dict[str, Callable[[str], str]] = {
    "each_tenant_sees_only_its_rows": each_tenant_sees_only_its_rows,
    "no_tenant_context_sees_nothing": no_tenant_context_sees_nothing,
    "anon_reads_nothing": anon_reads_nothing,
    "audit_log_refuses_update": _audit_statement_refused(AUDIT_REWRITES["update"]),
    "audit_log_refuses_delete": _audit_statement_refused(AUDIT_REWRITES["delete"]),
    "audit_log_refuses_truncate": _audit_statement_refused(AUDIT_REWRITES["truncate"]),
    "cross_tenant_message_is_refused": cross_tenant_message_is_refused,
    "client_writes_are_audited": client_writes_are_audited,
    "audit_triggers_are_enabled_always": audit_triggers_are_enabled_always,
}


def run_drill_checks(url: str) -> DrillChecksRun:
    """Run every drill check against the restored database at ``url``; never raises."""
    run = DrillChecksRun()
    for name, check in DRILL_CHECKS.items():
        started = time.perf_counter()
        try:
            passed, detail = True, check(url)
        except CheckRefuted as exc:
            passed, detail = False, str(exc)
        except Exception as exc:  # a check that cannot look is a failed check, not a crash
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            passed, detail = False, f"could not check: {type(exc).__name__}: {first}"
        run.outcomes.append(CheckOutcome(name, passed, detail, time.perf_counter() - started))
    return run
