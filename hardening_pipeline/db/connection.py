"""Where the database is and how to open a connection to it."""

from __future__ import annotations

import re
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from hardening_pipeline.db.embedded import embedded_database_url
from hardening_pipeline.db.pg_installs import SUPPORTED_MAJORS
from hardening_pipeline.errors import ConfigError
from hardening_pipeline.settings import Settings


def resolve_database_url(settings: Settings) -> str:
    """The configured database, or the embedded one (started on demand) when none is set."""
    if settings.database_url:
        return settings.database_url
    return embedded_database_url(settings.state_dir)


def connect(url: str, *, autocommit: bool = False, **kwargs: Any) -> psycopg.Connection:
    """Open a connection that returns rows as dicts, with a clear error when it cannot."""
    try:
        conn = psycopg.connect(
            url, autocommit=autocommit, row_factory=dict_row, connect_timeout=10, **kwargs
        )
    except psycopg.OperationalError as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(
            f"could not connect to the database ({reason}); check HARDENING_DATABASE_URL "
            "and that the server is running."
        ) from exc
    try:
        require_supported_server(conn.info.server_version)
    except ConfigError:
        conn.close()
        raise
    return conn


def require_supported_server(server_version_num: int) -> None:
    """Refuse a server older than the oldest supported major, before anything is read or written.

    Only the supported majors are proven (``tests/test_pg_versions.py``); older ones differ in
    what the guarantees rest on (PUBLIC's CREATE on ``public`` before 15, for one), and a
    hardening that half applies is worse than a clear refusal.
    """
    oldest = min(SUPPORTED_MAJORS)
    if server_version_num // 10000 < oldest:
        version = f"{server_version_num // 10000}.{server_version_num % 10000}"
        raise ConfigError(
            f"the database runs PostgreSQL {version}, older than the oldest supported "
            f"PostgreSQL {oldest}; upgrade the server to {oldest} or newer (on Supabase: "
            "Project Settings, Infrastructure, Upgrade) and run the command again."
        )


def missing_privilege(conn: psycopg.Connection, exc: psycopg.Error) -> ConfigError:
    """One sentence for a login that may not read what the kit keeps: which role, what it lacks."""
    reason = (exc.diag.message_primary or str(exc)).strip()
    schema = re.fullmatch(r"permission denied for schema (\S+)", reason)
    lacks = f"USAGE on schema {schema[1]}" if schema else f"a privilege the kit needs ({reason})"
    return ConfigError(
        f"the role {conn.info.user} lacks {lacks}; set HARDENING_DATABASE_URL to the role that "
        "ran `hardening migrate` (the database owner; on Supabase, postgres) and run the "
        "command again."
    )


def table_exists(conn: psycopg.Connection, qualified_name: str) -> bool:
    """Whether ``schema.table`` exists: lets readers tell "not migrated yet" from "empty"."""
    try:
        row = conn.execute("SELECT pg_catalog.to_regclass(%s) IS NOT NULL AS e", (qualified_name,))
    except psycopg.errors.InsufficientPrivilege as exc:
        raise missing_privilege(conn, exc) from exc
    return bool(row.fetchone()["e"])


def with_database(url: str, dbname: str) -> str:
    """The same server, another database (for clones, templates and drills)."""
    return psycopg.conninfo.make_conninfo(url, dbname=dbname)


def drop_database(server_url: str, name: str) -> None:
    """Drop a scratch database, disconnecting whoever still uses it."""
    with connect(server_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


def recreate_database(server_url: str, name: str) -> str:
    """An empty scratch database called ``name`` on the same server (dropped first if present)."""
    drop_database(server_url, name)
    with connect(server_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return with_database(server_url, name)
