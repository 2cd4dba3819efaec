"""Job locks that application roles cannot take: row locks on ``hardening.job_locks``.

An advisory lock key is open to every role that can connect, so a hostile or buggy client could
hold the backup's or the seal's key and stop those jobs. Locking a row ``FOR UPDATE`` needs
UPDATE on the table, which 013_job_locks grants to nobody but its owner. A lock lives as long as
the transaction that took it, and a busy lock is reported with who holds it.
"""

from __future__ import annotations

import psycopg
from psycopg import errors, pq
from psycopg.rows import tuple_row

from hardening_pipeline.db.connection import table_exists
from hardening_pipeline.errors import CheckFailed, ConfigError

JOB_LOCKS_TABLE = "hardening.job_locks"

_TAKE_NOWAIT = "SELECT job FROM hardening.job_locks WHERE job = %s FOR UPDATE NOWAIT"
_TAKE = "SELECT job FROM hardening.job_locks WHERE job = %s FOR UPDATE"
# The holder's transaction id is the locked row's xmax; pg_stat_activity names its session.
_HOLDER = """
SELECT a.pid, a.usename AS role, a.application_name, a.xact_start
FROM hardening.job_locks l
JOIN pg_catalog.pg_stat_activity a ON a.backend_xid = l.xmax
WHERE l.job = %s
"""


class JobLockBusy(CheckFailed):
    """Another run holds the job's lock; nothing was done."""


def job_locks_available(conn: psycopg.Connection) -> bool:
    """Whether this database has 013's lock table (older databases keep advisory locks)."""
    return table_exists(conn, JOB_LOCKS_TABLE)


def describe_holder(conn: psycopg.Connection, job: str) -> str:
    """Who holds ``job``'s lock, for the error message (read without waiting for it)."""
    with conn.cursor(row_factory=tuple_row) as cur:
        row = cur.execute(_HOLDER, (job,)).fetchone()
    if row is None:
        return "a session that has just finished or is not visible to this role"
    pid, role, application, started = row
    since = f", since {started:%Y-%m-%d %H:%M:%S %Z}" if started else ""
    return f"pid {pid}, role {role}, application_name {application or '(none)'!r}{since}"


def take_job_lock(conn: psycopg.Connection, job: str, *, lock_timeout_ms: int | None) -> None:
    """Lock ``job`` in ``conn``'s open transaction; raise ``JobLockBusy`` naming the holder.

    ``lock_timeout_ms=None`` means do not wait at all (NOWAIT). The lock is released when the
    transaction ends, so the caller keeps the transaction open for the length of the job.
    """
    if conn.autocommit and conn.info.transaction_status == pq.TransactionStatus.IDLE:
        raise ValueError("take_job_lock needs a connection inside a transaction")
    try:
        with conn.transaction():  # a savepoint: a refused lock leaves the transaction usable
            if lock_timeout_ms is None:
                locked = conn.execute(_TAKE_NOWAIT, (job,)).fetchall()
            else:
                conn.execute(
                    "SELECT set_config('lock_timeout', %s, true)", (f"{lock_timeout_ms}ms",)
                )
                locked = conn.execute(_TAKE, (job,)).fetchall()
                conn.execute("SELECT set_config('lock_timeout', '0', true)")
    except errors.LockNotAvailable as exc:  # NOWAIT and lock_timeout both raise 55P03
        holder = describe_holder(conn, job)
        raise JobLockBusy(
            f"another {job} of this database is running ({holder}); wait for it to finish, or "
            f"if that session is stuck end it with SELECT pg_terminate_backend(<pid>)."
        ) from exc
    if not locked:  # no row, no lock: refuse rather than run unserialised
        fix = "INSERT INTO hardening.job_locks (job) VALUES ('" + job + "')"  # noqa: S608 (a text)
        raise ConfigError(
            f"hardening.job_locks has no row for the {job} job, so it cannot be serialised; put "
            f"it back as the migration role: {fix}."
        )
