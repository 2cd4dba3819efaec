"""How the database's policies find the current tenant, and what the kit changed on adoption.

The resolver lives in the database (``hardening.tenant_resolver``, one row, read by
``hardening.current_tenant_ids()`` once per statement), not in an environment variable: every
connection, PostgREST's included, must see the same rule. Two kinds:

- ``claim``: the first of one or more dotted paths present in ``request.jwt.claims``
  (default ``tenant_id`` then ``app_metadata.tenant_id``); never one under ``user_metadata``,
  which each user writes for themselves;
- ``membership``: every tenant of the JWT's ``sub`` (what ``auth.uid()`` returns) in a membership
  table, so a user in two tenants sees both. The lookup runs as the querying role, through the
  table's own grants and RLS (a user must be able to read their own membership rows).

JWT claims, when present, always win over ``app.tenant_id``; a value that is not a uuid, or claims
that are not a JSON object, resolve to no tenant (the kit's policies see nothing, nothing raises).
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass

import psycopg

from hardening_pipeline.db.connection import connect, table_exists
from hardening_pipeline.errors import ConfigError

_CLAIM_PATH = re.compile(r"^[A-Za-z0-9_:-]+(\.[A-Za-z0-9_:-]+)*$")
# Claims every signed-in user writes for themselves: Supabase's auth.updateUser({data}) sets
# user_metadata, and it reaches the JWT as it is. A tenant read from there is one the user chose.
USER_WRITABLE_CLAIMS = ("user_metadata",)
SAFE_CLAIM_HINT = (
    "use app_metadata (e.g. app_metadata.tenant_id), which only the service key can write"
)
_TENANT_TYPES = ("uuid", "text", "character varying")


@dataclass(frozen=True)
class TenantResolver:
    """The one row of ``hardening.tenant_resolver``."""

    kind: str
    claim_paths: list[str]
    membership_table: str | None
    user_column: str | None
    tenant_column: str | None

    def describe(self) -> str:
        if self.kind == "claim":
            return "claim " + ", then ".join(self.claim_paths)
        return (
            f"membership {self.membership_table} ({self.user_column} = JWT sub, "
            f"tenant {self.tenant_column})"
        )


def user_writable_paths(paths: Collection[str]) -> list[str]:
    """The claim paths a user can set in their own JWT (under ``USER_WRITABLE_CLAIMS``)."""
    return [p for p in paths if p.split(".", 1)[0].lower() in USER_WRITABLE_CLAIMS]


@dataclass(frozen=True)
class AdoptionChange:
    """One row of ``hardening.adoption_log``: a change the kit made to an object it found."""

    id: int
    migration: str
    object: str
    action: str
    detail: str


def _require_resolver_table(conn: psycopg.Connection) -> None:
    if not table_exists(conn, "hardening.tenant_resolver"):
        raise ConfigError(
            "the database has no hardening.tenant_resolver yet; run hardening migrate first."
        )


def read_resolver(url: str) -> TenantResolver:
    """The resolver in force."""
    with connect(url, autocommit=True) as conn:
        _require_resolver_table(conn)
        row = conn.execute(
            "SELECT kind, claim_paths, user_column, tenant_column, "
            "CASE WHEN membership_table IS NOT NULL "
            "THEN format('%I.%I', membership_schema, membership_table) END AS membership_table "
            "FROM hardening.tenant_resolver"
        ).fetchone()
    if row is None:
        raise ConfigError(
            "hardening.tenant_resolver is empty; set it with hardening tenant-resolver claim "
            "tenant_id app_metadata.tenant_id."
        )
    return TenantResolver(**row)


def check_claim_paths(paths: Sequence[str]) -> None:
    """Refuse claim paths the resolver must not use; every way of setting one goes through here."""
    if not paths:
        raise ConfigError("give at least one claim path, e.g. app_metadata.tenant_id.")
    for path in paths:
        if not _CLAIM_PATH.match(path):
            raise ConfigError(
                f"claim path {path!r} is not dot-separated claim names; write it like "
                "app_metadata.tenant_id."
            )
    if writable := user_writable_paths(paths):
        raise ConfigError(
            f"claim path {writable[0]!r} is one every user can edit in their own metadata, so "
            f"they could pick any tenant; {SAFE_CLAIM_HINT}."
        )


def set_claim_resolver(url: str, paths: list[str]) -> TenantResolver:
    """Resolve the tenant from the first of ``paths`` present in the JWT claims."""
    check_claim_paths(paths)
    with connect(url) as conn:
        _require_resolver_table(conn)
        conn.execute(
            "UPDATE hardening.tenant_resolver SET kind = 'claim', claim_paths = %s, "
            "membership_schema = NULL, membership_table = NULL, user_column = NULL, "
            "tenant_column = NULL, updated_at = now()",
            (paths,),
        )
        conn.execute("SELECT hardening.use_tenant_policies(false)")
    return read_resolver(url)


def _column_type(conn: psycopg.Connection, table_oid: int, column: str) -> str | None:
    row = conn.execute(
        "SELECT format_type(atttypid, atttypmod) AS t FROM pg_catalog.pg_attribute "
        "WHERE attrelid = %s AND attname = %s AND attnum > 0 AND NOT attisdropped",
        (table_oid, column),
    ).fetchone()
    return row["t"] if row else None


def set_membership_resolver(
    url: str, table: str, user_column: str, tenant_column: str
) -> TenantResolver:
    """Resolve the tenants as every ``tenant_column`` of ``table`` whose ``user_column`` is sub."""
    schema, _, name = table.rpartition(".")
    schema = schema or "public"
    with connect(url) as conn:
        _require_resolver_table(conn)
        found = conn.execute(
            "SELECT c.oid, c.relkind FROM pg_catalog.pg_class c "
            "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = %s AND c.relname = %s",
            (schema, name),
        ).fetchone()
        if found is None or found["relkind"] not in ("r", "p", "v", "m", "f"):
            raise ConfigError(
                f"membership table {schema}.{name} does not exist; give an existing table as "
                "schema.table (e.g. public.memberships)."
            )
        user_type = _column_type(conn, found["oid"], user_column)
        if user_type is None:
            raise ConfigError(
                f"{schema}.{name} has no column {user_column!r}; give the column holding the "
                "user id (the JWT sub, auth.uid())."
            )
        tenant_type = _column_type(conn, found["oid"], tenant_column)
        if tenant_type is None:
            raise ConfigError(
                f"{schema}.{name} has no column {tenant_column!r}; give the column holding the "
                "tenant id."
            )
        if tenant_type not in _TENANT_TYPES:
            raise ConfigError(
                f"{schema}.{name}.{tenant_column} is {tenant_type}; the tenant column must be "
                "uuid (or text holding uuids)."
            )
        policied = conn.execute(
            "SELECT tenant_policy FROM hardening.managed_tables "
            "WHERE %s = 'public' AND table_name = %s AND tenant_policy IS NOT NULL",
            (schema, name),
        ).fetchone()
        if policied:
            # Its own policy would call the resolver, which would read the table again.
            raise ConfigError(
                f"{schema}.{name} carries the kit's tenant policy {policied['tenant_policy']}, "
                "so it cannot hold the memberships that policy reads; give the app's own "
                "membership table."
            )
        readable = conn.execute(
            "SELECT has_table_privilege('authenticated', %s, 'SELECT') AS ok", (found["oid"],)
        ).fetchone()["ok"]
        if not readable:
            # The lookup runs as the querying role, through the table's own grants and RLS.
            raise ConfigError(
                f"authenticated cannot read {schema}.{name}; GRANT SELECT ON {schema}.{name} "
                "TO authenticated (with an RLS policy letting a user read their own rows)."
            )
        conn.execute(
            "UPDATE hardening.tenant_resolver SET kind = 'membership', membership_schema = %s, "
            "membership_table = %s, user_column = %s, tenant_column = %s, updated_at = now()",
            (schema, name, user_column, tenant_column),
        )
        # A user may belong to several tenants: the policies compare with the set.
        conn.execute("SELECT hardening.use_tenant_policies(true)")
    return read_resolver(url)


def sync_tenant_policies(conn: psycopg.Connection) -> None:
    """Give the kit's policies the form the stored resolver needs (one tenant, or a set).

    The form lives in the policies, the resolver in a table: a restore loads the table's row
    from the backup onto policies the migrations just created, so it calls this afterwards.
    """
    if not table_exists(conn, "hardening.tenant_resolver"):
        return
    conn.execute(
        "SELECT hardening.use_tenant_policies(kind = 'membership') FROM hardening.tenant_resolver"
    )


def adoption_changes(url: str, migrations: Collection[str] | None = None) -> list[AdoptionChange]:
    """What the migrations (all, or the named files) changed on objects the kit did not create."""
    with connect(url, autocommit=True) as conn:
        if not table_exists(conn, "hardening.adoption_log"):
            return []
        rows = conn.execute(
            "SELECT id, migration, object, action, detail FROM hardening.adoption_log "
            "WHERE %(all)s OR migration = ANY(%(names)s) ORDER BY id",
            {"all": migrations is None, "names": list(migrations or [])},
        ).fetchall()
    return [AdoptionChange(**r) for r in rows]


@dataclass(frozen=True)
class ResolverChoice:
    """A resolver as ``hardening tenant-resolver`` takes it, checked before the database is."""

    kind: str
    arguments: tuple[str, ...]

    def describe(self) -> str:
        return " ".join((self.kind, *self.arguments))


_RESOLVER_USAGE = (
    'write it as `hardening tenant-resolver` takes it: "claim PATH..." (e.g. "claim '
    'app_metadata.tenant_id") or "membership TABLE USER_COLUMN TENANT_COLUMN" (e.g. '
    '"membership public.memberships user_id tenant_id")'
)


def parse_resolver_choice(words: Sequence[str]) -> ResolverChoice:
    """The words of ``hardening tenant-resolver claim|membership ...``, checked as that command
    checks them (claim paths through ``check_claim_paths``) but without touching the database.
    """
    kind, *arguments = words or ("",)
    if kind == "claim":
        check_claim_paths(arguments)
    elif kind == "membership":
        if len(arguments) != 3:
            raise ConfigError(f"membership takes a table and two columns; {_RESOLVER_USAGE}.")
    else:
        raise ConfigError(f"unknown tenant resolver {' '.join(words)!r}; {_RESOLVER_USAGE}.")
    return ResolverChoice(kind, tuple(arguments))


def apply_resolver_choice(url: str, choice: ResolverChoice) -> TenantResolver:
    """Set the resolver exactly as ``hardening tenant-resolver`` would."""
    if choice.kind == "claim":
        return set_claim_resolver(url, list(choice.arguments))
    table, user_column, tenant_column = choice.arguments
    return set_membership_resolver(url, table, user_column, tenant_column)


RESOLVER_MIGRATION = "011_tenant_resolver_and_adoption.sql"


def resolver_lines(migrations: Iterable[str], choice: ResolverChoice | None) -> list[str]:
    """What the run does about the tenant resolver, when it is the one that creates it.

    011 starts with the claim resolver, which gives a JWT with only a ``sub`` no tenant: on an
    app whose policies read a membership table, every signed-in user would see no rows until
    the resolver is set, so the plan and ``migrate`` say so, or say what will be set instead.
    """
    if choice is not None:
        return [f"tenant resolver: set to {choice.describe()} right after the migrations"]
    if RESOLVER_MIGRATION not in migrations:
        return []
    return [
        "tenant resolver: the default (claim tenant_id, then app_metadata.tenant_id); until you "
        "set another, a signed-in user whose JWT carries neither claim (only a sub) sees no rows "
        "in the tenant tables. If your policies read a membership table, migrate with "
        "--tenant-resolver 'membership public.memberships user_id tenant_id' (your table and "
        "columns), or run hardening tenant-resolver right after."
    ]
