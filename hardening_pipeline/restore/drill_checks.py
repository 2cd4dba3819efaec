"""The drill checks: the guarantees must come back with the data, proved on the restored copy.

Each check tries to break one guarantee on the restored database: another tenant's rows, no
tenant at all, ``anon``, rewriting the audit log (in replica mode, where ordinary triggers are
skipped), a message pointing at another tenant's unit, and a write through TenantScopedClient
that must leave exactly its audit rows. They are package code, not a pytest suite, so the drill
runs from an installed wheel without ``tests/`` and without the test dependencies.

The probe rows and probe tenants the checks write are built in ``restore/drill_probe_rows.py``.

A check passes only when it could look and the guarantee held; a database that cannot be checked
(a probe row no value fits, named by table and column; a connection error) fails it.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import psycopg
from psycopg import errors

from hardening_pipeline.db.connection import connect
from hardening_pipeline.db.tenant_scoped_client import TenantScopedClient
from hardening_pipeline.restore.drill_probe_rows import (
    PROBE_ACTOR,
    CheckRefuted,
    ProbeRows,
    add_probe_tenant,
    first_line,
    first_unit,
    message_on_unit,
    probe_tenants,
)


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
    with connect(url) as conn, probe_tenants(conn) as probe:
        sees_own = "messages" in tables_scoped_by_kit_policy(conn)
        for tenant in probe.tenants:
            with conn.transaction(force_rollback=True):
                _as_tenant(conn, tenant)
                seen = conn.execute("SELECT DISTINCT tenant_id FROM messages").fetchall()
            visible = [r["tenant_id"] for r in seen]
            if (visible != [tenant]) if sees_own else any(t != tenant for t in visible):
                raise CheckRefuted(
                    f"as authenticated in tenant {tenant}, messages of tenants "
                    f"{sorted(str(t) for t in visible)} are visible{probe.note}"
                )
    count = len(probe.tenants)
    if sees_own:
        return f"{count} tenants each see only their own messages{probe.note}"
    return (
        f"{count} tenants see no other tenant's messages (the app's policies decide own)"
        f"{probe.note}"
    )


def no_tenant_context_sees_nothing(url: str) -> str:
    with connect(url) as conn, probe_tenants(conn) as probe:
        total = conn.execute("SELECT count(*) AS n FROM messages").fetchone()["n"]
        with conn.transaction(force_rollback=True):
            conn.execute("SET LOCAL ROLE authenticated")
            visible = conn.execute("SELECT count(*) AS n FROM messages").fetchone()["n"]
    if visible:
        raise CheckRefuted(
            f"authenticated without a tenant sees {visible} of {total} messages{probe.note}"
        )
    return f"authenticated without a tenant sees 0 of {total} messages{probe.note}"


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


def _unit_key(conn: psycopg.Connection, name: str | None) -> bool:
    """Whether ``name`` is a foreign key of messages that covers its unit_id column."""
    found = conn.execute(
        "SELECT 1 FROM pg_catalog.pg_constraint c JOIN pg_catalog.pg_attribute a "
        "ON a.attrelid = c.conrelid AND a.attnum = ANY (c.conkey) "
        "WHERE c.conrelid = 'public.messages'::regclass AND c.contype = 'f' "
        "AND c.conname = %s AND a.attname = 'unit_id'",
        (name,),
    ).fetchone()
    return found is not None


def cross_tenant_message_is_refused(url: str) -> str:
    """A message of one tenant on another tenant's unit; the composite key must refuse it.

    The same probe on the tenant's own unit must be accepted first, so a refusal proves the key
    on the unit and not a probe row the table would refuse anyway.
    """
    with connect(url) as conn, probe_tenants(conn) as probe:
        a, b = probe.tenants
        theirs = first_unit(conn, b)
        if theirs is None:
            raise CheckRefuted(f"tenant {b} has messages but no units{probe.note}")
        own = first_unit(conn, a) or probe.rows.insert(("public", "units"), {}, a)
        messages = ("public", "messages")
        try:
            with conn.transaction(force_rollback=True):
                probe.rows.insert(messages, message_on_unit(a, own), a)
        except psycopg.Error as exc:
            raise CheckRefuted(
                f"a probe message of tenant {a} on its own unit was refused, so the cross-tenant "
                f"probe would prove nothing: {first_line(exc)}"
            ) from exc
        try:
            with conn.transaction(force_rollback=True):
                probe.rows.insert(messages, message_on_unit(a, theirs), a)
        except errors.ForeignKeyViolation as exc:
            key = exc.diag.constraint_name
            if not _unit_key(conn, key):
                raise CheckRefuted(
                    f"the message of tenant {a} on a unit of tenant {b} was refused by {key}, "
                    f"not by a key on its unit{probe.note}"
                ) from exc
            return (
                f"a message of one tenant pointing at another tenant's unit is refused ({key})"
                f"{probe.note}"
            )
    raise CheckRefuted(f"a message of tenant {a} was accepted on a unit of tenant {b}{probe.note}")


def _client_tenant(conn: psycopg.Connection) -> uuid.UUID | None:
    """A restored tenant for the client's write: one with messages first, else any."""
    row = conn.execute(
        "SELECT t.id FROM tenants t ORDER BY EXISTS "
        "(SELECT 1 FROM messages m WHERE m.tenant_id = t.id) DESC, t.id LIMIT 1"
    ).fetchone()
    conn.rollback()
    return None if row is None else row["id"]


@contextlib.contextmanager
def _committed_probe_tenant(conn: psycopg.Connection) -> Iterator[uuid.UUID]:
    """A synthetic probe tenant other connections see (the client opens its own), removed after.

    Only for a restored copy without any tenant; its text columns carry ``drill-probe-``.
    """
    with conn.transaction():
        conn.execute("SELECT set_config('app.actor', %s, true)", (PROBE_ACTOR,))
        tenant = add_probe_tenant(ProbeRows(conn), with_rows=False)
    try:
        yield tenant
    finally:
        with contextlib.suppress(psycopg.Error), conn.transaction():
            conn.execute("SELECT set_config('app.actor', %s, true)", (PROBE_ACTOR,))
            conn.execute("DELETE FROM tenants WHERE id = %s", (tenant,))  # refused-write probe


def client_writes_are_audited(url: str) -> str:
    with connect(url) as conn:
        restored = _client_tenant(conn)
        if restored is not None:
            return _audited_client_write(conn, url, restored)
        with _committed_probe_tenant(conn) as tenant:
            detail = _audited_client_write(conn, url, tenant)
    return f"{detail} (a synthetic probe tenant, removed after)"


def _audited_client_write(conn: psycopg.Connection, url: str, tenant: uuid.UUID) -> str:
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
    conn.rollback()
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
