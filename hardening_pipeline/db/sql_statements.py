"""Split a migration file into its statements, remembering where each one starts.

The runner executes a file statement by statement inside its one transaction, so a failure can
name the exact statement and line (most server errors carry no position), and the plan can tell
which statement changed what. The splitter understands what our migrations and a DBA's SQL use:
``--`` and nested ``/* */`` comments, '...' and E'...' strings, "quoted" identifiers and
$tag$ ... $tag$ bodies. A semicolon anywhere else ends a statement, so SQL-standard
``BEGIN ATOMIC ... END`` function bodies are not supported: write bodies dollar-quoted.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_DOLLAR_TAG = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)?\$")


@dataclass(frozen=True)
class Statement:
    """One statement of a file: its text (without the ``;``) and its first line (1-based)."""

    text: str
    line: int
    offset: int

    @property
    def summary(self) -> str:
        """The statement's first meaningful line, shortened: enough to find it in the file."""
        for raw in self.text.splitlines():
            stripped = raw.strip()
            if stripped and not stripped.startswith("--"):
                return stripped if len(stripped) <= 100 else stripped[:97] + "..."
        return ""

    def line_at(self, position: int) -> int:
        """The file line of a 1-based character position inside this statement."""
        return self.line + self.text.count("\n", 0, max(position - 1, 0))


def _skip_quoted(sql: str, i: int, quote: str, backslash_escapes: bool) -> int:
    """Index just past the closing quote of a literal that opens at ``i``."""
    j = i + 1
    while j < len(sql):
        ch = sql[j]
        if backslash_escapes and ch == "\\":
            j += 2
            continue
        if ch == quote:
            if j + 1 < len(sql) and sql[j + 1] == quote:  # doubled quote inside the literal
                j += 2
                continue
            return j + 1
        j += 1
    return len(sql)


def _skip_block_comment(sql: str, i: int) -> int:
    """Index just past a /* ... */ comment opening at ``i``; Postgres nests them."""
    depth, i = 1, i + 2
    while i < len(sql) and depth:
        if sql.startswith("/*", i):
            depth, i = depth + 1, i + 2
        elif sql.startswith("*/", i):
            depth, i = depth - 1, i + 2
        else:
            i += 1
    return i


def split_statements(sql: str) -> list[Statement]:
    """The file's statements in order; comments-only stretches are dropped."""
    statements: list[Statement] = []
    start = 0
    i = 0
    n = len(sql)
    while i < n:
        ch = sql[i]
        if ch == "-" and sql.startswith("--", i):
            end = sql.find("\n", i)
            i = n if end == -1 else end + 1
        elif ch == "/" and sql.startswith("/*", i):
            i = _skip_block_comment(sql, i)
        elif ch == "'":
            escapes = i > 0 and sql[i - 1] in "eE" and (i < 2 or not sql[i - 2].isalnum())
            i = _skip_quoted(sql, i, "'", escapes)
        elif ch == '"':
            i = _skip_quoted(sql, i, '"', False)
        elif ch == "$" and (i == 0 or not (sql[i - 1].isalnum() or sql[i - 1] == "_")):
            match = _DOLLAR_TAG.match(sql, i)
            if match:
                close = sql.find(match.group(0), match.end())
                i = n if close == -1 else close + len(match.group(0))
            else:
                i += 1
        elif ch == ";":
            _add(statements, sql, start, i)
            start = i = i + 1
        else:
            i += 1
    _add(statements, sql, start, n)
    return statements


def _add(statements: list[Statement], sql: str, start: int, end: int) -> None:
    text = sql[start:end]
    if not _has_code(text):
        return
    # Start at the first code, past leading comments, so the reported line is the statement's own.
    offset = start
    while True:
        while offset < end and sql[offset].isspace():
            offset += 1
        if sql.startswith("--", offset):
            newline = sql.find("\n", offset, end)
            offset = end if newline == -1 else newline + 1
        elif sql.startswith("/*", offset):
            offset = min(_skip_block_comment(sql, offset), end)
        else:
            break
    statements.append(
        Statement(text=sql[offset:end], line=sql.count("\n", 0, offset) + 1, offset=offset)
    )


def _has_code(text: str) -> bool:
    for raw in text.splitlines():
        stripped = raw.strip()
        if stripped and not stripped.startswith("--"):
            return True
    return False
