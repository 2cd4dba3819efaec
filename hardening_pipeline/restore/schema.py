"""Rebuild a backed-up app from its schema object: roles, pre-data, rows, then post-data.

This is the order ``pg_restore`` uses, for the same reasons: rows are copied into tables that
have no index, key or trigger yet (fast, and no audit trigger fires on a restore), and keys are
built once over the loaded rows. Unlike ``pg_restore`` it never gives up on a backup because its
rows break a constraint: the constraint is added ``NOT VALID`` (foreign keys) or left out
(unique keys), and the drill reports it red, naming the constraint and the rows.

``pg_dump`` writes each object as an entry under a header comment
(``-- Name: ...; Type: ...; Schema: ...; Owner: ...``); the sections are split on those headers
and each entry runs on its own, so one that fails is named, not lost in a script. Roles are
cluster-wide and not in the dump: those the target lacks are created ``NOLOGIN`` (``BYPASSRLS``
where the source role had it), so ownership, grants and policies come back as they were.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import psycopg
from psycopg import sql
from psycopg.rows import tuple_row

from hardening_pipeline.backup.manifest import AppSchemaEntry, SchemaRole
from hardening_pipeline.db.connection import connect

_HEADER = re.compile(
    r"^--\n-- (?:Data for )?Name: (?P<name>.*?); Type: (?P<type>[A-Z][A-Z ]*?); "
    r"Schema: (?P<schema>[^;\n]*?)(?:; Owner: (?P<owner>[^\n]*))?\n--\n",
    re.M,
)
# pg_dump 17.6 / 16.10 / 15.14 and later fence a plain dump with these psql meta-commands; they
# are not SQL and only guard psql against a malicious server, which a restore here does not use.
_META = re.compile(r"^\\(?:restrict|unrestrict)\b.*$", re.M)
_CREATE_SCHEMA = re.compile(r"^CREATE SCHEMA (?!IF NOT EXISTS)", re.M)

# Built in parallel after the rows: keys and indexes. Foreign keys need the keys first.
_KEY_TYPES = {"CONSTRAINT", "INDEX"}
_FK_TYPES = {"FK CONSTRAINT"}
_MAX_LISTED_ROWS = 20


@dataclass(frozen=True)
class DumpEntry:
    """One object of a ``pg_dump`` section: its header fields and its SQL."""

    name: str
    type: str
    schema: str
    sql: str

    @property
    def label(self) -> str:
        where = f"{self.schema}." if self.schema and self.schema != "-" else ""
        return f"{self.type.lower()} {where}{self.name}"


@dataclass
class ConstraintViolation:
    """A constraint the restored rows break: kept NOT VALID (or left out), reported red."""

    constraint: str
    table: str
    rows: list[str]
    detail: str

    def describe(self) -> str:
        listed = ", ".join(self.rows[:_MAX_LISTED_ROWS]) or self.detail
        return f"{self.table} breaks {self.constraint}: {listed}"


@dataclass
class SchemaRebuild:
    """What rebuilding the schema did: roles created, entries that failed, broken constraints."""

    roles_created: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    violations: list[ConstraintViolation] = field(default_factory=list)


def split_dump(text: str) -> tuple[str, list[DumpEntry]]:
    """The prologue (session settings) and the entries of one ``pg_dump`` plain section."""
    text = _META.sub("", text)
    matches = list(_HEADER.finditer(text))
    prologue = text[: matches[0].start()] if matches else text
    entries = []
    for i, match in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(text)
        body = text[match.end() : end].strip()
        if body:
            entries.append(
                DumpEntry(match["name"], match["type"], match["schema"] or "-", body + "\n")
            )
    return prologue, entries


def create_missing_roles(conn: psycopg.Connection, roles: Iterable[SchemaRole]) -> list[str]:
    """Create, NOLOGIN, each role the schema refers to that the target lacks; returns them."""
    created = []
    for role in roles:
        row = conn.execute("SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = %s", (role.name,))
        if row.fetchone():
            continue
        conn.execute(
            sql.SQL("CREATE ROLE {} NOLOGIN{}").format(
                sql.Identifier(role.name), sql.SQL(" BYPASSRLS" if role.bypassrls else "")
            )
        )
        created.append(role.name)
    return created


def _run(conn: psycopg.Connection, statement: str) -> None:
    # No parameters: psycopg sends the text as one simple query, so an entry of several
    # statements (CREATE TABLE; ALTER TABLE ... OWNER TO) runs as one implicit transaction.
    conn.execute(statement.encode("utf-8"))


def _run_retrying(conn: psycopg.Connection, statement: str, attempts: int = 3) -> None:
    """Run, retrying a deadlock: two foreign keys built at once can lock the same two tables
    in opposite orders, and Postgres then cancels one of them."""
    for attempt in range(attempts):
        try:
            _run(conn, statement)
            return
        except psycopg.errors.DeadlockDetected:
            if attempt == attempts - 1:
                raise


_PROLOGUE_SET = re.compile(r"^SET (?P<name>[a-z_]+) = [^;\n]*;$", re.M)


def settings_the_server_knows(conn: psycopg.Connection, prologue: str) -> str:
    """The prologue without the ``SET`` lines of settings the target server does not have.

    A ``pg_dump`` 17 or newer resets ``transaction_timeout``, which a 15 or 16 server refuses;
    the dump is otherwise loadable there, so the drill must not fail on the kit's tool version.
    """
    rows = conn.execute("SELECT name FROM pg_catalog.pg_settings").fetchall()
    known = {row["name"] for row in rows}

    def keep(match: re.Match[str]) -> str:
        return match[0] if match["name"] in known else ""

    return _PROLOGUE_SET.sub(keep, prologue)


def _session(url: str, prologue: str) -> psycopg.Connection:
    conn = connect(url, autocommit=True, client_encoding="UTF8")
    _run(conn, settings_the_server_knows(conn, prologue))
    # Index and key builds sort the whole table; the default 64 MB spills to disk early.
    conn.execute("SET maintenance_work_mem = '256MB'")
    return conn


def _error_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def apply_pre_data(url: str, text: str, result: SchemaRebuild) -> None:
    """Every pre-data entry, in pg_dump's order; ``CREATE SCHEMA`` tolerates ``public``."""
    prologue, entries = split_dump(text)
    with _session(url, prologue) as conn:
        for entry in entries:
            statement = entry.sql
            if entry.type == "SCHEMA":
                # Every database already has ``public`` (and a target may have more).
                statement = _CREATE_SCHEMA.sub("CREATE SCHEMA IF NOT EXISTS ", statement)
            try:
                _run(conn, statement)
            except psycopg.Error as exc:
                result.failed.append(f"{entry.label}: {_error_line(exc)}")


def _table_of(entry: DumpEntry) -> str:
    """``schema.table`` of a constraint entry, whose header name is ``<table> <constraint>``."""
    return f"{entry.schema}.{entry.name.split(' ', 1)[0]}"


def _constraint_of(entry: DumpEntry) -> str:
    return entry.name.split(" ", 1)[1] if " " in entry.name else entry.name


def _row_label(conn: psycopg.Connection, table: str) -> sql.Composable:
    """How to name a row of ``table`` in a report: its primary key, else its ctid."""
    cols = conn.cursor(row_factory=tuple_row).execute(
        "SELECT a.attname FROM pg_catalog.pg_index i "
        "JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) "
        "WHERE i.indrelid = pg_catalog.to_regclass(%s) AND i.indisprimary ORDER BY a.attnum",
        (_quoted(table),),
    )
    names = [r[0] for r in cols.fetchall()]
    if not names:
        return sql.SQL("'ctid=' || c.ctid::text")
    parts = [
        sql.SQL("{} || '=' || coalesce(c.{}::text, 'NULL')").format(
            sql.Literal(name), sql.Identifier(name)
        )
        for name in names
    ]
    return sql.SQL(" || ',' || ").join(parts)


def _quoted(table: str) -> str:
    schema, _, name = table.partition(".")
    return sql.Identifier(schema, name).as_string(None)


def _foreign_key_rows(conn: psycopg.Connection, table: str, constraint: str) -> list[str]:
    """The rows of ``table`` whose key has no parent under foreign key ``constraint``."""
    row = (
        conn.cursor(row_factory=tuple_row)
        .execute(
            "SELECT k.confrelid::regclass::text, "
            "ARRAY(SELECT a.attname FROM unnest(k.conkey) WITH ORDINALITY u(n, o) "
            "  JOIN pg_catalog.pg_attribute a ON a.attrelid = k.conrelid AND a.attnum = u.n "
            "  ORDER BY u.o), "
            "ARRAY(SELECT a.attname FROM unnest(k.confkey) WITH ORDINALITY u(n, o) "
            "  JOIN pg_catalog.pg_attribute a ON a.attrelid = k.confrelid AND a.attnum = u.n "
            "  ORDER BY u.o) "
            "FROM pg_catalog.pg_constraint k "
            "WHERE k.conrelid = pg_catalog.to_regclass(%s) AND k.conname = %s",
            (_quoted(table), constraint),
        )
        .fetchone()
    )
    if row is None:
        return []
    parent, child_cols, parent_cols = row
    matches = sql.SQL(" AND ").join(
        sql.SQL("p.{} = c.{}").format(sql.Identifier(pc), sql.Identifier(cc))
        for cc, pc in zip(child_cols, parent_cols, strict=True)
    )
    present = sql.SQL(" AND ").join(
        sql.SQL("c.{} IS NOT NULL").format(sql.Identifier(cc)) for cc in child_cols
    )
    schema, _, name = table.partition(".")
    query = sql.SQL(
        "SELECT {} FROM {} c WHERE {} AND NOT EXISTS (SELECT 1 FROM {} p WHERE {}) LIMIT {}"
    ).format(
        _row_label(conn, table),
        sql.Identifier(schema, name),
        present,
        sql.SQL(parent),  # regclass text: already quoted by Postgres
        matches,
        sql.Literal(_MAX_LISTED_ROWS + 1),
    )
    return [str(r[0]) for r in conn.cursor(row_factory=tuple_row).execute(query).fetchall()]


def _apply_constraint(conn: psycopg.Connection, entry: DumpEntry, result: SchemaRebuild) -> None:
    """Add one key; if the rows break it, keep it NOT VALID (foreign keys) and name the rows."""
    try:
        _run_retrying(conn, entry.sql)
        return
    except psycopg.errors.ForeignKeyViolation as exc:
        error: psycopg.Error = exc
        if entry.type in _FK_TYPES:
            table, constraint = _table_of(entry), _constraint_of(entry)
            try:
                _run(conn, entry.sql.rstrip().rstrip(";") + " NOT VALID;")
                rows = _foreign_key_rows(conn, table, constraint)
            except psycopg.Error as retry:
                result.failed.append(f"{entry.label}: {_error_line(retry)}")
                return
            result.violations.append(
                ConstraintViolation(
                    constraint, table, rows, exc.diag.message_detail or _error_line(exc)
                )
            )
            return
    except (psycopg.errors.UniqueViolation, psycopg.errors.CheckViolation) as exc:
        error = exc
    except psycopg.Error as exc:
        result.failed.append(f"{entry.label}: {_error_line(exc)}")
        return
    # A unique or primary key cannot be NOT VALID: it stays out, and the duplicate is named.
    result.violations.append(
        ConstraintViolation(
            _constraint_of(entry),
            _table_of(entry),
            [],
            error.diag.message_detail or _error_line(error),
        )
    )


def _parallel(
    url: str, prologue: str, entries: Sequence[DumpEntry], workers: int, work: Callable
) -> None:
    """Run ``work(conn, entry)`` over ``entries`` on ``workers`` connections."""
    pending = list(entries)
    lock = threading.Lock()
    failures: list[BaseException] = []

    def loop() -> None:
        try:
            with _session(url, prologue) as conn:
                while True:
                    with lock:
                        if not pending or failures:
                            return
                        entry = pending.pop(0)
                    work(conn, entry)
        except BaseException as exc:  # re-raised below, in the caller's thread
            with lock:
                failures.append(exc)

    run_workers(loop, workers, failures)


_ON_TABLE = re.compile(r"\bON (?:ONLY )?((?:\"[^\"]+\"|[^\s(.]+)\.(?:\"[^\"]+\"|[^\s(]+))")


def entry_table(entry: DumpEntry) -> str | None:
    """The table a key or index entry builds on, named as the manifest names tables.

    ``None`` when it cannot be told (an index whose definition does not parse): such an entry
    is simply built after every row is in.
    """
    if entry.type in ("CONSTRAINT", "FK CONSTRAINT"):
        schema, name = entry.schema, entry.name.split(" ", 1)[0]
    else:
        match = _ON_TABLE.search(entry.sql)
        if not match:
            return None
        schema, _, name = match.group(1).partition(".")
        schema, name = schema.strip('"'), name.strip('"')
    return name if schema == "public" else f"{schema}.{name}"


class PostData:
    """The post-data section, split into what can be built per table and what comes last."""

    def __init__(self, text: str) -> None:
        self.prologue, entries = split_dump(text)
        self.keys = [e for e in entries if e.type in _KEY_TYPES]
        self.foreign = [e for e in entries if e.type in _FK_TYPES]
        self.rest = [e for e in entries if e.type not in _KEY_TYPES | _FK_TYPES]
        self._lock = threading.Lock()

    def session(self, url: str) -> psycopg.Connection:
        return _session(url, self.prologue)

    def build(self, conn: psycopg.Connection, entry: DumpEntry, result: SchemaRebuild) -> None:
        """One key, foreign key or index; failures and violations land in ``result``."""
        local = SchemaRebuild()
        if entry.type in ("CONSTRAINT", "FK CONSTRAINT"):
            _apply_constraint(conn, entry, local)
        else:
            try:
                _run(conn, entry.sql)
            except psycopg.Error as exc:
                local.failed.append(f"{entry.label}: {_error_line(exc)}")
        with self._lock:
            result.failed.extend(local.failed)
            result.violations.extend(local.violations)

    def build_all(
        self, url: str, entries: Sequence[DumpEntry], result: SchemaRebuild, workers: int
    ) -> None:
        _parallel(url, self.prologue, entries, workers, lambda c, e: self.build(c, e, result))

    def finish(self, url: str, result: SchemaRebuild, workers: int) -> None:
        """Foreign keys (on ``workers`` connections), then triggers, RLS and policies."""
        self.build_all(url, self.foreign, result, workers)
        with self.session(url) as conn:
            for entry in self.rest:
                try:
                    _run(conn, entry.sql)
                except psycopg.Error as exc:
                    result.failed.append(f"{entry.label}: {_error_line(exc)}")


def apply_post_data(url: str, text: str, result: SchemaRebuild, *, workers: int = 2) -> None:
    """Keys and indexes, then foreign keys (each on ``workers`` connections, as
    ``pg_restore -j`` does), then triggers, RLS and policies in the dump's order."""
    post = PostData(text)
    post.build_all(url, post.keys, result, workers)
    post.finish(url, result, workers)


def prepare_target(url: str, app_schema: AppSchemaEntry, pre_data: str) -> SchemaRebuild:
    """Roles the schema needs, then the pre-data section: the tables are ready for rows."""
    result = SchemaRebuild()
    with connect(url, autocommit=True) as conn:
        result.roles_created = create_missing_roles(conn, app_schema.roles)
    apply_pre_data(url, pre_data, result)
    return result


def run_workers(loop: Callable[[], None], workers: int, failures: list[BaseException]) -> None:
    """Run ``loop`` on ``workers`` threads, wait for all, then re-raise the first failure.

    Each ``loop`` appends what it caught to ``failures`` (under its own lock) and stops.
    """
    threads = [threading.Thread(target=loop, daemon=True) for _ in range(max(1, workers))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise failures[0]
