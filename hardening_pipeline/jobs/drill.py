"""The restore drill job: run the drill, write its report, post the result to Slack."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from hardening_pipeline.alerts.slack import DeliveryResult, SlackNotifier
from hardening_pipeline.backup.crypto import Keyring
from hardening_pipeline.backup.store import BackupStore
from hardening_pipeline.reports import ReportFiles
from hardening_pipeline.restore.binding import SourceIdentity
from hardening_pipeline.restore.drill import run_restore_drill
from hardening_pipeline.restore.drill_result import DrillResult
from hardening_pipeline.restore.report import drill_alert, write_drill_report


@dataclass(frozen=True)
class DrillJobResult:
    result: DrillResult
    report: ReportFiles
    # None when no alert was asked for (evidence runs, tests).
    delivery: DeliveryResult | None

    @property
    def passed(self) -> bool:
        return self.result.passed

    @property
    def subject(self) -> str:
        return f"the restore drill failed at stage {self.result.failed_stage or 'verify'}"

    @property
    def failure(self) -> str | None:
        if self.result.passed:
            return None
        # The cause is a sentence of its own; its full stop would read ".;" before the report.
        cause = (self.result.failure or self.result.first_red or "a drill check is red").rstrip(".")
        return f"{cause}; the report {self.report.markdown.resolve()} lists each check and its fix."


def drill_job(
    store: BackupStore,
    keyring: Keyring,
    *,
    reports_dir: Path,
    notifier: SlackNotifier | None,
    runbook_base_url: str | None = None,
    backup_id: str | None = None,
    target_dsn: str | None = None,
    on_stage: Callable[[str, str], None] | None = None,
    source: SourceIdentity | None = None,
) -> DrillJobResult:
    """Restore a backup into a throwaway Postgres and verify it; the report is written and the
    alert sent for a red drill as much as for a green one."""
    result = run_restore_drill(
        store,
        keyring,
        backup_id=backup_id,
        target_dsn=target_dsn,
        on_stage=on_stage,
        source=source,
    )
    report = write_drill_report(result, reports_dir)
    delivery = None
    if notifier is not None:
        delivery = notifier.send(drill_alert(result, report, runbook_base_url))
    return DrillJobResult(result, report, delivery)
