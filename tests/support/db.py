"""Database helpers for tests: a session server, a migrated template, and role switching."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import psycopg
from psycopg import errors, sql
from psycopg.rows import dict_row

from hardening_pipeline.db.connection import drop_database as drop_named_database
from hardening_pipeline.db.connection import with_database

# A foreign key refusing a write: PostgreSQL 18 reports ON DELETE/UPDATE RESTRICT as
# restrict_violation (23001), older majors and every other refusal as foreign_key_violation.
FK_REFUSED = (errors.ForeignKeyViolation, errors.RestrictViolation)


def admin_connect(url: str, autocommit: bool = False) -> psycopg.Connection:
    return psycopg.connect(url, autocommit=autocommit, row_factory=dict_row)


def create_database(server_url: str, template: str | None = None) -> str:
    """Create a uniquely named database (optionally cloned from ``template``); returns its URL."""
    name = f"t_{uuid.uuid4().hex[:16]}"
    with admin_connect(server_url, autocommit=True) as conn:
        if template:
            conn.execute(
                sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                    sql.Identifier(name), sql.Identifier(template)
                )
            )
        else:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return with_database(server_url, name)


def drop_database(server_url: str, url: str) -> None:
    drop_named_database(server_url, psycopg.conninfo.conninfo_to_dict(url)["dbname"])


@contextlib.contextmanager
def acting_as(
    conn: psycopg.Connection,
    role: str | None,
    *,
    tenant: uuid.UUID | str | None = None,
    actor: str | None = None,
    jwt_claims: str | None = None,
) -> Iterator[psycopg.Connection]:
    """One transaction as ``role`` (None = the connecting superuser) with the given context.

    The transaction is rolled back afterwards so each block starts from the same data.
    """
    with conn.transaction(force_rollback=True):
        if role:
            conn.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(role)))
        if tenant is not None:
            conn.execute("SELECT set_config('app.tenant_id', %s, true)", (str(tenant),))
        if actor is not None:
            conn.execute("SELECT set_config('app.actor', %s, true)", (actor,))
        if jwt_claims is not None:
            conn.execute("SELECT set_config('request.jwt.claims', %s, true)", (jwt_claims,))
        yield conn


@dataclass
class TenantData:
    tenant: uuid.UUID
    development: uuid.UUID
    unit: uuid.UUID
    message: uuid.UUID
    onboarding: uuid.UUID


def insert_tenant(conn: psycopg.Connection, slug: str) -> TenantData:
    """Insert one tenant with a development, unit, message and onboarding attempt (superuser)."""
    ids = TenantData(*(uuid.uuid4() for _ in range(5)))
    with conn.transaction():
        conn.execute("SELECT set_config('app.actor', 'test:fixture', true)")
        conn.execute(
            "INSERT INTO tenants (id, slug, name) VALUES (%s, %s, %s)",
            (ids.tenant, slug, slug.title()),
        )
        conn.execute(
            "INSERT INTO developments (id, tenant_id, name) VALUES (%s, %s, 'Harbour View')",
            (ids.development, ids.tenant),
        )
        conn.execute(
            "INSERT INTO units (id, tenant_id, development_id, label) VALUES (%s, %s, %s, '1A')",
            (ids.unit, ids.tenant, ids.development),
        )
        conn.execute(
            "INSERT INTO messages (id, tenant_id, development_id, unit_id, sender, body) "
            "VALUES (%s, %s, %s, %s, 'resident', 'The heating is off')",
            (ids.message, ids.tenant, ids.development, ids.unit),
        )
        conn.execute(
            "INSERT INTO onboarding_attempts (id, tenant_id, email, status) "
            "VALUES (%s, %s, 'ops@example.com', 'succeeded')",
            (ids.onboarding, ids.tenant),
        )
    return ids


def set_service_role_mode(conn: psycopg.Connection, mode: str) -> None:
    """Put the database's service-role rule in ``mode`` directly (superuser), and commit."""
    conn.execute("UPDATE hardening.service_role_mode SET mode = %s", (mode,))
    conn.commit()


def ensure_nologin_role(conn: psycopg.Connection, name: str, member_of: str | None = None) -> None:
    """Create the NOLOGIN role ``name`` (in role ``member_of``) unless it exists already."""
    create = sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(name))
    if member_of:
        create = sql.SQL("{} IN ROLE {}").format(create, sql.Identifier(member_of))
    conn.execute(
        sql.SQL(
            "DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = {}) THEN {}; "
            "END IF; END $$"
        ).format(sql.Literal(name), create)
    )


def write_tenants(conn: psycopg.Connection, tenants: int = 1) -> list[int]:
    """Commit ``tenants`` new tenants (5 audited rows each); returns the new audit ids."""
    before = conn.execute("SELECT coalesce(max(id), 0) AS m FROM audit_events").fetchone()["m"]
    for _ in range(tenants):
        insert_tenant(conn, f"t-{uuid.uuid4().hex[:10]}")
    rows = conn.execute("SELECT id FROM audit_events WHERE id > %s ORDER BY id", (before,))
    return [r["id"] for r in rows.fetchall()]
