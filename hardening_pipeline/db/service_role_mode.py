"""The service-role rule's mode (``report`` or ``enforce``), and proof of it from the database.

The rule (002, 012): a write as ``service_role`` to a tenant table must carry the wrapper's actor
(``app.actor``, which ``TenantScopedClient`` sets). In ``enforce`` mode the audit guard refuses
any write without one; in ``report`` mode it lets the write through, audits it as
``service_role:unattributed`` and notes where it came from in ``hardening.unattributed_writes``,
so a team adopting the kit can find and fix its callers before switching to ``enforce``.

The mode is a one-row table only the migration role can change; this module reads and sets it
and, for the evidence run, tries a raw service-role write in a rolled-back transaction to show
what the database really does.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

import psycopg
from psycopg import errors, sql

from hardening_pipeline.db.connection import connect, table_exists
from hardening_pipeline.errors import ConfigError

Mode = Literal["report", "enforce"]
MODES: tuple[Mode, ...] = ("report", "enforce")
UNATTRIBUTED_ACTOR = "service_role:unattributed"
# The form of a service_role actor the audit guard accepts (015); anything else is no actor.
SERVICE_ROLE_ACTOR_PATTERN = re.compile(r"service_role:[A-Za-z0-9._:@/+#=-]{1,200}")
# Said wherever a noted source is shown: every part of it is set by the writing session itself.
SOURCE_IS_CLAIMED = (
    "the source (application_name, client header, JWT role) is what the writer chose to send, "
    "not verified: a lead to the caller, not its identity"
)
# How far back a switch to enforce looks for callers it would start refusing.
DEFAULT_LOOKBACK_DAYS = 7
MODE_TABLE = "hardening.service_role_mode"


@dataclass(frozen=True)
class ModeState:
    mode: Mode
    set_at: datetime
    set_by: str
    reason: str


@dataclass(frozen=True)
class UnattributedSource:
    """One caller that wrote as service_role without an actor: where from, what, how often."""

    application_name: str
    jwt_role: str | None
    client_info: str | None
    table_name: str
    operation: str
    writes: int
    last_seen: datetime

    def describe(self) -> str:
        app = self.application_name or "(no application_name)"
        jwt = f"JWT role {self.jwt_role}" if self.jwt_role else "no JWT"
        client = f", client {self.client_info}" if self.client_info else ""
        return (
            f"claimed by the writer as {app} ({jwt}{client}): {self.writes} {self.operation} "
            f"statement(s) on {self.table_name}, last {self.last_seen:%Y-%m-%d %H:%M} UTC"
        )


@dataclass(frozen=True)
class ModeChange:
    previous: ModeState
    current: ModeState
    # Unattributed callers of the look-back that enforce would now refuse.
    sources: list[UnattributedSource]
    changed: bool


def read_mode(conn: psycopg.Connection) -> ModeState | None:
    """The mode in force, or None when 012 has not been applied yet."""
    if not table_exists(conn, MODE_TABLE):
        return None
    row = conn.execute(
        "SELECT mode, set_at, set_by, reason FROM hardening.service_role_mode"
    ).fetchone()
    if row is None:
        return None
    return ModeState(row["mode"], row["set_at"], row["set_by"], row["reason"])


def unattributed_sources(
    conn: psycopg.Connection, days: int = DEFAULT_LOOKBACK_DAYS, since: datetime | None = None
) -> list[UnattributedSource]:
    """Unattributed service-role writes of the last ``days`` days (and not before ``since``),
    grouped by where from."""
    if not table_exists(conn, "hardening.unattributed_writes"):
        return []
    rows = conn.execute(
        """
        SELECT application_name, jwt_role, client_info, table_name, operation,
               count(*) AS writes, max(created_at) AS last_seen
        FROM hardening.unattributed_writes
        WHERE created_at >= now() - make_interval(days => %s)
          AND (%s::timestamptz IS NULL OR created_at >= %s::timestamptz)
        GROUP BY application_name, jwt_role, client_info, table_name, operation
        ORDER BY writes DESC, application_name, table_name, operation
        """,
        (days, since, since),
    ).fetchall()
    return [UnattributedSource(**r) for r in rows]


def _require_mode(conn: psycopg.Connection) -> ModeState:
    try:
        with conn.transaction():
            state = read_mode(conn)
    except errors.InsufficientPrivilege as exc:
        raise ConfigError(
            "this role may not read the service-role mode; connect as the role that ran the "
            "migrations (HARDENING_DATABASE_URL)."
        ) from exc
    if state is None:
        raise ConfigError(
            "this database has no service-role mode yet; run `hardening migrate` to apply "
            "012_service_role_mode.sql."
        )
    return state


def current_mode(url: str) -> tuple[ModeState, list[UnattributedSource]]:
    """The mode and the last week's unattributed callers, for ``hardening service-role-mode``;
    in enforce mode only those after the switch (the earlier ones are what it stopped)."""
    with connect(url) as conn:
        state = _require_mode(conn)
        since = state.set_at if state.mode == "enforce" else None
        return state, unattributed_sources(conn, since=since)


def change_mode(
    url: str,
    mode: str,
    *,
    force: bool = False,
    days: int = DEFAULT_LOOKBACK_DAYS,
) -> ModeChange:
    """Set the mode. Switching to enforce with unattributed callers in the look-back changes
    nothing unless ``force``: the result's ``sources`` names them and ``changed`` is False.
    """
    if mode not in MODES:
        raise ConfigError(f"unknown service-role mode {mode!r}; use one of: {', '.join(MODES)}.")
    with connect(url) as conn, conn.transaction():
        previous = _require_mode(conn)
        # Lock the row so two switches cannot interleave between the check and the update.
        conn.execute("SELECT 1 FROM hardening.service_role_mode FOR UPDATE")
        sources = unattributed_sources(conn, days) if mode == "enforce" else []
        if previous.mode == mode or (sources and not force):
            return ModeChange(previous, previous, sources, False)
        reason = f"set to {mode} by `hardening service-role-mode`" + (
            " with --force" if sources else ""
        )
        try:
            conn.execute(
                "UPDATE hardening.service_role_mode "
                "SET mode = %s, set_at = now(), set_by = current_user, reason = %s",
                (mode, reason),
            )
        except errors.InsufficientPrivilege as exc:
            raise ConfigError(
                "only the role that ran the migrations may change the service-role mode; "
                "connect as that role (HARDENING_DATABASE_URL)."
            ) from exc
        return ModeChange(previous, _require_mode(conn), sources, True)


# --- evidence: what the database does with a raw service-role write ---------------------------


@dataclass(frozen=True)
class ServiceRoleProof:
    """The outcome of one raw service-role write attempted in a rolled-back transaction."""

    mode: str | None
    table: str | None
    statement: str
    refused: bool
    error: str

    @property
    def passed(self) -> bool:
        return self.mode == "enforce" and self.refused

    def describe(self) -> str:
        if self.table is None:
            return f"not tried: {self.error}"
        outcome = (
            f"refused ({self.error})"
            if self.refused
            else f"went through ({self.error or 'no error'})"
        )
        return (
            f"mode {self.mode or 'unknown'}; as service_role without an actor, "
            f"`{self.statement}` {outcome}; rolled back"
        )


_TARGET_TABLES = """
    SELECT c.relname
    FROM pg_catalog.pg_class c
    JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
    JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attname = 'tenant_id'
        AND NOT a.attisdropped
    WHERE c.relkind IN ('r', 'p') AND n.nspname = 'public' AND c.relname <> 'audit_events'
    ORDER BY c.relname = 'messages' DESC, c.relname
    LIMIT 1
"""


def prove_service_role_rule(conn: psycopg.Connection) -> ServiceRoleProof:
    """Try a raw ``service_role`` UPDATE (no actor, no JWT) on a tenant table and roll it back.

    The UPDATE sets a row's tenant_id to itself, so even if it goes through nothing changes, and
    the transaction is rolled back either way. It is refused only if the audit guard refuses it:
    any other error (a missing grant, say) is reported as such, not as the rule holding.
    """
    mode_state = read_mode(conn)
    mode = mode_state.mode if mode_state else None
    found = conn.execute(_TARGET_TABLES).fetchone()
    if found is None:
        return ServiceRoleProof(mode, None, "", False, "no tenant-scoped table in public")
    table = found["relname"]
    statement = sql.SQL(
        "UPDATE public.{t} SET tenant_id = tenant_id "
        "WHERE ctid = (SELECT ctid FROM public.{t} LIMIT 1)"
    ).format(t=sql.Identifier(table))
    shown = statement.as_string(conn)
    refused, error = False, ""
    with conn.transaction(force_rollback=True):
        conn.execute("SELECT set_config('app.actor', '', true)")
        conn.execute("SELECT set_config('request.jwt.claims', '', true)")
        try:
            with conn.transaction():
                conn.execute("SET LOCAL ROLE service_role")
                cur = conn.execute(statement)
                error = f"{cur.rowcount} row(s) updated"
        except psycopg.Error as exc:
            message = (exc.diag.message_primary or str(exc)).strip()
            refused = "without an actor is refused" in message
            error = message
    return ServiceRoleProof(mode, f"public.{table}", shown, refused, error)
