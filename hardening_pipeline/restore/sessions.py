"""The sessions a schema restore runs a backup's entries in, and the roles they need.

Two ways in. ``OwnerLogins`` (the drill) reaches the target as a superuser that runs nothing the
backup wrote, and runs each entry in a session logged in as the entry's owner
(``restore/owners.py``). ``OneSession`` (``restore --tenant --into``) runs every entry in the one
session the user opened, with exactly the rights the user gave it. Both hand each worker thread
its own set of connections.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

import psycopg
from psycopg import sql

from hardening_pipeline.backup.manifest import SchemaRole
from hardening_pipeline.db.connection import connect
from hardening_pipeline.restore.owners import OwnerSessions

# The predefined role owning ``public`` from PostgreSQL 15; its entries run as the database owner.
DATABASE_OWNER = "pg_database_owner"


def create_missing_roles(conn: psycopg.Connection, roles: Iterable[SchemaRole]) -> list[str]:
    """Create, NOLOGIN, each role the schema refers to that the target lacks; returns them.

    A role without superuser (``restore --into`` as the app's owner) keeps the right to hand
    its objects to the roles it creates: from PostgreSQL 16 that takes SET (and INHERIT, to
    comment on them) on them.
    """
    if conn.info.server_version >= 160000 and not is_superuser(conn):
        conn.execute("SET createrole_self_grant = 'set, inherit'")
    created = []
    for role in roles:
        row = conn.execute("SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = %s", (role.name,))
        if row.fetchone():
            continue
        conn.execute(
            sql.SQL("CREATE ROLE {} NOLOGIN{}").format(
                sql.Identifier(role.name), sql.SQL(" BYPASSRLS" if role.bypassrls else "")
            )
        )
        created.append(role.name)
    return created


def is_superuser(conn: psycopg.Connection) -> bool:
    """Whether the session's current role is a superuser."""
    row = conn.execute(
        "SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user"
    ).fetchone()
    return bool(row and row["rolsuper"])


class OwnerConnections:
    """One thread's sessions on the target, one per owner role, opened when first needed."""

    def __init__(self, owners: OwnerSessions, database_owner: str) -> None:
        self._owners = owners
        self._database_owner = database_owner
        self._open: dict[str, psycopg.Connection] = {}

    def get(self, role: str) -> psycopg.Connection:
        role = self._database_owner if role == DATABASE_OWNER else role
        if role not in self._open:
            conn = connect(self._owners.url(role), autocommit=True, client_encoding="UTF8")
            # Index and key builds sort the whole table; the default 64 MB spills to disk early.
            conn.execute("SET maintenance_work_mem = '256MB'")
            # A drill's target is thrown away if the server crashes: commits (one per table
            # loaded) need not wait for the disk.
            conn.execute("SET synchronous_commit = off")
            self._open[role] = conn
        return self._open[role]

    def close(self) -> None:
        for conn in self._open.values():
            conn.close()
        self._open.clear()


class OwnerLogins:
    """Each owner in a session logged in as itself, on a target reached as a superuser.

    The drill's way (a throwaway server, or one kept for drills): ``admin_url`` creates roles
    and schemas and hands out the owners' logins, and runs nothing the backup wrote.
    ``database_owner`` owns the target database and runs what ``pg_database_owner`` owned on
    the source (the ``public`` schema's grants).
    """

    lends_schemas = True
    lends_references = True
    workers_allowed = True

    def __init__(self, admin_url: str, database_owner: str) -> None:
        self.admin_url = admin_url
        self.database_owner = database_owner
        self._owners = OwnerSessions(admin_url)

    @contextlib.contextmanager
    def admin(self) -> Iterator[psycopg.Connection]:
        with connect(self.admin_url, autocommit=True) as conn:
            yield conn

    def check(self, role: str) -> None:
        self._owners.check(role)

    def connections(self) -> OwnerConnections:
        return OwnerConnections(self._owners, self.database_owner)

    def close(self) -> None:
        self._owners.close()


class OneSessionConnections:
    """The one session, whatever the entry's owner: the user's own role does all of it."""

    def __init__(self, conn: psycopg.Connection) -> None:
        self._conn = conn

    def get(self, role: str) -> psycopg.Connection:
        return self._conn

    def close(self) -> None:
        pass


class OneSession:
    """Every entry in one session of the role the user connected as, inside its transaction.

    The way into a database the user named (``restore --tenant --into``): the kit creates no
    logins on the user's server, so the backup's code runs with exactly the rights the user
    gave, all of it in one transaction that leaves nothing behind when it fails. A superuser
    session is refused by the caller.
    """

    lends_schemas = True
    lends_references = False
    workers_allowed = False

    def __init__(self, conn: psycopg.Connection) -> None:
        self._conn = conn

    @contextlib.contextmanager
    def admin(self) -> Iterator[psycopg.Connection]:
        yield self._conn

    def check(self, role: str) -> None:
        pass

    def connections(self) -> OneSessionConnections:
        return OneSessionConnections(self._conn)

    def close(self) -> None:
        pass
