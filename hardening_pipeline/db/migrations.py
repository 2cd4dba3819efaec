"""Apply ``sql/migrations/NNN_*.sql`` in order, once each, and notice when history is rewritten.

Each file runs in its own transaction, so a file that fails (003's pre-flight report, a lock
timeout) changes nothing. All runners take one advisory lock first: a second runner waits, then
finds everything applied. The record of what ran (file, SHA-256, when, by whom) lives in
``hardening.schema_migrations``; an applied file whose bytes changed since is refused, because the
database no longer matches what the repository says it is.
"""

from __future__ import annotations

import getpass
import hashlib
import re
import socket
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import psycopg

from hardening_pipeline.db.connection import connect, table_exists
from hardening_pipeline.errors import CheckFailed, ConfigError
from hardening_pipeline.sql_files import MIGRATIONS_DIR

# Any fixed bigint will do; this one spells "hardenin" in ASCII so it is recognisable in pg_locks.
ADVISORY_LOCK_KEY = 0x6861726465_6E696E
_FILE_NAME = re.compile(r"^(\d{3})_[a-z0-9_]+\.sql$")

_BOOTSTRAP = """
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
class MigrationFile:
    """One migration as it is on disk."""

    filename: str
    number: int
    sql: str
    sha256: str


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

    @property
    def all_files(self) -> list[str]:
        return sorted(self.applied + self.already_applied)


def discover_migrations(directory: Path = MIGRATIONS_DIR) -> list[MigrationFile]:
    """Read every migration file, in order; malformed names and duplicate numbers are refused."""
    if not directory.is_dir():
        raise ConfigError(
            f"the migrations folder {directory} does not exist; reinstall hardening_pipeline "
            "(its wheel ships sql/migrations) or point at a full checkout."
        )
    files: list[MigrationFile] = []
    seen: dict[int, str] = {}
    for path in sorted(directory.iterdir()):
        if path.suffix != ".sql":
            continue
        match = _FILE_NAME.match(path.name)
        if not match:
            raise ConfigError(
                f"migration file {path.name} is not named NNN_lower_snake.sql; rename it."
            )
        number = int(match.group(1))
        if number in seen:
            raise ConfigError(
                f"migrations {seen[number]} and {path.name} share the number {number:03d}; "
                "renumber one of them."
            )
        seen[number] = path.name
        raw = path.read_bytes()
        files.append(
            MigrationFile(
                filename=path.name,
                number=number,
                sql=raw.decode("utf-8"),
                sha256=hashlib.sha256(raw).hexdigest(),
            )
        )
    return files


def read_applied(conn: psycopg.Connection) -> list[AppliedMigration]:
    """The migrations record, or an empty list on a database never migrated."""
    if not table_exists(conn, "hardening.schema_migrations"):
        return []
    rows = conn.execute(
        "SELECT filename, sha256, applied_at, applied_by FROM hardening.schema_migrations "
        "ORDER BY filename"
    ).fetchall()
    return [AppliedMigration(**row) for row in rows]


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
        elif record.sha256 == f.sha256:
            state = "applied"
        else:
            state = "changed"
        states.append(MigrationState(f.filename, state, f.sha256, record))
    for record in by_name.values():
        states.append(MigrationState(record.filename, "unknown", None, record))
    return sorted(states, key=lambda s: s.filename)


def _refuse_drift(states: Sequence[MigrationState]) -> None:
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


def _describe_failure(filename: str, exc: psycopg.Error) -> str:
    diag = exc.diag
    message = diag.message_primary or str(exc).strip()
    text = f"migration {filename} failed and was rolled back: {message}"
    if diag.message_hint:
        text += f" ({diag.message_hint})"
    return text


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
        try:
            with conn.transaction():
                conn.execute(_BOOTSTRAP)
            states = compare(files, read_applied(conn))
            _refuse_drift(states)
            pending = {s.filename for s in states if s.state == "pending"}
            applied: list[str] = []
            for f in files:
                if f.filename not in pending:
                    continue
                started = time.perf_counter()
                try:
                    with conn.transaction():
                        conn.execute(f.sql)
                        elapsed = time.perf_counter() - started
                        conn.execute(
                            "INSERT INTO hardening.schema_migrations "
                            "(filename, sha256, applied_by, duration_ms) "
                            "VALUES (%s, %s, %s || ' as ' || current_user, %s)",
                            (f.filename, f.sha256, who, int(elapsed * 1000)),
                        )
                except psycopg.Error as exc:
                    raise CheckFailed(_describe_failure(f.filename, exc)) from exc
                applied.append(f.filename)
                if on_applied:
                    on_applied(f.filename, elapsed)
            already = sorted(s.filename for s in states if s.state == "applied")
            return MigrationRun(applied=applied, already_applied=already)
        finally:
            if not conn.closed:
                conn.execute("SELECT pg_advisory_unlock(%s)", (ADVISORY_LOCK_KEY,))
