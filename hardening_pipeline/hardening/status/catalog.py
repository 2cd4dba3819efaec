"""What several status checks read: the queries in ``sql/status``, tenant tables, API roles.

Each query is one file named for what it selects, read once; a check runs it with
``query_rows(conn, "<file name>", params)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache

import psycopg
from psycopg import sql

from hardening_pipeline.db.tenant_tables import SYSTEM_SCHEMAS, TenantTable, find_tenant_tables
from hardening_pipeline.sql_files import STATUS_QUERIES_DIR

SCHEMA = "public"
API_ROLES = ("anon", "authenticated")
# Objects initdb created have OIDs below FirstNormalObjectId.
FIRST_NORMAL_OID = 16384
INVOKER_OPTION = "security_invoker=(t|tr|tru|true|y|ye|yes|on|1)"


@cache
def status_query(name: str) -> str:
    """The text of ``sql/status/<name>.sql``."""
    return (STATUS_QUERIES_DIR / f"{name}.sql").read_text()


def query_rows(
    conn: psycopg.Connection, name: str, params: Sequence | dict | None = None
) -> list[dict]:
    """The rows of the query in ``sql/status/<name>.sql``."""
    return conn.execute(status_query(name), params).fetchall()


def listed(items: Sequence[str], limit: int = 8) -> str:
    """The first ``limit`` items, comma-separated, and how many more there are."""
    shown = ", ".join(items[:limit])
    return shown + (f" (+{len(items) - limit} more)" if len(items) > limit else "")


def locked_tables(conn: psycopg.Connection) -> list[TenantTable]:
    # tenants has no tenant_id (it is the tenant) but is locked down the same way.
    return find_tenant_tables(conn, with_tenants=True)


def oids(tables: Sequence[TenantTable]) -> list[int]:
    return [t.oid for t in tables]


def sql_literal(conn: psycopg.Connection, value: str) -> str:
    return sql.Literal(value).as_string(conn)


def relation_oid(conn: psycopg.Connection, qualified: str) -> int:
    """The table's oid, or 0 (matches nothing) when it does not exist."""
    row = conn.execute("SELECT coalesce(to_regclass(%s)::oid, 0) AS oid", (qualified,)).fetchone()
    return int(row["oid"])


def require_api_roles(conn: psycopg.Connection) -> None:
    roles = {r["rolname"] for r in conn.execute("SELECT rolname FROM pg_catalog.pg_roles")}
    if not set(API_ROLES) <= roles:
        # has_*_privilege on a missing role raises; this is not a Supabase-style database.
        raise RuntimeError("roles anon and authenticated are missing; apply 001_core_schema.sql")


def table_row_security(conn: psycopg.Connection) -> list[dict]:
    """Every app table's RLS state, policies, tenant column and API grants."""
    require_api_roles(conn)
    return query_rows(conn, "tables_row_security", (list(SYSTEM_SCHEMAS),))


def all_policies(conn: psycopg.Connection) -> list[dict]:
    """Every policy outside the system schemas, its roles and expressions as SQL."""
    return query_rows(conn, "policies", (list(SYSTEM_SCHEMAS),))


def views_over_tenant_tables(conn: psycopg.Connection) -> list[dict]:
    """Views and materialized views that read a tenant table, directly or through other views."""
    require_api_roles(conn)
    return query_rows(
        conn,
        "views_over_tenant_tables",
        {
            "tables": oids(locked_tables(conn)),
            "invoker": f"^{INVOKER_OPTION}$",
            "roles": list(API_ROLES),
            "system": list(SYSTEM_SCHEMAS),
        },
    )
