"""Today's schema in one pass for a new database, and the kit's functions defined once each.

``sql/definitions/<name>.sql`` holds each ``hardening.<name>`` function as the kit runs it today,
one ``CREATE OR REPLACE FUNCTION`` a file. The versioned files in ``sql/migrations`` keep the
history (five generations of the capture functions among them) and are frozen.

``sql/baseline/021_baseline.sql`` squashes 001 to 021 for a database that has none of them: one
section per versioned file, each doing what that file did, but with every function taken from
``sql/definitions`` (``\\ir`` lines, as psql reads them) the first time it is needed, and the
kit's own tables created in their final shape. A section stands in for its file: it runs in its
own transaction and is recorded under the file's name and SHA-256, marked ``from the
baseline``, so plans, blockers, backups and drift checks still speak of 001 to 021. A database
that applied any versioned file goes on with the versioned files from where it is; one whose
baseline run stopped at a blocker goes on with the baseline. ``tests/test_upgrade_paths.py``
checks that all of these end with the same catalog.

After the versioned files, a database at the newest one gets each definition whose function
differs from its file (body, language, volatility, ``SECURITY DEFINER``, ``SET`` options)
applied again: the repeatable step, as in Flyway's repeatable migrations. A new function or a
changed one goes in ``sql/definitions``, never in a versioned file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import psycopg

from hardening_pipeline.db.migration_files import MigrationFile, discover_migrations
from hardening_pipeline.db.shipped_functions import definitions_in, differing_functions
from hardening_pipeline.sql_files import BASELINE_DIR, DEFINITIONS_DIR, MIGRATIONS_DIR

BASELINE_FILE = "021_baseline.sql"
AUDIT_OWNER = "OWNER TO hardening_audit_owner"
FROM_BASELINE = " from the baseline"  # in applied_by: "<who> from the baseline as <role>"
SECTION_MARK = re.compile(
    r"^-- section: (\d{3}_[a-z0-9_]+\.sql)( as the audit owner)?$", re.MULTILINE
)
INCLUDE_LINE = re.compile(r"^\\ir \.\./definitions/([a-z0-9_]+\.sql)$", re.MULTILINE)


def definitions(directory: Path = DEFINITIONS_DIR) -> list[MigrationFile]:
    """Every definition file, in the order the baseline first needs them, then by name."""
    order = {name: i for i, name in enumerate(INCLUDE_LINE.findall(_baseline_text()))}
    paths = sorted(directory.glob("*.sql"), key=lambda p: (order.get(p.name, len(order)), p.name))
    return [_definition(p) for p in paths]


def _definition(path: Path) -> MigrationFile:
    raw = path.read_bytes()
    text = raw.decode("utf-8")
    # One the audit owner owns is changed, and handed to it, as the audit owner.
    return MigrationFile(
        f"definitions/{path.name}",
        0,
        text,
        hashlib.sha256(raw).hexdigest(),
        as_audit_owner=AUDIT_OWNER in text,
    )


def _baseline_text() -> str:
    return (BASELINE_DIR / BASELINE_FILE).read_text(encoding="utf-8")


def baseline_sections(shipped: Sequence[MigrationFile]) -> dict[str, MigrationFile]:
    """Each section of the baseline as a stand-in for its versioned file.

    The stand-in carries the versioned file's name, number and SHA-256 (what the record says
    was applied) and, as parts, the section's own statements (padded to keep the baseline's
    line numbers) and the definitions it includes, in order.
    """
    text = _baseline_text()
    by_name = {f.filename: f for f in shipped}
    marks = list(SECTION_MARK.finditer(text))
    sections: dict[str, MigrationFile] = {}
    for mark, following in zip(marks, [*marks[1:], None], strict=True):
        name = mark.group(1)
        body_start = mark.end()
        body_end = following.start() if following else len(text)
        parts: list[MigrationFile] = []
        cursor = body_start
        for include in INCLUDE_LINE.finditer(text, body_start, body_end):
            parts.append(_chunk(text, cursor, include.start(), name))
            path = DEFINITIONS_DIR / include.group(1)
            parts.append(_definition(path))
            cursor = include.end()
        parts.append(_chunk(text, cursor, body_end, name))
        versioned = by_name[name]
        sections[name] = dataclasses.replace(
            versioned,
            sql=text[body_start:body_end],
            parts=tuple(p for p in parts if p.sql.strip()),
            source=f"baseline/{BASELINE_FILE}",
            as_audit_owner=bool(mark.group(2)),
        )
    return sections


def _chunk(text: str, start: int, end: int, name: str) -> MigrationFile:
    padding = "\n" * text.count("\n", 0, start)
    return MigrationFile(
        name, int(name[:3]), padding + text[start:end], "", source=f"baseline/{BASELINE_FILE}"
    )


def ships(directory: Path) -> bool:
    """Whether ``directory`` is the kit's own migrations folder, which the baseline squashes and
    the definitions follow (a copy or another folder runs its files as they are)."""
    return directory.resolve() == MIGRATIONS_DIR.resolve()


def files_to_apply(
    todo: Sequence[MigrationFile], applied: Mapping[str, str], directory: Path
) -> list[MigrationFile]:
    """``todo`` (the pending files, in order), each replaced by its baseline section when the
    baseline applies: the shipped migrations, and after this run every one of them applied,
    with nothing applied so far except from the baseline (``applied``: file to applied_by)."""
    if not ships(directory):
        return list(todo)
    shipped = discover_migrations(MIGRATIONS_DIR)
    complete = {f.filename for f in todo} | set(applied) == {f.filename for f in shipped}
    if not complete or not all(f"{FROM_BASELINE} as " in by for by in applied.values()):
        return list(todo)
    sections = baseline_sections(shipped)
    return [sections.get(f.filename, f) for f in todo]


def stale_definitions(conn: psycopg.Connection) -> list[MigrationFile]:
    """The definitions whose function the server lacks or runs in another form, or which
    belongs to another owner than the files give it (as the status lines compare them)."""
    found = definitions()
    names = {name: f.filename for f in found for name in definitions_in(f.sql)}
    stale = {names[name] for name in differing_functions(conn, names)}
    return [f for f in found if f.filename in stale]
