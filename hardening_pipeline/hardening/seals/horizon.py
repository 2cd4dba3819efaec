"""The safe horizon: how far a seal may reach without sealing over a transaction still open.

Identity values are handed out when a row is inserted, but rows become visible when their
transaction commits, and commit order is not id order. If a seal covered ids up to 100 while a
transaction holding id 97 was still open, row 97 would appear after the seal and look forged.
So a seal only reaches ids whose fate is settled (docs/audit-seal-format.md, "The safe
horizon", gives the reasoning step by step):

1. read ``L``, the last id the sequence handed out, *then* list every transaction that holds a
   transaction id (each holds a lock on its own id, visible in ``pg_locks`` to any role);
2. wait (up to ``wait_seconds``) until every listed transaction has released that lock; the
   horizon is then ``L``;
3. a transaction still open after the wait holds the horizon back to the largest id created
   before it started (less ``START_MARGIN``), or, when its start cannot be seen, to the floor.

The horizon needs the sequence to hand out ids in order, so a sequence ``CACHE`` above 1 is
refused.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

import psycopg

from hardening_pipeline.errors import ConfigError
from hardening_pipeline.hardening.seals.format import SealError

DEFAULT_WAIT_SECONDS = 10.0
# Slack between a transaction's start and the creation time of the rows it is compared with.
START_MARGIN = timedelta(seconds=1)


@dataclass(frozen=True)
class Horizon:
    """How far a seal may reach now, and what (if anything) held it back."""

    to_id: int
    allocated: int
    held_back_by: tuple[int, ...] = ()

    @property
    def complete(self) -> bool:
        return not self.held_back_by


_SEQUENCE = """
    SELECT pg_catalog.pg_sequence_last_value(s.seq) AS last_value, p.seqcache
    FROM (SELECT pg_catalog.pg_get_serial_sequence('public.audit_events', 'id')::regclass AS seq) s
    JOIN pg_catalog.pg_sequence p ON p.seqrelid = s.seq
"""
# Transaction ids (32-bit, as text -> bigint) currently held by other sessions, including
# prepared transactions (pid NULL). Subtransaction ids are listed too; waiting on them is harmless.
_HELD_XIDS = """
    SELECT coalesce(array_agg(DISTINCT l.transactionid::text::bigint), '{}') AS held
    FROM pg_catalog.pg_locks l
    WHERE l.locktype = 'transactionid' AND l.mode = 'ExclusiveLock' AND l.granted
      AND l.pid IS DISTINCT FROM pg_catalog.pg_backend_pid()
      AND (%(among)s::bigint[] IS NULL OR l.transactionid::text::bigint = ANY (%(among)s))
"""
# When each still-open transaction began: through the lock's pid, so a subtransaction id finds
# its session too. NULL for a prepared transaction or a session this role may not inspect.
_OPEN_SINCE = """
    SELECT x, min(a.xact_start) AS xact_start
    FROM unnest(%s::bigint[]) AS x
    LEFT JOIN pg_catalog.pg_locks l
        ON l.locktype = 'transactionid' AND l.mode = 'ExclusiveLock' AND l.granted
       AND l.transactionid::text::bigint = x
    LEFT JOIN pg_catalog.pg_stat_activity a ON a.pid = l.pid
    GROUP BY x
"""


def safe_horizon(
    conn: psycopg.Connection,
    floor: int,
    *,
    wait_seconds: float = DEFAULT_WAIT_SECONDS,
    poll_seconds: float = 0.1,
    sleep: Callable[[float], None] = time.sleep,
) -> Horizon:
    """The largest id a seal may cover now (see the module docstring); never below ``floor``.

    ``conn`` must be in READ COMMITTED, so every statement sees a fresh snapshot.
    """
    seq = conn.execute(_SEQUENCE).fetchone()
    if seq is None:
        raise SealError("audit_events.id has no sequence; is 002_audit_events applied?")
    if seq["seqcache"] > 1:
        raise ConfigError(
            f"the audit_events id sequence has CACHE {seq['seqcache']}, so ids are not handed "
            "out in order and no seal horizon is safe; ALTER SEQUENCE ... CACHE 1."
        )
    allocated = seq["last_value"] or 0
    if allocated <= floor:
        return Horizon(floor, allocated)
    deadline = time.monotonic() + wait_seconds
    open_xids: list[int] = conn.execute(_HELD_XIDS, {"among": None}).fetchone()["held"]
    while open_xids:
        open_xids = conn.execute(_HELD_XIDS, {"among": open_xids}).fetchone()["held"]
        if not open_xids or time.monotonic() >= deadline:
            break
        sleep(poll_seconds)
    if not open_xids:
        return Horizon(allocated, allocated)
    starts = conn.execute(_OPEN_SINCE, (open_xids,)).fetchall()
    if any(r["xact_start"] is None for r in starts):
        return Horizon(floor, allocated, tuple(open_xids))
    cutoff = min(r["xact_start"] for r in starts) - START_MARGIN
    row = conn.execute(
        "SELECT max(id) AS m FROM public.audit_events "
        "WHERE id > %s AND id <= %s AND created_at < %s",
        (floor, allocated, cutoff),
    ).fetchone()
    return Horizon(max(floor, row["m"] or floor), allocated, tuple(open_xids))
