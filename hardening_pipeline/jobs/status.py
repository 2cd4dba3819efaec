"""The status job: every hardening check (plus backup freshness when asked), its report files
and its Slack alert."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path

import psycopg

from hardening_pipeline.alerts.runbook import runbook_link
from hardening_pipeline.alerts.slack import SlackNotifier
from hardening_pipeline.alerts.state import AlertOutcome
from hardening_pipeline.backup.crypto import Keyring
from hardening_pipeline.backup.freshness import DEFAULT_MAX_AGE, Freshness, check_backup_freshness
from hardening_pipeline.backup.locks import LockCheck, check_backup_locks
from hardening_pipeline.backup.store import BackupStore
from hardening_pipeline.backup.tenant_key_copies import ledger_status
from hardening_pipeline.db.connection import connect
from hardening_pipeline.errors import HardeningError
from hardening_pipeline.hardening.alerts import alert_status
from hardening_pipeline.hardening.report import write_report
from hardening_pipeline.hardening.status import CheckLine, StatusReport, run_status_check
from hardening_pipeline.reports import ReportFiles

FRESHNESS_FIX = (
    "Find out why the nightly backup did not run or failed (Dagster daemon, schedule, "
    "workflow, key, store) and run `hardening backup` now."
)


@dataclass(frozen=True)
class FreshnessRequest:
    """Where to look for the newest backup, and how old it may be."""

    store: BackupStore
    keyring: Keyring
    max_age: timedelta = DEFAULT_MAX_AGE


LOCKS_FIX = (
    "Enable Object Lock on the bucket (or point BACKUP_STORE_URL at one that has it), then run "
    "`hardening retention` with a key holding writeFileRetentions to extend the short locks."
)


@dataclass(frozen=True)
class BackupFreshness:
    freshness: Freshness
    line: CheckLine
    # Present when the store locks: every kept backup locked to its retention horizon.
    locks: LockCheck | None = None
    locks_line: CheckLine | None = None

    @property
    def lines(self) -> list[CheckLine]:
        return [self.line] + ([self.locks_line] if self.locks_line else [])


def backup_freshness(request: FreshnessRequest) -> BackupFreshness:
    """The backup-freshness check and its status line (the same text in the CLI and Dagster)."""
    fresh = check_backup_freshness(request.store, request.keyring, max_age=request.max_age)
    hours = request.max_age / timedelta(hours=1)
    line = CheckLine(
        name="backup_freshness",
        passed=fresh.passed,
        detail=fresh.detail,
        fix="" if fresh.passed else FRESHNESS_FIX,
        title=f"a verified backup exists from the last {hours:g} hours",
    )
    locks = check_backup_locks(request.store, request.keyring)
    locks_line = None
    if locks is not None:
        locks_line = CheckLine(
            name="backup_locks",
            passed=locks.passed,
            detail=locks.detail,
            fix="" if locks.passed else locks.fix or LOCKS_FIX,
            title="every kept backup is locked until its retention horizon",
        )
    return BackupFreshness(fresh, line, locks, locks_line)


def _with_store(url: str, line: CheckLine, request: FreshnessRequest | None) -> CheckLine:
    """The key ledger line again, now that the store and key are open: both copies compared."""
    assert request is not None
    try:
        with connect(url) as conn:
            passed, detail, fix = ledger_status(conn, request.store, request.keyring)
    except (HardeningError, psycopg.Error) as exc:
        passed, detail, fix = False, str(exc).strip().splitlines()[0], ""
    return replace(line, passed=passed, detail=detail, fix=fix)


@dataclass(frozen=True)
class StatusJobResult:
    report: StatusReport
    files: ReportFiles
    # None when no alert was asked for.
    alert: AlertOutcome | None

    @property
    def passed(self) -> bool:
        return self.report.passed

    @property
    def subject(self) -> str:
        return "the hardening status is red"

    @property
    def failure(self) -> str | None:
        if self.report.passed:
            return None
        red = self.report.red
        return (
            f"{len(red)} of {len(self.report.lines)} checks are red: "
            f"{', '.join(line.name for line in red)}; {self.files.markdown} gives each fix."
        )

    def first_red(self, runbook_base_url: str | None = None) -> str | None:
        """What to do first, in one paragraph: the first red line, why, its fix's first line and
        its runbook section (the report and the runbook have the rest)."""
        if self.report.passed:
            return None
        line = self.report.red[0]
        fix = next((part.strip() for part in line.fix.splitlines() if part.strip()), "")
        return (
            f"{line.name}: {line.detail}."
            + (f" Fix: {fix}" if fix else "")
            + f" Runbook: {runbook_link(line.runbook_anchor, runbook_base_url)}"
        )


def status_job(
    url: str,
    *,
    reports_dir: Path,
    notifier: SlackNotifier | None,
    runbook_base_url: str | None = None,
    freshness: FreshnessRequest | None = None,
    seal_anchor: Path | None = None,
) -> StatusJobResult:
    """Check every guarantee, write ``status-<UTC>.md``/``.json`` and alert on a change;
    ``seal_anchor`` is the sealing host's anchor file (used when it exists)."""
    # Freshness first: its store and key were opened before the database was touched.
    fresh = backup_freshness(freshness) if freshness is not None else None
    report = run_status_check(url, seal_anchor=seal_anchor)
    if fresh is not None:
        report.lines[:] = [
            _with_store(url, line, freshness) if line.name == "tenant_key_ledger" else line
            for line in report.lines
        ]
        report.lines.extend(fresh.lines)
    files = write_report(report, reports_dir)
    alert = None
    if notifier is not None:
        alert = alert_status(
            url,
            report,
            notifier,
            report_path=str(files.markdown),
            runbook_base_url=runbook_base_url,
        )
    return StatusJobResult(report, files, alert)
