"""The status report's model: its lines, the report, what checks get, and how they run.

A check is a function in one of the family modules of this package, registered with ``@check``
under its line name and title; its SQL lives in ``sql/status/`` (``catalog.query_rows``). The
report lists the lines in ``CHECKLIST`` order, whatever module a check sits in, so the order (and
with it every runbook anchor, ``status-<name>``) is stated once, here.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import psycopg

from hardening_pipeline.db.connection import connect, table_exists
from hardening_pipeline.db.migrations import MIGRATIONS_DIR
from hardening_pipeline.errors import HardeningError

if TYPE_CHECKING:
    from hardening_pipeline.backup.crypto import Keyring
    from hardening_pipeline.backup.store import BackupStore


@dataclass(frozen=True)
class CheckLine:
    """One guarantee: green or red, why, and (when red) how to fix it."""

    name: str
    passed: bool
    detail: str
    fix: str = ""
    title: str = ""

    @property
    def runbook_anchor(self) -> str:
        return "status-" + self.name.replace("_", "-")


@dataclass(frozen=True)
class StatusReport:
    """Every line of one run, with when and against what it ran."""

    lines: list[CheckLine]
    started_at: datetime
    seconds: float
    database: str
    migrations_dir: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return all(line.passed for line in self.lines)

    @property
    def red(self) -> list[CheckLine]:
        return [line for line in self.lines if not line.passed]

    def as_dict(self) -> dict:
        return {
            "passed": self.passed,
            "started_at": self.started_at.isoformat(timespec="seconds"),
            "seconds": round(self.seconds, 3),
            "database": self.database,
            "migrations_dir": self.migrations_dir,
            "red": [line.name for line in self.red],
            "lines": [
                asdict(line) | {"runbook_anchor": line.runbook_anchor} for line in self.lines
            ],
        }


@dataclass(frozen=True)
class CheckContext:
    """What the checks need besides the connection.

    ``store`` and ``keyring`` are optional: given, the audit seal line also compares the
    database's seals with their MAC'd copies in the backup store and checks every MAC.
    """

    migrations_dir: Path = MIGRATIONS_DIR
    store: BackupStore | None = None
    keyring: Keyring | None = None
    # The sealing host's anchor file (HARDENING_STATE_DIR/audit-seal-anchor.json), if any.
    seal_anchor: Path | None = None
    # A restored copy's erased tenants' audit rows (missing): id -> recorded seal hash.
    erased_rows: Mapping[int, bytes] = field(default_factory=dict)


# The lines of the report, in the order it shows them.
CHECKLIST: tuple[str, ...] = (
    "migrations_applied",
    "messages_unit_id_not_null",
    "foreign_keys_restrict",
    "tenant_consistency_keys",
    "audit_append_only_guard",
    "audit_capture_triggers",
    "adopted_tables_policies_narrow",
    "tenant_resolver_not_user_writable",
    "audit_events_no_write_grants",
    "audit_ddl_recorded",
    "audit_seal_chain",
    "tenant_key_ledger",
    "service_role_rule_enforced",
    "rls_tenant_tables",
    "rls_disabled_in_public",
    "policy_exists_rls_disabled",
    "rls_enabled_no_policy",
    "no_anon_or_public_policies",
    "no_anon_grants",
    "api_roles_no_trigger_or_truncate",
    "tenant_id_indexed",
    "auth_rls_initplan",
    "multiple_permissive_policies",
    "tenant_policies_constrain_rows",
    "no_rules_on_tenant_tables",
    "tenant_isolation_probe",
    "function_search_path_fixed",
    "function_search_path_mutable",
    "security_definer_view",
    "anon_security_definer_function_executable",
    "authenticated_security_definer_function_executable",
    "tenant_views_security_invoker",
    "api_roles_reach_no_tenant_data",
    "audit_owner_unreachable",
    "kit_objects_closed_to_api_roles",
    "pg_catalog_untouched",
)
CheckFn = Callable[[psycopg.Connection, CheckContext], CheckLine]
# (name, title, check) in CHECKLIST order, filled as the family modules register their checks.
CHECKS: list[tuple[str, str, CheckFn]] = []


def check(name: str, title: str) -> Callable[[Callable], CheckFn]:
    """Register a check under its line name; ``CHECKLIST`` says where its line goes."""
    if name not in CHECKLIST:
        raise ValueError(f"status line {name!r} is not in CHECKLIST")

    def register(fn: Callable) -> CheckFn:
        def run(conn: psycopg.Connection, ctx: CheckContext) -> CheckLine:
            passed, detail, fix = fn(conn, ctx)
            return CheckLine(name, passed, detail, "" if passed else fix, title)

        run.__name__ = fn.__name__
        run.__doc__ = fn.__doc__
        CHECKS.append((name, title, run))
        CHECKS.sort(key=lambda registered: CHECKLIST.index(registered[0]))
        return run

    return register


def describe_database(url: str) -> str:
    """Host and database name for the report, never the password."""
    try:
        info = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "(unparseable URL)"
    host = info.get("host") or "localhost"
    if host.startswith("/"):
        host = "local socket"
    return f"{info.get('dbname') or info.get('user') or '?'} on {host}:{info.get('port') or 5432}"


def run_checks(
    conn: psycopg.Connection, ctx: CheckContext | None = None, names: Sequence[str] | None = None
) -> list[CheckLine]:
    """Run the checks in checklist order; a check that errors is a red line, not a crash."""
    ctx = ctx or CheckContext()
    lines = []
    for name, title, fn in CHECKS:
        if names is not None and name not in names:
            continue
        try:
            with conn.transaction():  # a savepoint: one broken check does not abort the rest
                lines.append(fn(conn, ctx))
        except (psycopg.Error, HardeningError, RuntimeError, OSError, ValueError) as exc:
            lines.append(
                CheckLine(
                    name,
                    False,
                    f"check could not run: {type(exc).__name__}: {str(exc).strip()[:300]}",
                    "fix the error above (is the database migrated? is the role a superuser or "
                    "the schema owner?) and run the status check again.",
                    title,
                )
            )
    return lines


def run_status_check(
    url: str,
    migrations_dir: Path = MIGRATIONS_DIR,
    *,
    store: BackupStore | None = None,
    keyring: Keyring | None = None,
    seal_anchor: Path | None = None,
    erased_rows: Mapping[int, bytes] | None = None,
) -> StatusReport:
    """Run every check in one read-only transaction against ``url``.

    ``store``/``keyring`` let the audit seal line check the store copies and MACs too;
    ``seal_anchor`` (a path, used when the file exists) is the newest seal it must reach.
    """
    started_at = datetime.now(UTC)
    started = time.perf_counter()
    ctx = CheckContext(
        migrations_dir=migrations_dir,
        store=store,
        keyring=keyring,
        seal_anchor=seal_anchor,
        erased_rows=erased_rows or {},
    )
    with connect(url) as conn:
        conn.read_only = True
        with conn.transaction():
            conn.execute("SELECT set_config('statement_timeout', '30s', true)")
            # A login that may not read the kit's schema is misconfigured, not a red report.
            table_exists(conn, "hardening.schema_migrations")
            lines = run_checks(conn, ctx)
    return StatusReport(
        lines=lines,
        started_at=started_at,
        seconds=time.perf_counter() - started,
        database=describe_database(url),
        migrations_dir=str(migrations_dir),
    )
