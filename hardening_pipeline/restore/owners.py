"""Sessions logged in as the roles that own a backup's objects, on a restore target.

A restore runs the backup's SQL (its schema's entries) and the app's code (defaults, CHECK
functions, index expressions) while rows load. In a superuser's session, ``SET ROLE`` or ``SET
SESSION AUTHORIZATION`` is no boundary: the code it runs can ``RESET`` back. So each owner gets
a session of its own, authenticated as that role, with a password made for this restore only:
whatever runs there has exactly that role's rights, as it had on the source. A role that is a
superuser on the target, or may run programs or touch the server's files, is refused: a backup's
code must not get those rights by being restored.
"""

from __future__ import annotations

import contextlib
import secrets
import threading
from collections.abc import Iterator

import psycopg
from psycopg import sql

from hardening_pipeline.db.connection import connect
from hardening_pipeline.errors import HardeningError

# Predefined roles that reach outside the database, and CREATEROLE, which on PostgreSQL 15 can
# grant them.
_OUTSIDE_ROLES = ("pg_execute_server_program", "pg_read_server_files", "pg_write_server_files")
_DANGEROUS = """
SELECT r.rolsuper, r.rolcreaterole,
       ARRAY(SELECT p FROM unnest(%(outside)s::text[]) AS p
             WHERE pg_catalog.pg_has_role(r.oid, p, 'USAGE')) AS outside
FROM pg_catalog.pg_roles r WHERE r.rolname = %(role)s
"""


class OwnerRefused(HardeningError):
    """An owner role would run the backup's code with more rights than a restore allows."""


class OwnerSessions:
    """One session per owner role on the database at ``url`` (reached as a superuser).

    Roles are given LOGIN and a random password for the restore and put back as they were on
    ``close``. Sessions start with ``search_path`` empty, as ``pg_restore`` sets it.
    """

    def __init__(self, admin_url: str) -> None:
        self._admin_url = admin_url
        self._passwords: dict[str, str] = {}
        self._restore: list[tuple[str, bool]] = []
        # Restore workers ask for the same owner at once; one ALTER ROLE each.
        self._lock = threading.Lock()

    def check(self, role: str) -> None:
        """Refuse ``role`` if it has rights beyond the database on this target."""
        with connect(self._admin_url, autocommit=True) as conn:
            row = conn.execute(
                _DANGEROUS, {"outside": list(_OUTSIDE_ROLES), "role": role}
            ).fetchone()
        if row is None:
            return
        why = (
            "a superuser"
            if row["rolsuper"]
            else "allowed to create roles"
            if row["rolcreaterole"]
            else f"a member of {', '.join(row['outside'])}"
            if row["outside"]
            else None
        )
        if why:
            raise OwnerRefused(
                f"the backup's objects are owned by {role}, which is {why} on the restore "
                "target, so its code would run with those rights; restore into a throwaway "
                "Postgres (leave --target-dsn unset) or a server where that role is ordinary."
            )

    def url(self, role: str) -> str:
        """A conninfo that logs in as ``role`` (checked, and given LOGIN for this restore)."""
        with self._lock:
            return self._url(role)

    def _url(self, role: str) -> str:
        if role not in self._passwords:
            self.check(role)
            password = secrets.token_urlsafe(24)
            with connect(self._admin_url, autocommit=True) as conn:
                could = conn.execute(
                    "SELECT rolcanlogin FROM pg_catalog.pg_roles WHERE rolname = %s", (role,)
                ).fetchone()
                if could is None:
                    raise OwnerRefused(f"the restore target has no role {role}.")
                conn.execute(
                    sql.SQL("ALTER ROLE {} LOGIN PASSWORD {}").format(
                        sql.Identifier(role), sql.Literal(password)
                    )
                )
            self._restore.append((role, bool(could["rolcanlogin"])))
            self._passwords[role] = password
        return psycopg.conninfo.make_conninfo(
            self._admin_url, user=role, password=self._passwords[role]
        )

    @contextlib.contextmanager
    def session(self, role: str) -> Iterator[psycopg.Connection]:
        with connect(self.url(role), autocommit=True, client_encoding="UTF8") as conn:
            yield conn

    def close(self) -> None:
        """Take back the logins given for the restore (the roles stay, as the schema needs)."""
        if not self._restore:
            return
        with connect(self._admin_url, autocommit=True) as conn:
            for role, could_login in self._restore:
                conn.execute(
                    sql.SQL("ALTER ROLE {} {} PASSWORD NULL").format(
                        sql.Identifier(role), sql.SQL("LOGIN" if could_login else "NOLOGIN")
                    )
                )
        self._restore.clear()
        self._passwords.clear()
