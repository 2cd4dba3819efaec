"""Apply ``sql/migrations/NNN_*.sql`` in order, once each, and notice when history is rewritten.

A database with none of them gets them from the baseline's sections, and once every file is
applied the definitions that differ from the server's functions are applied again
(``db/baseline.py``).

Each file runs in its own transaction, so a file that fails (003's pre-flight report, a lock
timeout) changes nothing. Inside it the statements run one by one, so a failure names the file,
the statement, its line and a fix (``MigrationFailed``). All runners take one advisory lock
first: a second runner waits, then finds everything applied. The record of what ran (file,
SHA-256, when, by whom) lives in ``hardening.schema_migrations``; an applied file whose bytes
changed since is refused, because the database no longer matches what the repository says it is.
"""

from __future__ import annotations

import getpass
import hashlib
import re
import socket
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import psycopg
from psycopg import sql

from hardening_pipeline.db.baseline import (
    FROM_BASELINE,
    files_to_apply,
    ships,
    stale_definitions,
)
from hardening_pipeline.db.connection import connect, table_exists
from hardening_pipeline.db.migration_files import MigrationFile, discover_migrations
from hardening_pipeline.db.open_policies import (
    LOCKDOWN_MIGRATION,
    put_back,
    set_aside_for_lockdown,
)
from hardening_pipeline.db.sql_statements import Statement, split_statements
from hardening_pipeline.errors import CheckFailed, ConfigError
from hardening_pipeline.sql_files import MIGRATIONS_DIR, REVISIONS_DIR

# Any fixed bigint will do; this one spells "hardenin" in ASCII so it is recognisable in pg_locks.
ADVISORY_LOCK_KEY = 0x6861726465_6E696E

BOOTSTRAP_SQL = """
CREATE SCHEMA IF NOT EXISTS hardening;
CREATE TABLE IF NOT EXISTS hardening.schema_migrations (
    filename    text PRIMARY KEY,
    sha256      text NOT NULL CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    applied_at  timestamptz NOT NULL DEFAULT now(),
    applied_by  text NOT NULL,
    duration_ms integer NOT NULL DEFAULT 0
);
REVOKE ALL ON hardening.schema_migrations FROM PUBLIC;
"""


@dataclass(frozen=True)
class AppliedMigration:
    """One row of ``hardening.schema_migrations``."""

    filename: str
    sha256: str
    applied_at: datetime
    applied_by: str


@dataclass(frozen=True)
class MigrationState:
    """A file or record and how they compare: applied, pending, changed or unknown."""

    filename: str
    state: str
    file_sha256: str | None
    applied: AppliedMigration | None


@dataclass(frozen=True)
class MigrationRun:
    """What one ``apply_migrations`` call did."""

    applied: list[str]
    already_applied: list[str]
    # Definitions applied again because the function differed from its file (db/baseline.py).
    definitions: list[str] = field(default_factory=list)

    @property
    def all_files(self) -> list[str]:
        return sorted(self.applied + self.already_applied)


def read_applied(conn: psycopg.Connection) -> list[AppliedMigration]:
    """The migrations record, or an empty list on a database never migrated."""
    if not table_exists(conn, "hardening.schema_migrations"):
        return []
    rows = conn.execute(
        "SELECT filename, sha256, applied_at, applied_by FROM hardening.schema_migrations "
        "ORDER BY filename"
    ).fetchall()
    return [AppliedMigration(**row) for row in rows]


# Files revised after release so that adopting an existing app works (run as a non-superuser,
# never widen access, replace the app's keys). A record of the text recorded here still counts
# as applied: the next run applies its catch-up (``sql/revisions/<stem>.<first 16 hex of the
# recorded sha256>.sql``, what the revision adds on a database the earlier text built) and then
# records the current text, so the database ends as a fresh one would (tests/
# test_upgrade_paths.py). Any other difference is drift. Released files are never edited again.
EARLIER_REVISIONS: Mapping[str, frozenset[str]] = {
    "001_core_schema.sql": frozenset(
        {"d6c4ca85bc3c4f05b5f0033029dbe70a037e831e5b87f2c157036d2f8ace8fa5"}
    ),
    "002_audit_events.sql": frozenset(
        {"b6fcd333ec95b3fb9be04cc421c2208da1d1ff1924e764296e2fa36c55a1c1f3"}
    ),
    "003_message_safety.sql": frozenset(
        {"08c06e0a73cbe4cd770b8243ea08a6dd01c7e65fdeacaeddaf46c97ed188a407"}
    ),
    "006_audit_seals.sql": frozenset(
        {"75ffa6ba585d9e14659977b6e20385feef3008a496a194b995b46f1c03d8b27a"}
    ),
    "010_audit_seal_checks.sql": frozenset(
        {"09c83f8ad658f98ea6e30d5928cb73772c6c60eb160906417e31cc25d816e9e9"}
    ),
}


def compare(
    files: Sequence[MigrationFile], applied: Sequence[AppliedMigration]
) -> list[MigrationState]:
    """Line up files on disk with the record: applied, pending, changed (drift), unknown."""
    by_name = {a.filename: a for a in applied}
    states = []
    for f in files:
        record = by_name.pop(f.filename, None)
        if record is None:
            state = "pending"
        elif record.sha256 == f.sha256 or record.sha256 in EARLIER_REVISIONS.get(
            f.filename, frozenset()
        ):
            state = "applied"
        else:
            state = "changed"
        states.append(MigrationState(f.filename, state, f.sha256, record))
    for record in by_name.values():
        states.append(MigrationState(record.filename, "unknown", None, record))
    return sorted(states, key=lambda s: s.filename)


def refuse_drift(states: Sequence[MigrationState]) -> None:
    changed = [s.filename for s in states if s.state == "changed"]
    if changed:
        raise ConfigError(
            f"applied migration(s) {', '.join(changed)} changed on disk since they ran; restore "
            "the original file(s) and put new changes in a new numbered migration."
        )
    unknown = [s.filename for s in states if s.state == "unknown"]
    if unknown:
        raise ConfigError(
            f"the database has migration(s) {', '.join(unknown)} that this checkout does not "
            "know; update the checkout to the version that applied them."
        )
    last_applied = max((s.filename for s in states if s.state == "applied"), default="")
    early = [s.filename for s in states if s.state == "pending" and s.filename < last_applied]
    if early:
        raise ConfigError(
            f"migration(s) {', '.join(early)} sort before {last_applied}, which is already "
            "applied; give them a number after it."
        )


def default_applied_by() -> str:
    try:
        user = getpass.getuser()
    except Exception:  # no passwd entry in some containers
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


@dataclass(frozen=True)
class MigrationFailure:
    """Where a migration stopped and what to do about it, for the CLI and the plan."""

    filename: str
    line: int | None
    statement: str
    sqlstate: str | None
    message: str
    fix: str
    source: str | None = None  # where the line is, when not in ``filename`` (the baseline)

    @property
    def location(self) -> str:
        """``line N`` or ``line N of baseline/021_baseline.sql``."""
        return f"line {self.line}" + (f" of {self.source}" if self.source else "")

    def describe(self) -> str:
        where = f"{self.location} ({self.statement}): " if self.line else ""
        return (
            f"migration {self.filename} failed and was rolled back; {where}{self.message}. "
            f"Fix: {self.fix}"
        )


class MigrationFailed(CheckFailed):
    """A migration statement raised; ``failure`` names the file, statement and fix."""

    def __init__(self, failure: MigrationFailure) -> None:
        super().__init__(failure.describe())
        self.failure = failure


_DUPLICATE = {"42710", "42P07", "42P06", "42723", "42P04"}
_BAD_ROWS = {"23001", "23502", "23503", "23505", "23514", "23P01"}


def _fix_for(sqlstate: str | None, message: str, role: str) -> str:
    """One sentence on how to get past an error the server gave no HINT for."""
    if sqlstate == "42501":
        if message.startswith("permission denied to create role"):
            # 001 creates service_role with BYPASSRLS, which only a superuser may give (a
            # role that has BYPASSRLS itself, from PG16): the usual managed-Postgres admin
            # (CREATEDB, CREATEROLE) has neither.
            return (
                f"{role} may not create service_role, which bypasses RLS; have a superuser run "
                "CREATE ROLE anon NOLOGIN NOINHERIT; CREATE ROLE authenticated NOLOGIN "
                "NOINHERIT; CREATE ROLE service_role NOLOGIN NOINHERIT BYPASSRLS; GRANT anon, "
                f"authenticated, service_role TO {role}; (or ALTER ROLE {role} BYPASSRLS), then "
                "run hardening migrate again."
            )
        schema = re.search(r"permission denied for schema (\S+)", message)
        if schema:
            return (
                f"the role taking the object over lacks CREATE on schema {schema.group(1)}; "
                f"have the schema's owner run GRANT CREATE ON SCHEMA {schema.group(1)} TO "
                f"<that role>, or run hardening migrate as the schema's owner."
            )
        owner = re.search(r"must be owner of (\w+) (\S+)", message)
        if owner:
            return (
                f"{role} does not own {owner.group(1)} {owner.group(2)}; run hardening migrate as "
                f"its owner, or have the owner run GRANT <owning role> TO {role}."
            )
        denied = re.search(r"permission denied for (\w+) (\S+)", message)
        if denied:
            return (
                f"{role} lacks a privilege on {denied.group(1)} {denied.group(2)}; have its "
                f"owner grant it to {role}, or run hardening migrate as the owner."
            )
        return (
            f"{role} lacks a privilege this statement needs; run hardening migrate as the owner "
            "of the objects it changes (on Supabase: postgres) or have their owner grant it."
        )
    if sqlstate in _DUPLICATE:
        return (
            "an object with this name already exists (probably the app's own); rename or drop "
            "it if it is a leftover, or adopt it by hand, then run hardening migrate again."
        )
    if sqlstate == "55P03":
        return (
            "another session holds a lock on the table; retry off-peak, or find the holder with "
            "SELECT pid, query FROM pg_stat_activity WHERE pid = ANY(pg_blocking_pids(<pid>))."
        )
    if sqlstate == "57014":
        return "the statement ran into a timeout; run it off-peak or raise the timeout."
    if sqlstate in ("42P01", "42703", "42883"):
        return (
            "the database lacks a table, column or function this migration expects (the app's "
            "shape differs from the kit's); add it or rename to match, then run hardening "
            "migrate again."
        )
    if sqlstate in _BAD_ROWS:
        return "existing rows break the new rule; fix or remove them, then migrate again."
    return "fix the cause above, then run hardening migrate again (nothing was changed)."


def describe_failure(
    filename: str,
    exc: psycopg.Error,
    statement: Statement | None,
    role: str,
    source: str | None = None,
) -> MigrationFailure:
    """What failed, where, and the fix: the server's HINT when it gave one, else ours."""
    diag = exc.diag
    message = (diag.message_primary or str(exc).strip()).rstrip(".")
    line = None
    if statement is not None:
        line = statement.line
        position = diag.statement_position
        if position and position.isdigit():
            line = statement.line_at(int(position))
    return MigrationFailure(
        filename=filename,
        line=line,
        statement=statement.summary if statement else "",
        sqlstate=diag.sqlstate,
        message=message,
        fix=diag.message_hint or _fix_for(diag.sqlstate, message, role),
        source=source,
    )


def earlier_texts(states: Sequence[MigrationState]) -> list[MigrationState]:
    """The applied files whose record holds an earlier released text: each needs its catch-up."""
    return [s for s in states if s.applied and s.file_sha256 not in (None, s.applied.sha256)]


def revision_catch_up(filename: str, recorded_sha256: str) -> MigrationFile:
    """The catch-up that brings a database built by an earlier text of ``filename`` level."""
    path = REVISIONS_DIR / f"{Path(filename).stem}.{recorded_sha256[:16]}.sql"
    if not path.is_file():
        raise ConfigError(
            f"the database applied an earlier text of {filename} and this checkout has no "
            f"catch-up for it ({path.name}); reinstall hardening_pipeline or use the version "
            "that applied it."
        )
    raw = path.read_bytes()
    number = int(filename[:3])
    return MigrationFile(path.name, number, raw.decode("utf-8"), hashlib.sha256(raw).hexdigest())


def catch_up_revision(
    conn: psycopg.Connection, state: MigrationState, role: str, applied_by: str
) -> str:
    """Apply the catch-up for an earlier text, then record the current one, in the caller's
    transaction; returns the catch-up's file name."""
    assert state.applied is not None and state.file_sha256 is not None
    catch_up = revision_catch_up(state.filename, state.applied.sha256)
    _execute_statements(conn, catch_up, role)
    conn.execute(
        "UPDATE hardening.schema_migrations SET sha256 = %s, "
        "applied_by = applied_by || '; caught up by ' || %s || ' as ' || current_user "
        "WHERE filename = %s",
        (state.file_sha256, applied_by, state.filename),
    )
    return catch_up.filename


def execute_migration(conn: psycopg.Connection, f: MigrationFile, role: str) -> None:
    """Run one file's statements in the caller's transaction; a failure names its statement."""
    if f.filename != LOCKDOWN_MIGRATION:
        with _audit_owner_lent(conn, f, role):
            _execute_statements(conn, f, role)
        return
    # 004 refuses every open policy; one outside tenant data is the app's to keep.
    try:
        narrowed = set_aside_for_lockdown(conn, role)
    except psycopg.Error as exc:
        raise MigrationFailed(describe_failure(f.filename, exc, None, role)) from exc
    _execute_statements(conn, f, role)
    try:
        put_back(conn, narrowed)
    except psycopg.Error as exc:
        raise MigrationFailed(describe_failure(f.filename, exc, None, role)) from exc


def _execute_statements(conn: psycopg.Connection, f: MigrationFile, role: str) -> None:
    for part in f.parts:
        _execute_statements(conn, part, role)
    if f.parts:
        return
    for statement in split_statements(f.sql):
        try:
            conn.execute(statement.text)
        except psycopg.Error as exc:
            failure = describe_failure(f.filename, exc, statement, role, f.source)
            raise MigrationFailed(failure) from exc


def appliers(states: Sequence[MigrationState]) -> dict[str, str]:
    """Each applied file and who applied it (``<who> from the baseline as <role>`` for a
    baseline section)."""
    return {s.filename: s.applied.applied_by for s in states if s.applied}


# Not a superuser, and not acting as the audit owner already (a membership that exists stays).
_NEEDS_THE_AUDIT_OWNER = """
    SELECT NOT (r.rolsuper OR pg_catalog.pg_has_role(r.oid, 'hardening_audit_owner', 'USAGE'))
           AS lend
    FROM pg_catalog.pg_roles r WHERE r.rolname = current_user
"""


@contextmanager
def _audit_owner_lent(conn: psycopg.Connection, f: MigrationFile, role: str) -> Iterator[None]:
    """For ``f.as_audit_owner``, inside the caller's transaction: a migration role that is not a
    superuser and does not act as the audit owner holds it until the statements are done, as
    the versioned files since 016 arrange for themselves, and not a moment after (the revoke
    commits with them; an error rolls both back)."""
    lend = f.as_audit_owner and conn.execute(_NEEDS_THE_AUDIT_OWNER).fetchone()["lend"]
    membership = sql.SQL("{} hardening_audit_owner {} {}")
    if lend:
        conn.execute(membership.format(sql.SQL("GRANT"), sql.SQL("TO"), sql.Identifier(role)))
    yield
    if lend:
        conn.execute(membership.format(sql.SQL("REVOKE"), sql.SQL("FROM"), sql.Identifier(role)))


def _reapply_definitions(
    conn: psycopg.Connection, role: str, on_applied: Callable[[str, float], None] | None
) -> list[str]:
    """Apply again, each in its own transaction, the definitions the server runs differently."""
    done = []
    for definition in stale_definitions(conn):
        started = time.perf_counter()
        with conn.transaction():
            execute_migration(conn, definition, role)
        done.append(definition.filename)
        if on_applied:
            on_applied(definition.filename, time.perf_counter() - started)
    return done


def stale_definition_files(url: str) -> list[str]:
    """The definitions ``migrate`` would apply again now (none while a file is pending)."""
    with connect(url, autocommit=True) as conn:
        if any(s.state != "applied" for s in compare(discover_migrations(), read_applied(conn))):
            return []
        return [f.filename for f in stale_definitions(conn)]


def migration_status(url: str, directory: Path = MIGRATIONS_DIR) -> list[MigrationState]:
    """Compare disk and database without changing anything."""
    files = discover_migrations(directory)
    with connect(url, autocommit=True) as conn:
        return compare(files, read_applied(conn))


def apply_migrations(
    url: str,
    directory: Path = MIGRATIONS_DIR,
    *,
    applied_by: str | None = None,
    on_applied: Callable[[str, float], None] | None = None,
    only: Collection[str] | None = None,
) -> MigrationRun:
    """Apply every pending migration in order; see the module docstring for the guarantees.

    ``only`` limits the run to the named files (a restore applies exactly the migrations its
    backup recorded); a name that is not on disk is refused.
    """
    files = discover_migrations(directory)
    if only is not None:
        missing = sorted(set(only) - {f.filename for f in files})
        if missing:
            raise ConfigError(
                f"migration(s) {', '.join(missing)} are not in {directory}; use the project "
                "version that has them."
            )
        files = [f for f in files if f.filename in only]
    who = applied_by or default_applied_by()
    with connect(url, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (ADVISORY_LOCK_KEY,))
        role = conn.execute("SELECT current_user AS r").fetchone()["r"]
        try:
            with conn.transaction():
                conn.execute(BOOTSTRAP_SQL)
            states = compare(files, read_applied(conn))
            refuse_drift(states)
            for state in earlier_texts(states):
                with conn.transaction():
                    catch_up_revision(conn, state, role, who)
            pending = {s.filename for s in states if s.state == "pending"}
            todo = files_to_apply(
                [f for f in files if f.filename in pending], appliers(states), directory
            )
            applied: list[str] = []
            for f in todo:
                started = time.perf_counter()
                with conn.transaction():
                    execute_migration(conn, f, role)
                    elapsed = time.perf_counter() - started
                    conn.execute(
                        "INSERT INTO hardening.schema_migrations "
                        "(filename, sha256, applied_by, duration_ms) "
                        "VALUES (%s, %s, %s || %s || ' as ' || current_user, %s)",
                        (
                            f.filename,
                            f.sha256,
                            who,
                            FROM_BASELINE if f.source else "",
                            int(elapsed * 1000),
                        ),
                    )
                applied.append(f.filename)
                if on_applied:
                    on_applied(f.filename, elapsed)
            already = sorted(s.filename for s in states if s.state == "applied")
            run = MigrationRun(applied=applied, already_applied=already)
            if only is None and ships(directory):
                run.definitions.extend(_reapply_definitions(conn, role, on_applied))
            return run
        finally:
            if not conn.closed:
                conn.execute("SELECT pg_advisory_unlock(%s)", (ADVISORY_LOCK_KEY,))
