"""Who holds the table lock a job's read gave up waiting for, with the session to end.

A read takes ACCESS SHARE, which only ACCESS EXCLUSIVE conflicts with: a ``LOCK TABLE`` (or
DDL) held in an open transaction, or such a request queued ahead of the read. Looked up after
the read's ``lock_timeout`` expired, from a connection of its own, so the failed transaction
is not needed. ``pg_stat_activity`` shows a session's login role; a ``SET ROLE`` inside it is
not visible to other sessions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import psycopg
from psycopg.rows import tuple_row

_HOLDERS = """
SELECT l.pid, a.usename, a.application_name, n.nspname, c.relname, l.granted
FROM pg_catalog.pg_locks l
JOIN pg_catalog.pg_class c ON c.oid = l.relation
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_catalog.pg_stat_activity a ON a.pid = l.pid
WHERE l.locktype = 'relation' AND l.mode = 'AccessExclusiveLock'
  AND l.database = (SELECT oid FROM pg_catalog.pg_database WHERE datname = current_database())
  AND n.nspname = ANY(%s) AND l.pid <> pg_catalog.pg_backend_pid()
ORDER BY l.granted DESC, l.pid, n.nspname, c.relname
"""


@dataclass(frozen=True)
class LockHolder:
    """One session holding (or queued for) ACCESS EXCLUSIVE on a table."""

    pid: int
    role: str | None
    application_name: str | None
    table: str
    granted: bool

    def describe(self) -> str:
        how = "holds" if self.granted else "is queued for"
        return (
            f"pid {self.pid} (role {self.role or '(unknown)'}, application_name "
            f"{self.application_name or '(none)'!r}) {how} an ACCESS EXCLUSIVE lock on {self.table}"
        )


def exclusive_lock_holders(url: str, schemas: Sequence[str]) -> list[LockHolder]:
    """Sessions with ACCESS EXCLUSIVE on a table of ``schemas``; [] when it cannot be read."""
    try:
        with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
            rows = conn.cursor(row_factory=tuple_row).execute(_HOLDERS, (list(schemas),)).fetchall()
    except psycopg.Error:
        return []
    return [
        LockHolder(pid, role, application, f"{schema}.{table}", granted)
        for pid, role, application, schema, table, granted in rows
    ]


def describe_lock_blockers(holders: Sequence[LockHolder]) -> tuple[str, str]:
    """(who blocks, the fix) as sentence parts; a gone blocker says so."""
    if not holders:
        return (
            "the session holding it has ended since or is not visible to this role",
            "find it in pg_locks and end it with SELECT pg_terminate_backend(<pid>)",
        )
    who = "; ".join(h.describe() for h in holders)
    pids = list(dict.fromkeys(h.pid for h in holders))
    ends = ", ".join(f"SELECT pg_terminate_backend({pid})" for pid in pids)
    return who, f"end {'that session' if len(pids) == 1 else 'those sessions'} with {ends}"
