"""The login that checks a restored copy: it reads everything and is never a superuser.

After the rows are in, the drill reads every table, the catalog and the status lines, and its
checks write probe rows through the app's triggers and policies. All of that runs the backup's
code: a view's functions, a trigger, a policy, a kit function the backup may have replaced. In a
superuser's session that code could ``RESET ROLE`` and reach the drill host. So the checks run
as ``hardening_drill_verifier``: it may read every row (``pg_read_all_data``, ``BYPASSRLS``),
become the API roles for its probes, and switch ``session_replication_role`` (to prove the
append-only guard fires in replica mode); it may not run programs, touch server files or
create roles.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from psycopg import sql

from hardening_pipeline.db.connection import connect
from hardening_pipeline.restore.owners import OwnerSessions

VERIFIER = "hardening_drill_verifier"
_ROLES = ("pg_read_all_data", "anon", "authenticated", "service_role")
# What the append-only probes need so that the guard trigger, not a missing grant, refuses them.
_AUDIT_WRITES = "GRANT INSERT, UPDATE, DELETE, TRUNCATE ON public.audit_events TO {}"


@contextlib.contextmanager
def verifier_login(admin_url: str) -> Iterator[str]:
    """Yield a conninfo for the verifier on the database at ``admin_url`` (a superuser's).

    The login itself (a one-off password, taken back afterwards, and the refusal of a role
    with rights beyond the database) is the owners' (``restore/owners.py``).
    """
    role = sql.Identifier(VERIFIER)
    with connect(admin_url, autocommit=True) as conn:
        exists = conn.execute(
            "SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = %s", (VERIFIER,)
        ).fetchone()
        verb = "ALTER" if exists else "CREATE"
        conn.execute(
            sql.SQL("{} ROLE {} NOLOGIN NOSUPERUSER NOCREATEROLE NOCREATEDB BYPASSRLS").format(
                sql.SQL(verb), role
            )
        )
        present = conn.execute(
            "SELECT rolname FROM pg_catalog.pg_roles WHERE rolname = ANY(%s)", (list(_ROLES),)
        ).fetchall()
        for row in present:
            conn.execute(sql.SQL("GRANT {} TO {}").format(sql.Identifier(row["rolname"]), role))
        conn.execute(sql.SQL("GRANT SET ON PARAMETER session_replication_role TO {}").format(role))
    logins = OwnerSessions(admin_url)
    try:
        yield logins.url(VERIFIER)
    finally:
        logins.close()


def allow_audit_probes(admin_url: str) -> None:
    """Let the verifier try the writes the audit log must refuse (after the status check ran:
    its ``audit_events_no_write_grants`` line would rightly call these grants red)."""
    with connect(admin_url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT pg_catalog.to_regclass('public.audit_events') IS NOT NULL AS present"
        ).fetchone()
        if row["present"]:
            conn.execute(sql.SQL(_AUDIT_WRITES).format(sql.Identifier(VERIFIER)))
