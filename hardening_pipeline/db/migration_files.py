"""The versioned migration files on disk: ``sql/migrations/NNN_lower_snake.sql``, in order."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from hardening_pipeline.errors import ConfigError
from hardening_pipeline.sql_files import MIGRATIONS_DIR

_FILE_NAME = re.compile(r"^(\d{3})_[a-z0-9_]+\.sql$")


@dataclass(frozen=True)
class MigrationFile:
    """One migration as it is on disk."""

    filename: str
    number: int
    sql: str
    sha256: str
    # A baseline section: the statements and definitions it runs, in order (db/baseline.py).
    parts: tuple[MigrationFile, ...] = ()
    source: str | None = None  # the file its lines are in, when that is not ``filename``
    # Runs with the migration role lent the audit owner for its transaction (a baseline section
    # marked "as the audit owner", every definition).
    as_audit_owner: bool = False


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
