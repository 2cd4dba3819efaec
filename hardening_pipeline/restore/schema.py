"""Rebuild a backed-up app from its schema archive: roles, pre-data, rows, then post-data.

This is the order ``pg_restore`` uses, for the same reasons: rows are copied into tables that
have no index, key or trigger yet (fast, and no audit trigger fires on a restore), and keys are
built once over the loaded rows. Unlike ``pg_restore`` it never gives up on a backup because its
rows break a constraint: the constraint is added ``NOT VALID`` (foreign keys) or left out
(unique keys), and the drill reports it red, naming the constraint and the rows.

The backup is treated as hostile (``restore/archive.py``): entries come from ``pg_restore``'s own
table of contents, and each runs in a session logged in as its owner (``restore/sessions.py``).
Only what the restore itself writes runs as the target's superuser, built from names with
``psycopg.sql``: the roles the schema refers to (``NOLOGIN``, ``BYPASSRLS`` where the source role
had it) and its schemas. Roles are cluster-wide and not in the dump, so ownership, grants and
policies come back as they were.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import psycopg
from psycopg import sql

from hardening_pipeline.backup.export import manifest_table_name
from hardening_pipeline.backup.manifest import AppSchemaEntry, SchemaRole
from hardening_pipeline.restore.archive import SchemaArchive, TocEntry
from hardening_pipeline.restore.sessions import (
    DATABASE_OWNER,
    OneSession,
    OneSessionConnections,
    OwnerConnections,
    OwnerLogins,
    create_missing_roles,
)
from hardening_pipeline.restore.violations import ConstraintViolation, foreign_key_rows

# Built in parallel after the rows: keys and indexes. Foreign keys need the keys first.
_KEY_TYPES = {"CONSTRAINT", "INDEX"}
_FK_TYPES = {"FK CONSTRAINT"}
_GRANT_TYPES = {"ACL", "DEFAULT ACL"}
_PROLOGUE_SET = re.compile(r"^SET (?P<name>[a-z_]+) = [^;\n]*;$", re.M)


@dataclass
class SchemaRebuild:
    """What rebuilding the schema did: roles created, entries that failed, broken constraints."""

    roles_created: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    violations: list[ConstraintViolation] = field(default_factory=list)


def settings_the_server_knows(known: set[str], text: str) -> str:
    """``text`` without the ``SET`` lines of settings not in ``known`` (the target's).

    A ``pg_dump`` 17 or newer resets ``transaction_timeout``, which a 15 or 16 server refuses;
    the dump is otherwise loadable there, so the drill must not fail on the kit's tool version.
    """

    def keep(match: re.Match[str]) -> str:
        return match[0] if match["name"] in known else ""

    return _PROLOGUE_SET.sub(keep, text)


def _run(conn: psycopg.Connection, statement: str) -> None:
    # No parameters: psycopg sends the text as one simple query, so an entry of several
    # statements (CREATE TABLE; ALTER TABLE ... OWNER TO) runs as one implicit transaction.
    conn.execute(statement.encode("utf-8"))


def _attempt(conn: psycopg.Connection, statement: str) -> None:
    """Run ``statement`` in a transaction (a savepoint inside the caller's): a failure undoes
    only it, and the session goes on."""
    with conn.transaction():
        _run(conn, statement)


def _run_retrying(conn: psycopg.Connection, statement: str, attempts: int = 3) -> None:
    """Run ``statement``, again if a parallel build deadlocked with it (as pg_restore does)."""
    for attempt in range(attempts):
        try:
            _attempt(conn, statement)
            return
        except psycopg.errors.DeadlockDetected:
            if attempt == attempts - 1:
                raise


def _error_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _table_of(entry: TocEntry) -> str:
    """``schema.table`` of a constraint entry, whose header name is ``<table> <constraint>``."""
    return f"{entry.schema}.{entry.name.split(' ', 1)[0]}"


def _constraint_of(entry: TocEntry) -> str:
    return entry.name.split(" ", 1)[1] if " " in entry.name else entry.name


class SchemaRestore:
    """The schema archive of one backup, restored onto a target through ``sessions``."""

    def __init__(
        self,
        sessions: OwnerLogins | OneSession,
        archive: SchemaArchive,
        app_schema: AppSchemaEntry,
    ) -> None:
        self.sessions = sessions
        self.archive = archive
        self.app_schema = app_schema
        # Grants last, as pg_restore's own ACL pass does: an owner may have revoked from itself
        # (or from PUBLIC) what creating its triggers and keys needs.
        self.grants = [e for e in archive.entries if e.type in _GRANT_TYPES]
        self.pre = [e for e in archive.entries if not e.post_data and e.type not in _GRANT_TYPES]
        post = [e for e in archive.entries if e.post_data and e.type not in _GRANT_TYPES]
        self.keys = [e for e in post if e.type in _KEY_TYPES]
        self.foreign = [e for e in post if e.type in _FK_TYPES]
        self.rest = [e for e in post if e.type not in _KEY_TYPES | _FK_TYPES]
        self._lock = threading.Lock()
        self._sql: dict[int, str] = {}
        self._known_settings: set[str] | None = None
        self._lent: list[tuple[str, str]] = []
        self._lent_references: list[tuple[str, str]] = []

    def close(self) -> None:
        self.sessions.close()

    def connections(self) -> OwnerConnections | OneSessionConnections:
        return self.sessions.connections()

    def sql(self, entries: Sequence[TocEntry]) -> str:
        """The entries' SQL from the archive, runnable on the target (settings it lacks left
        out), cached per single entry (keys are asked twice)."""
        if len(entries) == 1 and entries[0].dump_id in self._sql:
            return self._sql[entries[0].dump_id]
        if self._known_settings is None:
            with self.sessions.admin() as conn:
                rows = conn.execute("SELECT name FROM pg_catalog.pg_settings").fetchall()
            self._known_settings = {row["name"] for row in rows}
        text = settings_the_server_knows(self._known_settings, self.archive.sql(entries))
        if len(entries) == 1:
            self._sql[entries[0].dump_id] = text
        return text

    # -- before the rows ------------------------------------------------------------------

    def prepare(self) -> SchemaRebuild:
        """Roles and schemas (as the superuser, from names), then pre-data (as the owners)."""
        result = SchemaRebuild()
        owners = {e.owner for e in self.archive.entries} - {DATABASE_OWNER}
        roles = [*self.app_schema.roles, *(SchemaRole(o, False) for o in sorted(owners))]
        with self.sessions.admin() as conn:
            result.roles_created = create_missing_roles(conn, roles)
        for owner in sorted(owners):
            self.sessions.check(owner)
        self._create_schemas(result)
        self._create_extensions(result)
        conns = self.connections()
        try:
            for run in _owner_runs(e for e in self.pre if e.type != "SCHEMA"):
                self._apply_run(conns, run, result)
        finally:
            conns.close()
        self._lend_references()
        return result

    def _lend_references(self) -> None:
        """Let every owner reference every table, for the foreign keys a superuser made.

        Taken back with the schemas' privileges, before the backup's own grants are applied.
        """
        if not self.sessions.lends_references:
            return
        owners = sorted({e.owner for e in self.archive.entries} - {DATABASE_OWNER})
        with self.sessions.admin() as conn:
            present = conn.execute(
                "SELECT nspname FROM pg_catalog.pg_namespace WHERE nspname = ANY(%s)",
                (list(self.app_schema.schemas),),
            ).fetchall()
            for row in present:
                for owner in owners:
                    conn.execute(
                        sql.SQL("GRANT REFERENCES ON ALL TABLES IN SCHEMA {} TO {}").format(
                            sql.Identifier(row["nspname"]), sql.Identifier(owner)
                        )
                    )
                    self._lent_references.append((row["nspname"], owner))

    def _create_schemas(self, result: SchemaRebuild) -> None:
        """The schemas, owned as in the backup, and each other owner let in for the restore.

        On the source an object may sit in a schema its owner may not create in (a superuser
        made it, then gave it away). ``USAGE`` and ``CREATE`` are lent to every owner for the
        restore and taken back by ``finish`` before the backup's own grants are applied.
        """
        owners = {e.owner for e in self.archive.entries} - {DATABASE_OWNER}
        if not self.sessions.lends_schemas:
            owners = set()
        with self.sessions.admin() as conn:
            for entry in self.pre:
                if entry.type != "SCHEMA":
                    continue
                if entry.name not in self.app_schema.schemas:
                    result.failed.append(f"{entry.label}: not one of the backed-up schemas")
                    continue
                name = sql.Identifier(entry.name)
                conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(name))
                if entry.owner != DATABASE_OWNER:
                    owner = sql.Identifier(entry.owner)
                    conn.execute(sql.SQL("ALTER SCHEMA {} OWNER TO {}").format(name, owner))
                for other in sorted(owners - {entry.owner}):
                    grant = sql.SQL("GRANT USAGE, CREATE ON SCHEMA {} TO {}").format(
                        name, sql.Identifier(other)
                    )
                    try:
                        with conn.transaction():
                            conn.execute(grant)
                    except psycopg.errors.InsufficientPrivilege:
                        continue  # the user's own role may not lend it; the entry then fails
                    self._lent.append((entry.name, other))

    def _create_extensions(self, result: SchemaRebuild) -> None:
        """The extensions the source had, from their names, before any entry needs them.

        Their scripts are the target server's own files; the schemas they go into are created
        empty here (usable by everyone, as Supabase's ``extensions`` is) when not backed up.
        """
        with self.sessions.admin() as conn:
            for ext in self.app_schema.extensions:
                schema = sql.Identifier(ext.schema)
                try:
                    with conn.transaction():
                        if (
                            ext.schema not in self.app_schema.schemas
                            and not conn.execute(
                                "SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname = %s",
                                (ext.schema,),
                            ).fetchone()
                        ):
                            conn.execute(sql.SQL("CREATE SCHEMA {}").format(schema))
                            conn.execute(
                                sql.SQL("GRANT USAGE ON SCHEMA {} TO PUBLIC").format(schema)
                            )
                        conn.execute(
                            sql.SQL("CREATE EXTENSION IF NOT EXISTS {} WITH SCHEMA {}").format(
                                sql.Identifier(ext.name), schema
                            )
                        )
                except psycopg.Error as exc:
                    result.failed.append(
                        f"extension {ext.name} (in {ext.schema} on the source): {_error_line(exc)}"
                    )

    def _take_back_schemas(self) -> None:
        """Revoke what ``_create_schemas`` lent; the grants pass then sets the backup's own."""
        if not self._lent and not self._lent_references:
            return
        with self.sessions.admin() as conn:
            for schema, role in self._lent_references:
                conn.execute(
                    sql.SQL("REVOKE REFERENCES ON ALL TABLES IN SCHEMA {} FROM {}").format(
                        sql.Identifier(schema), sql.Identifier(role)
                    )
                )
            for schema, role in self._lent:
                conn.execute(
                    sql.SQL("REVOKE USAGE, CREATE ON SCHEMA {} FROM {}").format(
                        sql.Identifier(schema), sql.Identifier(role)
                    )
                )
        self._lent.clear()
        self._lent_references.clear()

    def _apply_run(
        self,
        conns: OwnerConnections | OneSessionConnections,
        run: list[TocEntry],
        result: SchemaRebuild,
    ) -> None:
        """A run of entries of one owner as one script; entry by entry if it fails."""
        conn = conns.get(run[0].owner)
        try:
            _attempt(conn, self.sql(run))
            return
        except psycopg.Error as exc:
            if len(run) == 1:
                result.failed.append(f"{run[0].label}: {_error_line(exc)}")
                return
        for entry in run:
            try:
                _attempt(conn, self.sql([entry]))
            except psycopg.Error as exc:
                result.failed.append(f"{entry.label}: {_error_line(exc)}")

    # -- after the rows -------------------------------------------------------------------

    def table_of(self, entry: TocEntry) -> str | None:
        """The table a key or index builds on, named as the manifest names tables.

        ``None`` when it cannot be told (an index whose definition does not parse): such an
        entry is simply built after every row is in.
        """
        if entry.type in ("CONSTRAINT", "FK CONSTRAINT"):
            schema, name = entry.schema, entry.name.split(" ", 1)[0]
        else:
            match = _ON_TABLE.search(self.sql([entry]))
            if not match:
                return None
            schema, _, name = match.group(1).partition(".")
            schema, name = schema.strip('"'), name.strip('"')
        return manifest_table_name(schema, name)

    def build(
        self,
        conns: OwnerConnections | OneSessionConnections,
        entry: TocEntry,
        result: SchemaRebuild,
    ) -> None:
        """One key, foreign key or index; failures and violations land in ``result``."""
        local = SchemaRebuild()
        conn = conns.get(entry.owner)
        statement = self.sql([entry])
        if entry.type in ("CONSTRAINT", "FK CONSTRAINT"):
            _apply_constraint(conn, entry, statement, local)
        else:
            try:
                _attempt(conn, statement)
            except psycopg.Error as exc:
                local.failed.append(f"{entry.label}: {_error_line(exc)}")
        with self._lock:
            result.failed.extend(local.failed)
            result.violations.extend(local.violations)

    def build_all(self, entries: Sequence[TocEntry], result: SchemaRebuild, workers: int) -> None:
        """Build ``entries`` on ``workers`` threads, each with its own owner sessions."""
        pending = list(entries)
        lock = threading.Lock()
        failures: list[BaseException] = []

        def loop() -> None:
            conns = self.connections()
            try:
                while True:
                    with lock:
                        if not pending or failures:
                            return
                        entry = pending.pop(0)
                    self.build(conns, entry, result)
            except BaseException as exc:  # re-raised below, in the caller's thread
                with lock:
                    failures.append(exc)
            finally:
                conns.close()

        run_workers(loop, workers if self.sessions.workers_allowed else 1, failures)

    def finish(self, result: SchemaRebuild, workers: int) -> None:
        """Foreign keys (on ``workers`` connections), then triggers, RLS, policies, grants."""
        self.build_all(self.foreign, result, workers)
        self.finish_rest(result)

    def finish_rest(self, result: SchemaRebuild) -> None:
        """Triggers, RLS and policies, then the schemas' lent privileges back, then grants."""
        conns = self.connections()
        try:
            for run in _owner_runs(self.rest):
                self._apply_run(conns, run, result)
            self._take_back_schemas()
            for run in _owner_runs(self.grants):
                self._apply_run(conns, run, result)
        finally:
            conns.close()


def _owner_runs(entries: Iterable[TocEntry]) -> list[list[TocEntry]]:
    """Consecutive entries of one owner, in the archive's order."""
    runs: list[list[TocEntry]] = []
    for entry in entries:
        if runs and runs[-1][0].owner == entry.owner:
            runs[-1].append(entry)
        else:
            runs.append([entry])
    return runs


def _apply_constraint(
    conn: psycopg.Connection, entry: TocEntry, statement: str, result: SchemaRebuild
) -> None:
    """Add one key; if the rows break it, keep it NOT VALID (foreign keys) and name the rows."""
    try:
        _run_retrying(conn, statement)
        return
    except psycopg.errors.ForeignKeyViolation as exc:
        error: psycopg.Error = exc
        if entry.type in _FK_TYPES:
            table, constraint = _table_of(entry), _constraint_of(entry)
            try:
                # pg_restore ends the text with comments: NOT VALID goes before the last ";".
                end = statement.rfind(";")
                _attempt(conn, statement[:end] + " NOT VALID" + statement[end:])
                rows = foreign_key_rows(conn, table, constraint)
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


_ON_TABLE = re.compile(r"\bON (?:ONLY )?((?:\"[^\"]+\"|[^\s(.]+)\.(?:\"[^\"]+\"|[^\s(]+))")


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
