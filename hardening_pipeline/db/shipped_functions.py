"""The kit's own functions as its migration files define them, compared with what the server runs.

A status line that only asks whether a trigger exists and which function it names stays green
when the function is replaced by one that does nothing (``CREATE OR REPLACE FUNCTION``), or
when a trigger is re-created to fire for fewer statements. The reference here is the SQL
files the kit ships, never the database being checked: for each function, its file in
``sql/definitions`` gives its body, language, volatility, ``SECURITY DEFINER`` and ``SET``
options, and the last ``ALTER FUNCTION ... OWNER TO`` in the migrations or that file its owner;
the server's ``pg_proc`` row must give the same digest.

The digest is SHA-256 over the canonical JSON of those fields (``definition_digest``); the
body is ``pg_proc.prosrc``, which Postgres keeps exactly as written between the dollar quotes.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import psycopg
from psycopg.rows import dict_row

from hardening_pipeline.sql_files import DEFINITIONS_DIR, MIGRATIONS_DIR

_CREATE = re.compile(
    r"CREATE\s+(?:OR\s+REPLACE\s+)?FUNCTION\s+hardening\.(\w+)\s*\(([^)]*)\)(.*?)"
    r"\bAS\s+\$(\w*)\$(.*?)\$\4\$",
    re.DOTALL | re.IGNORECASE,
)
_OWNER = re.compile(
    r"ALTER\s+FUNCTION\s+hardening\.(\w+)\s*\([^)]*\)\s+OWNER\s+TO\s+(\w+)", re.IGNORECASE
)
_LANGUAGE = re.compile(r"\bLANGUAGE\s+(\w+)", re.IGNORECASE)
_SET = re.compile(r"\bSET\s+(\w+)\s*(?:=|TO)\s*'([^']*)'", re.IGNORECASE)
_VOLATILITY = {"immutable": "i", "stable": "s"}


@dataclass(frozen=True)
class FunctionDefinition:
    """What decides what a function does when it runs."""

    name: str
    body: str
    language: str
    volatility: str  # pg_proc.provolatile: i, s or v
    security_definer: bool
    config: tuple[str, ...]  # pg_proc.proconfig, e.g. ('search_path=""',)
    owner: str | None  # None: whoever ran the migration (not fixed by the files)

    @property
    def digest(self) -> str:
        fields = {
            "body": self.body,
            "language": self.language,
            "volatility": self.volatility,
            "security_definer": self.security_definer,
            "config": list(self.config),
            "owner": self.owner,
        }
        text = json.dumps(fields, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _config_entry(name: str, value: str) -> str:
    # proconfig keeps `SET search_path = ''` as search_path="" (an empty identifier, quoted).
    return f'{name.lower()}=""' if value == "" else f"{name.lower()}={value}"


def _strip_comments(text: str) -> str:
    return re.sub(r"--[^\n]*", "", text)


def definitions_in(text: str) -> dict[str, FunctionDefinition]:
    """Every ``hardening.<name>`` function a SQL text creates, the last one per name (no owner)."""
    found: dict[str, FunctionDefinition] = {}
    for match in _CREATE.finditer(text):
        name, _args, header, _tag, body = match.groups()
        header = _strip_comments(header)
        language = _LANGUAGE.search(header)
        words = set(re.findall(r"\w+", header.lower()))
        found[name] = FunctionDefinition(
            name=name,
            body=body,
            language=language.group(1).lower() if language else "sql",
            volatility=next((c for w, c in _VOLATILITY.items() if w in words), "v"),
            security_definer=bool(re.search(r"\bSECURITY\s+DEFINER\b", header, re.I)),
            config=tuple(_config_entry(k, v) for k, v in _SET.findall(header)),
            owner=None,
        )
    return found


def _owners_in(text: str) -> list[tuple[str, str]]:
    """(function, owner) for each ``ALTER FUNCTION hardening.<name>(...) OWNER TO`` in a text."""
    return _OWNER.findall(_strip_comments(text))


def _shipped_texts(migrations_dir: Path) -> list[str]:
    """The migrations in order, then the definitions, which say how each function is today."""
    paths = sorted(migrations_dir.glob("[0-9][0-9][0-9]_*.sql"))
    paths += sorted(DEFINITIONS_DIR.glob("*.sql"))
    return [path.read_text(encoding="utf-8") for path in paths]


@cache
def shipped_functions(migrations_dir: Path = MIGRATIONS_DIR) -> dict[str, FunctionDefinition]:
    """Every ``hardening.<name>`` function the kit ships, as its definition file has it, with
    the owner the migrations or that file give it."""
    return functions_defined(_shipped_texts(migrations_dir))


def functions_defined(texts: Iterable[str]) -> dict[str, FunctionDefinition]:
    """Every ``hardening.<name>`` function these SQL texts create, run in order: as the last
    one to create it left it, with the last owner one of them gives it."""
    found: dict[str, FunctionDefinition] = {}
    for text in texts:
        for name, definition in definitions_in(text).items():
            owner = found[name].owner if name in found else None
            found[name] = _with_owner(definition, owner) if owner else definition
        for name, owner in _owners_in(text):
            if name in found:
                found[name] = _with_owner(found[name], owner)
    return found


def _with_owner(definition: FunctionDefinition, owner: str) -> FunctionDefinition:
    return FunctionDefinition(**{**definition.__dict__, "owner": owner})


_EVENT_TRIGGER = re.compile(
    r"CREATE\s+EVENT\s+TRIGGER\s+(\w+)\s+ON\s+(\w+)\s+(WHEN\s.*?)?"
    r"EXECUTE\s+(?:FUNCTION|PROCEDURE)\s+hardening\.(\w+)\s*\(\)",
    re.DOTALL | re.IGNORECASE,
)


@dataclass(frozen=True)
class EventTriggerDefinition:
    event: str
    filtered: bool  # a WHEN TAG IN (...) clause: fires for those commands only
    function: str


@cache
def shipped_event_triggers(
    migrations_dir: Path = MIGRATIONS_DIR,
) -> dict[str, EventTriggerDefinition]:
    """Every event trigger the migrations create, as the last one that creates it left it."""
    found: dict[str, EventTriggerDefinition] = {}
    for text in map(_strip_comments, _shipped_texts(migrations_dir)):
        for name, event, when, function in _EVENT_TRIGGER.findall(text):
            found[name] = EventTriggerDefinition(event.lower(), bool(when), function)
    return found


_INSTALLED = """
    SELECT p.proname, p.prosrc, l.lanname, p.provolatile, p.prosecdef,
           coalesce(p.proconfig, '{}') AS proconfig, pg_catalog.pg_get_userbyid(p.proowner) AS owner
    FROM pg_catalog.pg_proc p
    JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
    JOIN pg_catalog.pg_language l ON l.oid = p.prolang
    WHERE n.nspname = 'hardening' AND p.proname = ANY (%s)
"""


def installed_functions(
    conn: psycopg.Connection, names: list[str], owners_fixed: set[str]
) -> dict[str, FunctionDefinition]:
    """The server's definitions of ``hardening.<name>``; the owner counts only for the names in
    ``owners_fixed`` (the others belong to whichever role ran the migrations)."""
    rows = conn.cursor(row_factory=dict_row).execute(_INSTALLED, (names,)).fetchall()
    return {
        r["proname"]: FunctionDefinition(
            name=r["proname"],
            body=r["prosrc"],
            language=r["lanname"],
            volatility=r["provolatile"],
            security_definer=r["prosecdef"],
            config=tuple(r["proconfig"]),
            owner=r["owner"] if r["proname"] in owners_fixed else None,
        )
        for r in rows
    }


def differing_functions(
    conn: psycopg.Connection, names: Iterable[str], migrations_dir: Path = MIGRATIONS_DIR
) -> dict[str, tuple[FunctionDefinition | None, FunctionDefinition]]:
    """(the server's definition, or None when missing; the shipped one) for each function of
    ``names`` whose digest differs from what the kit ships; the owner counts where the files
    fix it."""
    shipped = shipped_functions(migrations_dir)
    expected = {n: shipped[n] for n in names}
    owners_fixed = {n for n, d in expected.items() if d.owner is not None}
    installed = installed_functions(conn, list(expected), owners_fixed)
    return {
        name: (installed.get(name), want)
        for name, want in expected.items()
        if name not in installed or installed[name].digest != want.digest
    }


def changed_functions(
    conn: psycopg.Connection, names: list[str], migrations_dir: Path = MIGRATIONS_DIR
) -> list[str]:
    """One phrase per function of ``names`` that is missing or differs from what the kit's
    migrations installed (compared by digest), e.g. ``record_ddl() was replaced``."""
    problems = []
    for name, (have, want) in differing_functions(conn, names, migrations_dir).items():
        if have is None:
            problems.append(f"hardening.{name}() is missing")
        else:
            what = [
                label
                for label, same in (
                    ("body", have.body == want.body),
                    ("owner", have.owner == want.owner),
                    ("SECURITY DEFINER", have.security_definer == want.security_definer),
                    ("SET options", have.config == want.config),
                    (
                        "language/volatility",
                        (have.language, have.volatility) == (want.language, want.volatility),
                    ),
                )
                if not same
            ]
            problems.append(
                f"hardening.{name}() differs from the kit's migrations ({', '.join(what)}; "
                f"digest {have.digest[:12]}, shipped {want.digest[:12]})"
            )
    return problems


__all__ = [
    "EventTriggerDefinition",
    "FunctionDefinition",
    "shipped_event_triggers",
    "changed_functions",
    "definitions_in",
    "functions_defined",
    "differing_functions",
    "installed_functions",
    "shipped_functions",
]
