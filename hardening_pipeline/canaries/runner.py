"""Run the SQL canaries in ``sql/canaries`` and turn their rows into results.

A canary is a plain SQL file a DBA can also run by hand; it returns one row per finding
(``tenant_id, subject, issue_count, sample_ids, detail``) and no rows when all is well. This
module adds what a file cannot say about itself: which table it watches, how bad a finding is,
where the runbook explains it, and the thresholds to run it with.

Every canary runs in its own ``READ ONLY`` transaction with a ``statement_timeout``, so a canary
can neither change data nor hold locks for long, and one that errors or times out is reported as
failed (a canary that cannot look is not a green canary) without stopping the others. Row
security is switched off for the transaction (``row_security = off``): run as a role that RLS
would filter, a canary errors instead of quietly seeing no rows and passing.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Literal

import psycopg

from hardening_pipeline.alerts.runbook import runbook_link
from hardening_pipeline.db.connection import connect
from hardening_pipeline.errors import ConfigError
from hardening_pipeline.sql_files import CANARIES_DIR

Severity = Literal["error", "warn"]
# What a canary's "resolved" message says unless its spec says otherwise.
NOTHING_MORE_TO_DO = "the earlier alert needs no further action"


@dataclass(frozen=True)
class CanarySpec:
    """What the SQL file does not say: the table it watches, its severity and its runbook."""

    name: str
    title: str
    table: str
    severity: Severity
    what_it_means: str
    runbook_anchor: str
    # What the "resolved" message says once the canary is quiet again.
    resolved_meaning: str = NOTHING_MORE_TO_DO
    # What the count counts, in the alert's first line ("3 messages flagged").
    counted: str = ""


# Integrity canaries block (ERROR): a row there is a data leak or lost data. Volume canaries warn:
# they may be a legitimate clean-up or an outage somewhere else, a human has to judge.
CANARIES: dict[str, CanarySpec] = {
    spec.name: spec
    for spec in (
        CanarySpec(
            name="orphaned_messages",
            title="Orphaned messages",
            table="messages",
            severity="error",
            what_it_means="messages point at a unit, development or tenant that does not exist",
            runbook_anchor="canary-orphaned-messages",
        ),
        CanarySpec(
            name="tenant_misalignment",
            title="Tenant misalignment",
            table="messages",
            severity="error",
            what_it_means=(
                "rows carry a different tenant (or development) than their parent, so the wrong "
                "tenant's policies apply to them"
            ),
            runbook_anchor="canary-tenant-misalignment",
        ),
        CanarySpec(
            name="abnormal_delete_volume",
            title="Abnormal delete volume",
            table="audit_events",
            severity="warn",
            what_it_means="a tenant deleted far more rows in the last window than it usually does",
            runbook_anchor="canary-abnormal-delete-volume",
            counted="deletes",
        ),
        CanarySpec(
            name="tenant_table_truncated",
            title="Tenant table truncated",
            table="audit_events",
            severity="error",
            what_it_means=(
                "a tenant-scoped table was truncated: every tenant's rows in it were removed at "
                "once"
            ),
            runbook_anchor="canary-tenant-table-truncated",
            resolved_meaning=(
                "the last TRUNCATE is now older than the look-back. That does not bring its rows "
                "back: if they were not restored yet, follow the runbook"
            ),
            counted="TRUNCATE statements",
        ),
        CanarySpec(
            name="unattributed_service_role_writes",
            title="Unattributed service-role writes",
            table="audit_events",
            severity="warn",
            # Mode-neutral: each finding's detail says what the mode in force did with them.
            what_it_means=(
                "callers wrote to tenant tables as service_role without the wrapper's actor and "
                "the service-role mode in force let them through; the source each finding "
                "names is what the writer chose to send, not a verified identity"
            ),
            runbook_anchor="canary-unattributed-service-role-writes",
            resolved_meaning=(
                "no unattributed service_role write counts any more (in report mode: none in "
                "the look-back, and once none is seen for a week, switch to enforce with "
                "`hardening service-role-mode enforce`; in enforce mode only writes after the "
                "switch count)"
            ),
            counted="unattributed statements",
        ),
        CanarySpec(
            name="failed_onboarding_attempts",
            title="Failed onboarding attempts",
            table="onboarding_attempts",
            severity="warn",
            what_it_means="a tenant's onboarding keeps failing",
            runbook_anchor="canary-failed-onboarding-attempts",
        ),
    )
}


@dataclass(frozen=True)
class CanaryThresholds:
    """Tunable limits, passed to the SQL as transaction-local ``canary.*`` settings.

    The defaults equal the ones written in the SQL files, so a DBA running a file by hand sees
    the same result as the scheduled run.
    """

    delete_window_minutes: int = 60
    delete_baseline_days: int = 7
    delete_min_count: int = 50
    delete_baseline_factor: float = 10.0
    onboarding_window_minutes: int = 60
    onboarding_max_failures: int = 3
    truncate_lookback_hours: int = 168
    unattributed_lookback_hours: int = 24
    sample_size: int = 5
    statement_timeout_ms: int = 30_000

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            minimum = 0 if f.name in ("onboarding_max_failures", "delete_baseline_factor") else 1
            if not isinstance(value, int | float) or isinstance(value, bool) or value < minimum:
                raise ConfigError(
                    f"canary threshold {f.name} must be a number >= {minimum} (got {value!r})."
                )

    def as_settings(self) -> dict[str, str]:
        """The ``canary.*`` settings the SQL files read (the timeout is applied separately)."""
        return {
            f"canary.{f.name}": str(getattr(self, f.name))
            for f in fields(self)
            if f.name != "statement_timeout_ms"
        }


@dataclass(frozen=True)
class CanaryFinding:
    """One row of a canary: what is wrong for one tenant (and table)."""

    tenant_id: str | None
    subject: str
    count: int
    sample_ids: tuple[str, ...]
    detail: str


@dataclass(frozen=True)
class CanaryResult:
    """The outcome of one canary run, ready for a table, an asset check or a Slack alert."""

    name: str
    title: str
    table: str
    severity: Severity
    passed: bool
    findings: tuple[CanaryFinding, ...]
    query: str
    runbook_anchor: str
    what_it_means: str
    seconds: float
    error: str | None = None
    thresholds: dict[str, str] = field(default_factory=dict)
    resolved_meaning: str = NOTHING_MORE_TO_DO
    counted: str = ""

    @property
    def count(self) -> int:
        return sum(f.count for f in self.findings)

    @property
    def tenants(self) -> list[str]:
        seen: dict[str, None] = {}
        for f in self.findings:
            seen.setdefault(f.tenant_id or "(no tenant)", None)
        return list(seen)

    @property
    def samples(self) -> list[str]:
        out: list[str] = []
        for f in self.findings:
            out.extend(i for i in f.sample_ids if i not in out)
        return out[:10]

    @property
    def runbook_link(self) -> str:
        return runbook_link(self.runbook_anchor)

    @property
    def fingerprint(self) -> str:
        """Identifies *which* problem this is, not how big: the affected tenants and tables.

        Counts are left out on purpose: a delete-volume count drifts as its window slides, and
        re-alerting on every drift is the spam dedup exists to prevent. Growth is handled by the
        alert state (it re-alerts when the count exceeds the one last alerted).
        """
        if self.error is not None:
            key: object = ["error", self.error.split(":", 1)[0]]
        else:
            key = sorted({(f.tenant_id or "", f.subject) for f in self.findings})
        blob = json.dumps([self.name, key], separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:32]

    def summary(self) -> str:
        """One line for a table cell or a check description."""
        if self.error is not None:
            return f"could not run: {self.error}"
        if self.passed:
            return "0 found"
        tenants = self.tenants
        return (
            f"{self.count} found in {len(tenants)} tenant(s): {self.what_it_means}; "
            + "; ".join(f"tenant {f.tenant_id or '(none)'}: {f.detail}" for f in self.findings[:3])
            + ("; …" if len(self.findings) > 3 else "")
        )


def load_canary_sql(directory: Path = CANARIES_DIR) -> dict[str, str]:
    """Read ``sql/canaries/*.sql``; a file without a spec (or a spec without a file) is refused.

    Refusing instead of skipping: a canary file nobody wired up would otherwise never run, and
    a silent canary looks exactly like a healthy one.
    """
    if not directory.is_dir():
        raise ConfigError(
            f"the canaries folder {directory} does not exist; reinstall hardening_pipeline "
            "(its wheel ships sql/canaries) or point at a full checkout."
        )
    files = {p.stem: p.read_text(encoding="utf-8") for p in sorted(directory.glob("*.sql"))}
    unknown = sorted(set(files) - set(CANARIES))
    missing = sorted(set(CANARIES) - set(files))
    if unknown or missing:
        problems = []
        if unknown:
            problems.append(f"{', '.join(unknown)} in {directory} not described in CANARIES")
        if missing:
            problems.append(f"{', '.join(missing)} described but no .sql file")
        raise ConfigError(
            f"canary files and specs disagree ({'; '.join(problems)}); add the missing half."
        )
    return files


def _run_one(
    conn: psycopg.Connection, spec: CanarySpec, query: str, thresholds: CanaryThresholds
) -> CanaryResult:
    settings = thresholds.as_settings()
    started = time.perf_counter()
    error: str | None = None
    rows: list[dict] = []
    try:
        with conn.transaction():
            conn.execute(
                "SELECT set_config('statement_timeout', %s, true), "
                "set_config('row_security', 'off', true)",
                (f"{thresholds.statement_timeout_ms}ms",),
            )
            for name, value in settings.items():
                conn.execute("SELECT set_config(%s, %s, true)", (name, value))
            # The file's text as-is (no parameters): it is the query the alert tells a DBA to run.
            rows = conn.execute(query.encode()).fetchall()
    except psycopg.Error as exc:
        diag = exc.diag
        error = f"{diag.sqlstate or type(exc).__name__}: {diag.message_primary or exc}"
    findings = tuple(
        CanaryFinding(
            tenant_id=str(r["tenant_id"]) if r["tenant_id"] is not None else None,
            subject=str(r["subject"]),
            count=int(r["issue_count"]),
            sample_ids=tuple(str(i) for i in (r["sample_ids"] or ()) if i is not None),
            detail=str(r["detail"]),
        )
        for r in rows
    )
    return CanaryResult(
        name=spec.name,
        title=spec.title,
        table=spec.table,
        severity=spec.severity,
        passed=error is None and not findings,
        findings=findings,
        query=query,
        runbook_anchor=spec.runbook_anchor,
        what_it_means=spec.what_it_means,
        seconds=time.perf_counter() - started,
        error=error,
        thresholds=settings,
        resolved_meaning=spec.resolved_meaning,
        counted=spec.counted,
    )


def run_canaries(
    url: str,
    thresholds: CanaryThresholds | None = None,
    names: Iterable[str] | None = None,
    *,
    directory: Path = CANARIES_DIR,
) -> list[CanaryResult]:
    """Run the canaries (all, or those named) read-only against ``url``, in a stable order."""
    thresholds = thresholds or CanaryThresholds()
    queries = load_canary_sql(directory)
    wanted = list(CANARIES) if names is None else list(names)
    unknown = [n for n in wanted if n not in CANARIES]
    if unknown:
        raise ConfigError(
            f"unknown canary {', '.join(unknown)}; choose from {', '.join(CANARIES)}."
        )
    with connect(url) as conn:
        conn.read_only = True
        return [_run_one(conn, CANARIES[n], queries[n], thresholds) for n in wanted]


def failing(results: Sequence[CanaryResult]) -> list[CanaryResult]:
    return [r for r in results if not r.passed]
