"""Which tables hold tenant rows: every table with a ``tenant_id`` column, in any app schema.

Found, not listed, so a table added tomorrow (or one the app keeps in its own ``billing`` schema
rather than ``public``) is held to the same rules. Left out are the schemas that are not the
app's: Postgres' own, the ones Supabase manages (the API roles reach them only through
Supabase's own code) and the kit's; so are tables an extension owns. Status, the migration that
locks such tables down (``019_tenant_tables_every_schema.sql``, whose ``hardening.tenant_schema()``
mirrors ``NOT_APP_SCHEMAS``), the DDL record, the backup's split per tenant and
``restore --tenant`` all read this one answer.
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

SYSTEM_SCHEMAS = (
    "pg_catalog",
    "information_schema",
    "pg_toast",
    # Supabase-managed schemas: splinter leaves them to Supabase, so do we.
    "auth",
    "storage",
    "realtime",
    "extensions",
    "graphql",
    "graphql_public",
    "pgbouncer",
    "vault",
    "supabase_functions",
    "supabase_migrations",
    "net",
    "pgsodium",
    "pgsodium_masks",
    "cron",
)
# The kit's own tables (the seals, the job locks) are not the app's tenant data.
KIT_SCHEMAS = ("hardening",)
# Schemas whose tables are never the app's tenant tables; ``pg_*`` (temporary schemas, TOAST)
# are left out by pattern as well.
NOT_APP_SCHEMAS = SYSTEM_SCHEMAS + KIT_SCHEMAS

TENANT_COLUMN = "tenant_id"

# public.tenants is its own tenant (by id) when asked for; every other table by tenant_id.
_TENANT_TABLES = """
    SELECT c.oid, n.nspname AS schema, c.relname AS name,
           pg_catalog.format('%%I.%%I', n.nspname, c.relname) AS quoted,
           a.attname AS tenant_column,
           pg_catalog.format_type(a.atttypid, NULL) AS tenant_type
    FROM pg_catalog.pg_class c
    JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
    JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND NOT a.attisdropped
        AND (a.attname = %(column)s
             OR (%(tenants)s AND c.oid = pg_catalog.to_regclass('public.tenants')
                 AND a.attname = 'id'))
    WHERE c.relkind IN ('r', 'p')
      AND NOT (n.nspname = ANY (%(excluded)s)) AND n.nspname NOT LIKE 'pg\\_%%'
      AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d
                      WHERE d.classid = 'pg_catalog.pg_class'::regclass AND d.objid = c.oid
                        AND d.deptype = 'e')
    ORDER BY n.nspname = 'public' DESC, n.nspname, c.relname
"""


def is_app_schema(schema: str) -> bool:
    """Whether tables of ``schema`` can be the app's tenant tables (the query's filter)."""
    return schema not in NOT_APP_SCHEMAS and not schema.startswith("pg_")


def display_name(schema: str, name: str) -> str:
    """How reports and the backup name a table: bare in ``public``, ``schema.table`` elsewhere."""
    return name if schema == "public" else f"{schema}.{name}"


@dataclass(frozen=True)
class TenantTable:
    """One table with a ``tenant_id`` column."""

    oid: int
    schema: str
    name: str
    quoted: str  # schema.table quoted the way the server would (safe to paste into SQL)
    tenant_column: str
    tenant_type: str

    @property
    def display(self) -> str:
        return display_name(self.schema, self.name)

    def identifier(self) -> sql.Identifier:
        return sql.Identifier(self.schema, self.name)


def find_tenant_tables(
    conn: psycopg.Connection, *, with_tenants: bool = False
) -> list[TenantTable]:
    """Every table with a ``tenant_id`` column outside ``NOT_APP_SCHEMAS``, ``public`` first.

    ``with_tenants`` adds ``public.tenants`` itself (keyed by ``id``), which is locked down,
    captured and backed up per tenant like the others.
    """
    params = {"column": TENANT_COLUMN, "tenants": with_tenants, "excluded": list(NOT_APP_SCHEMAS)}
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(_TENANT_TABLES, params).fetchall()
    return [TenantTable(**row) for row in rows]


def tenant_schemas(conn: psycopg.Connection) -> list[str]:
    """The schemas holding at least one tenant table, in the order ``find_tenant_tables`` gives."""
    return list(dict.fromkeys(t.schema for t in find_tenant_tables(conn)))
