"""Rewrite the key ledger table, and say whether its old row versions are physically gone.

A plain VACUUM only marks a dead row version free, its bytes stay in the page until reused;
VACUUM FULL copies the live row into a new file, but also every dead version some snapshot may
still see. A session whose snapshot (``backend_xmin``) or transaction (``backend_xid``) is at
least as old as the write that replaced the row, a prepared transaction that old, or a
replication slot holding ``xmin`` back keeps the old version, and the destroyed key in it, in
the new file. So the rewrite waits a bounded time for those to go, and names whoever is left.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime

import psycopg
from psycopg.rows import dict_row

# The transaction that wrote the current row: every older version was replaced by it or before.
_WRITER = "SELECT xmin::text AS xid FROM hardening.tenant_key_ledger WHERE id = 1"

# Since PostgreSQL 14 only sessions of this database (and walsenders, database NULL) hold back
# the horizon of an ordinary table; replication slots hold it for every database.
_HOLDERS = """
SELECT 'session' AS kind, a.pid, a.usename AS role, a.application_name, a.backend_type,
       coalesce(a.xact_start, a.query_start) AS since, NULL AS name
FROM pg_catalog.pg_stat_activity a
WHERE a.pid <> pg_catalog.pg_backend_pid()
  AND (a.datid IS NULL OR a.datname = pg_catalog.current_database())
  AND (pg_catalog.age(a.backend_xmin) >= pg_catalog.age(%(xid)s::xid)
       OR pg_catalog.age(a.backend_xid) >= pg_catalog.age(%(xid)s::xid))
UNION ALL
SELECT 'prepared transaction', NULL, p.owner, NULL, NULL, p.prepared, p.gid
FROM pg_catalog.pg_prepared_xacts p
WHERE p.database = pg_catalog.current_database()
  AND pg_catalog.age(p.transaction) >= pg_catalog.age(%(xid)s::xid)
UNION ALL
SELECT 'replication slot', s.active_pid, NULL, NULL, s.slot_type, NULL, s.slot_name::text
FROM pg_catalog.pg_replication_slots s
WHERE pg_catalog.age(s.xmin) >= pg_catalog.age(%(xid)s::xid)
ORDER BY since NULLS FIRST
"""

_POLL_SECONDS = 0.2


def _describe(row: dict) -> str:
    since = row["since"]
    when = f"since {since.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC" if since else "start hidden"
    if row["kind"] == "prepared transaction":
        return f"prepared transaction {row['name']!r} (role {row['role']}, prepared {when})"
    if row["kind"] == "replication slot":
        active = f"active pid {row['pid']}" if row["pid"] else "inactive"
        return f"replication slot {row['name']!r} ({row['backend_type']}, {active})"
    application = row["application_name"] or "no application_name"
    role = row["role"] or row["backend_type"]
    return f"pid {row['pid']} (role {role}, {application}, snapshot {when})"


def old_version_holders(conn: psycopg.Connection) -> list[str]:
    """Who may still see a row version of the ledger table older than its current row."""
    with conn.cursor(row_factory=dict_row) as cur:
        writer = cur.execute(_WRITER).fetchone()
        if writer is None:
            return []
        return [_describe(r) for r in cur.execute(_HOLDERS, {"xid": writer["xid"]}).fetchall()]


@dataclass(frozen=True)
class LedgerRewrite:
    """One VACUUM FULL of the ledger table, and what still held old row versions then."""

    at: datetime
    holders: tuple[str, ...]

    @property
    def removed(self) -> bool:
        return not self.holders

    def describe(self) -> str:
        when = self.at.isoformat()
        if self.removed:
            return (
                f"table rewritten by VACUUM FULL at {when}; no session, prepared transaction or "
                "replication slot could still see an older row version, so none survives"
            )
        return (
            f"table rewritten by VACUUM FULL at {when}, but the old row version holding the "
            f"key is NOT yet physically removed: {'; '.join(self.holders)} could still see it"
        )


def rewrite_ledger_table(conn: psycopg.Connection, *, wait_seconds: float = 0) -> LedgerRewrite:
    """VACUUM FULL the ledger table once nothing older than its current row holds it back, or
    after ``wait_seconds``, whichever comes first."""
    was = conn.autocommit
    conn.autocommit = True
    try:
        deadline = time.monotonic() + wait_seconds
        holders = old_version_holders(conn)
        while holders and time.monotonic() < deadline:
            time.sleep(_POLL_SECONDS)
            holders = old_version_holders(conn)
        at = datetime.now(UTC)
        conn.execute("VACUUM FULL hardening.tenant_key_ledger")
    finally:
        conn.autocommit = was
    return LedgerRewrite(at, tuple(holders))
