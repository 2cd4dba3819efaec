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

import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

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
    # Who holds them: "pid 123 (role app, application psql, open since ...)", one per session.
    holders: tuple[str, ...] = ()

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


# Who holds each transaction id: any role sees another session's pid, role and application
# (pg_stat_activity hides its query and start times), and every prepared transaction's gid.
_HOLDERS = """
    SELECT l.pid, a.usename, a.application_name, a.xact_start, p.gid, p.owner, p.prepared,
           min(l.transactionid::text::bigint) AS xid
    FROM pg_catalog.pg_locks l
    LEFT JOIN pg_catalog.pg_stat_activity a ON a.pid = l.pid
    LEFT JOIN pg_catalog.pg_prepared_xacts p ON l.pid IS NULL AND p.transaction = l.transactionid
    WHERE l.locktype = 'transactionid' AND l.mode = 'ExclusiveLock' AND l.granted
      AND l.transactionid::text::bigint = ANY (%s)
    GROUP BY 1, 2, 3, 4, 5, 6, 7
    ORDER BY min(coalesce(a.xact_start, p.prepared)) NULLS FIRST, l.pid
"""


def describe_holders(
    conn: psycopg.Connection, xids: Sequence[int], *, started_before: datetime | None = None
) -> tuple[str, ...]:
    """One phrase per session (or prepared transaction) holding one of ``xids``; with
    ``started_before``, only those whose start is hidden or earlier than it."""
    found = []
    for r in conn.execute(_HOLDERS, (list(xids),)).fetchall():
        since = r["xact_start"] or r["prepared"]
        if started_before is not None and since is not None and since > started_before:
            continue
        when = f"open since {since:%Y-%m-%d %H:%M:%S} UTC" if since else "start hidden"
        if r["pid"] is None:
            found.append(f"prepared transaction {r['gid']!r} (role {r['owner']}, {when})")
        else:
            app = r["application_name"] or "no application_name"
            found.append(f"pid {r['pid']} (role {r['usename']}, {app}, {when})")
    return tuple(found)


def open_transaction_ids(conn: psycopg.Connection) -> list[int]:
    """Transaction ids other sessions (and prepared transactions) hold now."""
    return conn.execute(_HELD_XIDS, {"among": None}).fetchone()["held"]


# How long the oldest unsealed row may wait for a seal before the chain is red: an open
# transaction holds the seal back for as long as it stays open, and rows deleted meanwhile would
# be sealed as if they never existed. Seals run every minute; the default leaves room for a
# slow run, a restart and a long migration.
ENV_MAX_SEAL_LAG = "HARDENING_SEAL_MAX_LAG_MINUTES"
DEFAULT_MAX_SEAL_LAG = timedelta(minutes=15)


def max_seal_lag(environ: Mapping[str, str] = os.environ) -> timedelta:
    """The bound from ``HARDENING_SEAL_MAX_LAG_MINUTES`` (minutes, may be fractional)."""
    value = environ.get(ENV_MAX_SEAL_LAG, "").strip()
    if not value:
        return DEFAULT_MAX_SEAL_LAG
    try:
        minutes = float(value)
    except ValueError:
        minutes = -1.0
    if not 0 <= minutes < 10**6:
        raise ConfigError(
            f"{ENV_MAX_SEAL_LAG} must be a number of minutes (0 or more), not {value!r}; fix "
            "it or unset it for the default of 15."
        )
    return timedelta(minutes=minutes)


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
    holders = describe_holders(conn, open_xids)
    starts = conn.execute(_OPEN_SINCE, (open_xids,)).fetchall()
    if any(r["xact_start"] is None for r in starts):
        return Horizon(floor, allocated, tuple(open_xids), holders)
    cutoff = min(r["xact_start"] for r in starts) - START_MARGIN
    row = conn.execute(
        "SELECT max(id) AS m FROM public.audit_events "
        "WHERE id > %s AND id <= %s AND created_at < %s",
        (floor, allocated, cutoff),
    ).fetchone()
    return Horizon(max(floor, row["m"] or floor), allocated, tuple(open_xids), holders)


ENV_SEAL_INTERVAL = "HARDENING_SEAL_INTERVAL_SECONDS"
DEFAULT_SEAL_INTERVAL_SECONDS = 60


def seal_interval_seconds(environ: Mapping[str, str] = os.environ) -> int:
    """How often the Dagster sensor seals (``HARDENING_SEAL_INTERVAL_SECONDS``): the unsealed
    window a superuser's rewrite can hide in."""
    value = environ.get(ENV_SEAL_INTERVAL, "").strip()
    if not value:
        return DEFAULT_SEAL_INTERVAL_SECONDS
    if not value.isdigit() or not 5 <= int(value) <= 3600:
        raise ConfigError(
            f"{ENV_SEAL_INTERVAL} must be a whole number of seconds from 5 to 3600, not "
            f"{value!r}; fix it or unset it for the default of 60."
        )
    return int(value)
