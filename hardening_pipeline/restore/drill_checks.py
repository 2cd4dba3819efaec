"""The drill checks: the guarantees must come back with the data, proved on the restored copy.

Each check tries to break one guarantee on the restored database: another tenant's rows, no
tenant at all, ``anon``, rewriting the audit log (in replica mode, where ordinary triggers are
skipped), a message pointing at another tenant's unit, and a write through TenantScopedClient
that must leave exactly its audit rows. They are package code, not a pytest suite, so the drill
runs from an installed wheel without ``tests/`` and without the test dependencies.

A check passes only when it could look and the guarantee held; a database that cannot be
checked (fewer than two tenants with messages, a connection error) fails it.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import psycopg
from psycopg import errors

from hardening_pipeline.db.connection import connect
from hardening_pipeline.db.tenant_scoped_client import TenantScopedClient


class CheckRefuted(Exception):
    """The guarantee a drill check tried to break did not hold; the message says how."""


@dataclass(frozen=True)
class CheckOutcome:
    """One drill check on the restored database."""

    name: str
    passed: bool
    detail: str
    seconds: float


@dataclass
class DrillChecksRun:
    """Every drill check's outcome, in the order they ran."""

    outcomes: list[CheckOutcome] = field(default_factory=list)

    @property
    def passed(self) -> int:
        return sum(o.passed for o in self.outcomes)

    @property
    def failed(self) -> int:
        return len(self.outcomes) - self.passed

    @property
    def output(self) -> str:
        """One line per check and a summary line, for the drill report."""
        lines = [
            f"{'PASSED' if o.passed else 'FAILED'} {o.name}: {o.detail}" for o in self.outcomes
        ]
        lines.append(f"{self.passed} passed, {self.failed} failed")
        return "\n".join(lines)


def _expect_refused(
    conn: psycopg.Connection,
    error: type[psycopg.Error],
    statements: list[str],
    what: str,
) -> None:
    """Run ``statements`` in a rolled-back transaction; they must fail with ``error``."""
    try:
        with conn.transaction(force_rollback=True):
            for statement in statements:
                conn.execute(statement.encode())
    except error:
        return
    except psycopg.Error as exc:
        raise CheckRefuted(
            f"{what} failed with {type(exc).__name__} instead of {error.__name__}: "
            f"{str(exc).strip().splitlines()[0]}"
        ) from exc
    raise CheckRefuted(f"{what} succeeded; it must be refused")


def _two_tenants(conn: psycopg.Connection) -> list[uuid.UUID]:
    rows = conn.execute(
        "SELECT tenant_id FROM messages GROUP BY tenant_id ORDER BY tenant_id LIMIT 2"
    ).fetchall()
    conn.rollback()
    if len(rows) < 2:
        raise CheckRefuted("the restored database holds fewer than two tenants with messages")
    return [r["tenant_id"] for r in rows]


def _as_tenant(conn: psycopg.Connection, tenant: uuid.UUID) -> None:
    conn.execute("SET LOCAL ROLE authenticated")
    conn.execute("SELECT set_config('app.tenant_id', %s, true)", (str(tenant),))


# Tables where a permissive kit policy grants the tenant its own rows through app.tenant_id. On
# a table the kit adopted, its policy is RESTRICTIVE: what a tenant may see is the app's own
# policies' business (JWT, memberships), and the kit only promises that no foreign row shows.
_KIT_SCOPED_TABLES = """
SELECT DISTINCT c.relname
FROM pg_catalog.pg_policy p
JOIN pg_catalog.pg_class c ON c.oid = p.polrelid
WHERE c.relnamespace = 'public'::regnamespace AND p.polpermissive
  AND pg_catalog.pg_get_expr(p.polqual, p.polrelid) ~ 'hardening\\.current_tenant_ids?\\('
"""


def tables_scoped_by_kit_policy(conn: psycopg.Connection) -> set[str]:
    """The public tables whose own rows a tenant sees through the kit's permissive policy."""
    return {r["relname"] for r in conn.execute(_KIT_SCOPED_TABLES).fetchall()}


def each_tenant_sees_only_its_rows(url: str) -> str:
    with connect(url) as conn:
        tenants = _two_tenants(conn)
        sees_own = "messages" in tables_scoped_by_kit_policy(conn)
        for tenant in tenants:
            with conn.transaction(force_rollback=True):
                _as_tenant(conn, tenant)
                seen = conn.execute("SELECT DISTINCT tenant_id FROM messages").fetchall()
            visible = [r["tenant_id"] for r in seen]
            if (visible != [tenant]) if sees_own else any(t != tenant for t in visible):
                raise CheckRefuted(
                    f"as authenticated in tenant {tenant}, messages of tenants "
                    f"{sorted(str(t) for t in visible)} are visible"
                )
    if sees_own:
        return f"{len(tenants)} tenants each see only their own messages"
    return f"{len(tenants)} tenants see no other tenant's messages (the app's policies decide own)"


def no_tenant_context_sees_nothing(url: str) -> str:
    with connect(url) as conn, conn.transaction(force_rollback=True):
        conn.execute("SET LOCAL ROLE authenticated")
        visible = conn.execute("SELECT count(*) AS n FROM messages").fetchone()["n"]
    if visible:
        raise CheckRefuted(f"authenticated without a tenant sees {visible} messages")
    return "authenticated without a tenant sees 0 messages"


def anon_reads_nothing(url: str) -> str:
    with connect(url) as conn:
        _expect_refused(
            conn,
            errors.InsufficientPrivilege,
            ["SET LOCAL ROLE anon", "SELECT 1 FROM messages LIMIT 1"],
            "reading messages as anon",
        )
    return "anon is refused on messages"


# Rewrites of the audit log the restored database must refuse, whoever sends them.
AUDIT_REWRITES = {
    "update": "UPDATE audit_events SET actor = 'x'",  # refused-write probe
    "delete": "DELETE FROM audit_events",  # refused-write probe
    "truncate": "TRUNCATE audit_events",  # refused-write probe
}


def _audit_statement_refused(statement: str) -> Callable[[str], str]:
    def check(url: str) -> str:
        with connect(url) as conn:
            _expect_refused(
                conn,
                errors.InsufficientPrivilege,
                ["SET LOCAL session_replication_role = replica", statement],
                f"{statement} in replica mode",
            )
        return f"{statement} refused, even in replica mode"

    return check


# A message of one tenant on another tenant's unit; the composite key must refuse it.
CROSS_TENANT_MESSAGE = (
    "INSERT INTO messages (tenant_id, development_id, unit_id, sender, body)"  # refused-write probe
    " VALUES (%s, %s, %s, 'drill', 'x')"
)


def cross_tenant_message_is_refused(url: str) -> str:
    with connect(url) as conn:
        a, b = _two_tenants(conn)
        unit = conn.execute(
            "SELECT id, development_id FROM units WHERE tenant_id = %s LIMIT 1", (b,)
        ).fetchone()
        conn.rollback()
        if unit is None:
            raise CheckRefuted(f"tenant {b} has messages but no units")
        try:
            with conn.transaction(force_rollback=True):
                conn.execute("SELECT set_config('app.actor', 'drill', true)")
                conn.execute(CROSS_TENANT_MESSAGE, (a, unit["development_id"], unit["id"]))
        except errors.ForeignKeyViolation:
            return "a message of one tenant pointing at another tenant's unit is refused"
    raise CheckRefuted(f"a message of tenant {a} was accepted on a unit of tenant {b}")


def client_writes_are_audited(url: str) -> str:
    with connect(url) as conn:
        tenant = _two_tenants(conn)[0]
        before = conn.execute("SELECT coalesce(max(id), 0) AS m FROM audit_events").fetchone()["m"]
        # Through RLS where the kit's policy grants the tenant its rows; else as a service job.
        mode = (
            "authenticated"
            if "onboarding_attempts" in tables_scoped_by_kit_policy(conn)
            else ("service_role")
        )
        conn.rollback()
        client = TenantScopedClient(url, actor="drill:smoke", mode=mode)
        with client.transaction(tenant) as tx:
            row = tx.insert("onboarding_attempts", {"email": "drill@example.com"})
            tx.delete("onboarding_attempts", where={"id": row["id"]})
        events = conn.execute(
            "SELECT operation, actor, tenant_id FROM audit_events WHERE id > %s ORDER BY id",
            (before,),
        ).fetchall()
    got = [(e["operation"], e["actor"], e["tenant_id"]) for e in events]
    wanted = [("INSERT", client.actor, tenant), ("DELETE", client.actor, tenant)]
    if got != wanted:
        raise CheckRefuted(f"a client insert and delete left audit rows {got}, not {wanted}")
    return "a client insert and delete left one audit row each, with the actor and tenant"


def audit_triggers_are_enabled_always(url: str) -> str:
    with connect(url) as conn:
        # The kit's triggers (functions in the hardening schema); the app's own keep their state.
        rows = conn.execute(
            "SELECT c.relname, t.tgname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "
            "JOIN pg_proc p ON p.oid = t.tgfoid "
            "WHERE NOT t.tgisinternal AND t.tgenabled <> 'A' "
            "AND p.pronamespace = 'hardening'::regnamespace ORDER BY 1, 2"
        ).fetchall()
        kit_triggers = conn.execute(
            "SELECT count(*) AS n FROM pg_trigger t JOIN pg_proc p ON p.oid = t.tgfoid "
            "WHERE p.pronamespace = 'hardening'::regnamespace"
        ).fetchone()["n"]
    if rows:
        names = ", ".join(f"{r['tgname']} on {r['relname']}" for r in rows)
        raise CheckRefuted(f"triggers not ENABLE ALWAYS (replica mode skips them): {names}")
    if kit_triggers == 0:
        raise CheckRefuted("the restored database has none of the kit's audit triggers")
    return f"all {kit_triggers} of the kit's triggers are ENABLE ALWAYS"


DRILL_CHECKS: dict[str, Callable[[str], str]] = {
    "each_tenant_sees_only_its_rows": each_tenant_sees_only_its_rows,
    "no_tenant_context_sees_nothing": no_tenant_context_sees_nothing,
    "anon_reads_nothing": anon_reads_nothing,
    "audit_log_refuses_update": _audit_statement_refused(AUDIT_REWRITES["update"]),
    "audit_log_refuses_delete": _audit_statement_refused(AUDIT_REWRITES["delete"]),
    "audit_log_refuses_truncate": _audit_statement_refused(AUDIT_REWRITES["truncate"]),
    "cross_tenant_message_is_refused": cross_tenant_message_is_refused,
    "client_writes_are_audited": client_writes_are_audited,
    "audit_triggers_are_enabled_always": audit_triggers_are_enabled_always,
}


def run_drill_checks(url: str) -> DrillChecksRun:
    """Run every drill check against the restored database at ``url``; never raises."""
    run = DrillChecksRun()
    for name, check in DRILL_CHECKS.items():
        started = time.perf_counter()
        try:
            passed, detail = True, check(url)
        except CheckRefuted as exc:
            passed, detail = False, str(exc)
        except Exception as exc:  # a check that cannot look is a failed check, not a crash
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            passed, detail = False, f"could not check: {type(exc).__name__}: {first}"
        run.outcomes.append(CheckOutcome(name, passed, detail, time.perf_counter() - started))
    return run
