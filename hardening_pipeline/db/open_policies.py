"""Policies that apply to ``anon`` or PUBLIC, and which of them guard tenant data.

``004_rls_lockdown.sql`` stops when any policy in ``public`` applies to anon or PUBLIC, so that a
policy meant for signed-in members does not keep tenant data open. A policy like that on a table
without tenant data (Supabase's own template: "Public profiles are viewable by everyone." on
``profiles``) is what the app means, and 004 changes nothing on such a table. 004 is released and
keeps its check, so the runner sets those policies aside for the length of 004's transaction
and puts them back as they were (``set_aside_for_lockdown``, ``put_back``): no other session
ever sees the difference. The plan, the fix SQL and the status line use the same rule.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import psycopg
from psycopg.rows import tuple_row

LOCKDOWN_MIGRATION = "004_rls_lockdown.sql"

# Tenant data, as 004 finds it: a table in public with a tenant_id column, or public.tenants.
_OPEN_POLICIES = """
    SELECT format('%I ON %I.%I', p.polname, n.nspname, c.relname) AS target,
           ARRAY(SELECT CASE WHEN r = 0 THEN 'PUBLIC'
                             ELSE quote_ident(pg_catalog.pg_get_userbyid(r)) END
                 FROM unnest(p.polroles) r ORDER BY 1) AS roles,
           (c.relname = 'tenants' OR EXISTS (
               SELECT 1 FROM pg_catalog.pg_attribute a
               WHERE a.attrelid = c.oid AND a.attname = 'tenant_id' AND NOT a.attisdropped))
               AS tenant_data
    FROM pg_catalog.pg_policy p
    JOIN pg_catalog.pg_class c ON c.oid = p.polrelid
    JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
    WHERE n.nspname = 'public'
      AND (0::oid = ANY (p.polroles)
           OR (SELECT oid FROM pg_catalog.pg_roles WHERE rolname = 'anon') = ANY (p.polroles))
    ORDER BY 1
"""


@dataclass(frozen=True)
class OpenPolicy:
    """A policy in ``public`` that applies to anon or PUBLIC (names already quoted)."""

    target: str  # "policy" ON schema.table
    roles: tuple[str, ...]
    tenant_data: bool

    def alter_to(self, roles: Sequence[str]) -> str:
        return f"ALTER POLICY {self.target} TO {', '.join(roles)}"


def open_policies(conn: psycopg.Connection) -> list[OpenPolicy]:
    """Every policy in ``public`` that applies to anon or PUBLIC, tenant data or not."""
    cur = conn.cursor(row_factory=tuple_row)
    return [
        OpenPolicy(target, tuple(roles), bool(tenant_data))
        for target, roles, tenant_data in cur.execute(_OPEN_POLICIES).fetchall()
    ]


def set_aside_for_lockdown(conn: psycopg.Connection, role: str) -> list[OpenPolicy]:
    """Inside the caller's transaction, hide from 004 the open policies outside tenant data.

    Each is narrowed to ``role`` until ``put_back`` runs in the same transaction, so the database
    never commits or shows the narrowed form (a failed 004 rolls the narrowing back with it). A
    policy ``role`` may not alter stays as it is, and 004 names it as before; any other error
    (a lock timeout) is the caller's to report.
    """
    cur = conn.cursor(row_factory=tuple_row)
    quoted_role = cur.execute("SELECT quote_ident(%s)", (role,)).fetchone()[0]
    narrowed = []
    for policy in open_policies(conn):
        if policy.tenant_data:
            continue
        try:
            with conn.transaction():
                conn.execute(policy.alter_to([quoted_role]))
        except psycopg.errors.InsufficientPrivilege:
            continue
        narrowed.append(policy)
    return narrowed


def put_back(conn: psycopg.Connection, narrowed: Sequence[OpenPolicy]) -> None:
    """Give each policy ``set_aside_for_lockdown`` narrowed its roles back."""
    for policy in narrowed:
        conn.execute(policy.alter_to(policy.roles))
