"""A backup's schema, read only through ``pg_restore``'s own table of contents.

The schema object holds a ``pg_dump --format=custom --schema-only`` archive. Its text came from a
database whose table owner may be an attacker (a comment, a function body, an object name) and,
for a forged backup, from whoever holds the key. So it is never split with regular expressions:
``pg_restore --list`` names every entry (dump id, type, schema, name, owner) and ``pg_restore
--use-list`` writes the SQL of exactly the entries asked for. Entry types a schema does not need
(event triggers, publications, subscriptions, foreign servers, languages, large objects) are
refused by name before anything runs, and every entry's SQL is run in a session of its owner
(``restore/owners.py``), never a superuser's, so whatever the SQL says it cannot do more than the
owner could on the source.
"""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from hardening_pipeline.backup.app_schema import ARCHIVE_SECTION
from hardening_pipeline.backup.pg_tools import PgTool, find_pg_tool
from hardening_pipeline.db.pg_installs import major_of
from hardening_pipeline.errors import HardeningError

# Every type ``pg_dump --schema-only`` of an app's schemas writes that a restore needs. Longest
# first: the type is matched at the start of what follows the two object ids.
ALLOWED_TYPES = (
    "TEXT SEARCH CONFIGURATION",
    "TEXT SEARCH DICTIONARY",
    "MATERIALIZED VIEW",
    "SEQUENCE OWNED BY",
    "CHECK CONSTRAINT",
    "OPERATOR FAMILY",
    "OPERATOR CLASS",
    "FK CONSTRAINT",
    "INDEX ATTACH",
    "ROW SECURITY",
    "TABLE ATTACH",
    "DEFAULT ACL",
    "CONSTRAINT",
    "COLLATION",
    "CONVERSION",
    "STATISTICS",
    "AGGREGATE",
    "PROCEDURE",
    "SHELL TYPE",
    "EXTENSION",
    "FUNCTION",
    "OPERATOR",
    "SEQUENCE",
    "TRIGGER",
    "COMMENT",
    "DEFAULT",
    "DOMAIN",
    "POLICY",
    "SCHEMA",
    "INDEX",
    "TABLE",
    "RULE",
    "TYPE",
    "VIEW",
    "ACL",
)
# What a schema-only dump may also hold, refused by name: each runs code or reaches outside the
# database (an event trigger fires on every DDL, a subscription connects out, a foreign server
# or user mapping carries credentials, a language or large object is not an app's schema).
REFUSED_TYPES = (
    "PUBLICATION TABLES IN SCHEMA",
    "TEXT SEARCH TEMPLATE",
    "FOREIGN DATA WRAPPER",
    "TEXT SEARCH PARSER",
    "PROCEDURAL LANGUAGE",
    "SUBSCRIPTION TABLE",
    "PUBLICATION TABLE",
    "FOREIGN SERVER",
    "EVENT TRIGGER",
    "LARGE OBJECT",
    "SUBSCRIPTION",
    "USER MAPPING",
    "PUBLICATION",
    "TRANSFORM",
    "DATABASE",
    "SERVER",
    "CAST",
    "BLOB",
)
# Entries pg_restore writes as session settings of its own, not objects.
_SETTINGS_TYPES = ("ENCODING", "STDSTRINGS", "SEARCHPATH")
_PRE_DATA_LAST = ("CONSTRAINT", "FK CONSTRAINT", "INDEX", "INDEX ATTACH", "TRIGGER", "RULE")
POST_DATA_TYPES = frozenset(
    {*_PRE_DATA_LAST, "POLICY", "ROW SECURITY", "STATISTICS", "DEFAULT ACL"}
)
_LINE = re.compile(r"^(?P<id>\d+); (?P<tableoid>\d+) (?P<oid>\d+) (?P<rest>.*)$")
# Statements that reach outside the database; the owner's session refuses them anyway, and
# naming them here turns an attack into a sentence instead of a permission error.
_OUTSIDE = re.compile(
    r"\b(?:TO|FROM)\s+PROGRAM\b|\bCOPY\b[^;]*\b(?:TO|FROM)\s+'"
    r"|\bCREATE\s+(?:ROLE|USER|GROUP|EVENT\s+TRIGGER)\b|\bALTER\s+SYSTEM\b",
    re.I,
)


_QUOTED = re.compile(
    r"--[^\n]*|/\*.*?\*/"  # comments
    r"|[Ee]'(?:[^'\\]|\\.|'')*'"  # escape strings
    r"|'(?:[^']|'')*'"  # strings
    r'|"(?:[^"]|"")*"'  # quoted identifiers
    r"|(?P<tag>\$[A-Za-z_0-9]*\$).*?(?P=tag)",  # dollar-quoted bodies
    re.S,
)


def statements_text(sql_text: str) -> str:
    """``sql_text`` with comments, literals, quoted names and function bodies blanked.

    What is left is what the entry *does*: a function that mentions COPY in its body is not
    refused for it (it runs later, as its owner, and only if called), a top-level COPY is.
    """
    return _QUOTED.sub(lambda m: " " if m[0][0] in "-/" else "''", sql_text)


class ArchiveError(HardeningError):
    """The schema archive cannot be restored as it is; the message names the entry."""


@dataclass(frozen=True)
class TocEntry:
    """One entry of the archive's table of contents."""

    dump_id: int
    type: str
    schema: str
    name: str
    owner: str

    @property
    def label(self) -> str:
        where = f"{self.schema}." if self.schema and self.schema != "-" else ""
        return f"{self.type.lower()} {where}{self.name} (entry {self.dump_id}, owner {self.owner})"

    @property
    def post_data(self) -> bool:
        return self.type in POST_DATA_TYPES


def _split_rest(rest: str, roles: Sequence[str]) -> tuple[str, str, str, str] | None:
    """(type, schema, name, owner) of what follows the object ids, or None if unknown.

    The type comes first and is ours to recognise; the owner is the longest known role the
    line ends with (a name may hold spaces; the owner cannot be made up by the name).
    """
    kind = next((t for t in (*ALLOWED_TYPES, *REFUSED_TYPES) if rest.startswith(t + " ")), None)
    if kind is None:
        return None
    tail = rest[len(kind) + 1 :]
    owner = max((r for r in roles if tail.endswith(" " + r)), key=len, default=None)
    if owner is None:
        owner = tail.rsplit(" ", 1)[-1]
    body = tail[: -len(owner) - 1] if tail.endswith(" " + owner) else tail
    schema, _, name = body.partition(" ")
    return kind, schema, name, owner


def parse_toc(listing: str, roles: Sequence[str]) -> list[TocEntry]:
    """The entries of ``pg_restore --list`` output, refusing any type a schema does not need."""
    entries = []
    for line in listing.splitlines():
        if not line or line.startswith(";"):
            continue
        match = _LINE.match(line)
        if match is None:
            raise ArchiveError(f"the schema archive's table of contents has a line {line!r}.")
        rest = match["rest"]
        if rest.split(" ", 1)[0] in _SETTINGS_TYPES:
            continue
        parts = _split_rest(rest, roles)
        if parts is None:
            raise ArchiveError(
                f"the schema archive holds an entry of an unknown type ({rest[:80]!r}); a "
                "restore runs only the entry types an app's schema needs."
            )
        kind, schema, name, owner = parts
        entry = TocEntry(int(match["id"]), kind, schema, name, owner)
        if kind in REFUSED_TYPES:
            raise ArchiveError(
                f"the backup's schema holds {entry.label}, which a restore never runs (it "
                "reaches outside the database or runs on every DDL); restore the rows into a "
                "database you migrated yourself, or remove it at the source and back up again."
            )
        entries.append(entry)
    return entries


def open_archive(
    sections: dict[str, bytes], app_schema_pg_dump: str, roles: Iterable[str]
) -> SchemaArchive:
    """The schema object's archive, read by a ``pg_restore`` at least as new as its ``pg_dump``.

    A backup written before schemas were archives holds plain SQL, which cannot be told apart
    from what a table owner wrote into it; it is refused rather than split.
    """
    if ARCHIVE_SECTION not in sections:
        raise ArchiveError(
            "this backup carries its schema as plain SQL (written by an earlier version), "
            "which cannot be restored without trusting its text; take a new backup with "
            "`hardening backup` and restore that one."
        )
    pg_restore = find_pg_tool("pg_restore", major_of(app_schema_pg_dump) * 10000)
    return SchemaArchive(sections[ARCHIVE_SECTION], pg_restore, roles)


class SchemaArchive:
    """The archive on disk (mode 0600) and the ``pg_restore`` that reads it."""

    def __init__(self, data: bytes, pg_restore: PgTool, roles: Iterable[str]) -> None:
        self._pg_restore = pg_restore
        self._folder = tempfile.TemporaryDirectory(prefix="hp-schema-")
        self.path = Path(self._folder.name) / "schema.dump"
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        self.entries = parse_toc(self._run("--list"), sorted(set(roles)))

    def close(self) -> None:
        self._folder.cleanup()

    def __enter__(self) -> SchemaArchive:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self, *args: str) -> str:
        proc = subprocess.run(
            [str(self._pg_restore.path), *args, str(self.path)],
            capture_output=True, text=True, timeout=600, check=False,
        )  # fmt: skip
        if proc.returncode != 0:
            reason = (proc.stderr.strip().splitlines() or ["no output"])[0]
            raise ArchiveError(
                f"pg_restore {self._pg_restore.version} cannot read the backup's schema "
                f"archive ({reason}); the schema object is damaged or was not written by pg_dump."
            )
        return proc.stdout

    def sql(self, entries: Sequence[TocEntry]) -> str:
        """The SQL of exactly ``entries`` (with pg_restore's session settings first)."""
        text = self._text(entries)
        if _OUTSIDE.search(statements_text(text)):
            culprit = entries[0]
            if len(entries) > 1:
                culprit = next(
                    (e for e in entries if _OUTSIDE.search(statements_text(self._text([e])))),
                    culprit,
                )
            raise ArchiveError(
                f"the backup's schema reaches outside the database (a program, a server file, "
                f"a role, an event trigger or the server's configuration) in {culprit.label}; "
                "a restore never runs it: remove it at the source and back up again."
            )
        return text

    def _text(self, entries: Sequence[TocEntry]) -> str:
        listing = Path(self._folder.name) / f"list-{secrets.token_hex(8)}"
        listing.write_text("".join(f"{e.dump_id};\n" for e in entries), encoding="utf-8")
        key = secrets.token_hex(16)
        try:
            text = self._run("--file=-", f"--use-list={listing}", f"--restrict-key={key}")
        finally:
            listing.unlink(missing_ok=True)
        # The psql meta-commands fencing the output are not SQL; only our own key is removed.
        return text.replace(f"\\restrict {key}\n", "").replace(f"\\unrestrict {key}\n", "")
