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
import secrets
from collections.abc import Iterator

import psycopg
from psycopg import sql

from hardening_pipeline.db.connection import connect

VERIFIER = "hardening_drill_verifier"
_ROLES = ("pg_read_all_data", "anon", "authenticated", "service_role")
# What the append-only probes need so that the guard trigger, not a missing grant, refuses them.
_AUDIT_WRITES = "GRANT INSERT, UPDATE, DELETE, TRUNCATE ON public.audit_events TO {}"


@contextlib.contextmanager
def verifier_login(admin_url: str) -> Iterator[str]:
    """Yield a conninfo for the verifier on the database at ``admin_url`` (a superuser's)."""
    password = secrets.token_urlsafe(24)
    role = sql.Identifier(VERIFIER)
    with connect(admin_url, autocommit=True) as conn:
        exists = conn.execute(
            "SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = %s", (VERIFIER,)
        ).fetchone()
        verb = "ALTER" if exists else "CREATE"
        conn.execute(
            sql.SQL(
                "{} ROLE {} LOGIN NOSUPERUSER NOCREATEROLE NOCREATEDB BYPASSRLS PASSWORD {}"
            ).format(sql.SQL(verb), role, sql.Literal(password))
        )
        present = conn.execute(
            "SELECT rolname FROM pg_catalog.pg_roles WHERE rolname = ANY(%s)", (list(_ROLES),)
        ).fetchall()
        for row in present:
            conn.execute(sql.SQL("GRANT {} TO {}").format(sql.Identifier(row["rolname"]), role))
        conn.execute(sql.SQL("GRANT SET ON PARAMETER session_replication_role TO {}").format(role))
    try:
        yield psycopg.conninfo.make_conninfo(admin_url, user=VERIFIER, password=password)
    finally:
        with connect(admin_url, autocommit=True) as conn:
            conn.execute(sql.SQL("ALTER ROLE {} NOLOGIN PASSWORD NULL").format(role))


def allow_audit_probes(admin_url: str) -> None:
    """Let the verifier try the writes the audit log must refuse (after the status check ran:
    its ``audit_events_no_write_grants`` line would rightly call these grants red)."""
    with connect(admin_url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT pg_catalog.to_regclass('public.audit_events') IS NOT NULL AS present"
        ).fetchone()
        if row["present"]:
            conn.execute(sql.SQL(_AUDIT_WRITES).format(sql.Identifier(VERIFIER)))
