"""The restore drill's report (Markdown + JSON) and its Slack message."""

from __future__ import annotations

from pathlib import Path

from hardening_pipeline.alerts.runbook import runbook_link
from hardening_pipeline.alerts.slack import Alert
from hardening_pipeline.reports import ReportFiles, green_or_red, write_report
from hardening_pipeline.restore.drill_result import DrillResult

RUNBOOK_SECTION = "restore-drill-failed"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "unknown"
    if seconds < 120:
        return f"{seconds:.1f}s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def drill_markdown(result: DrillResult) -> str:
    verdict = "PASSED" if result.passed else "FAILED"
    lines = [
        f"# Restore drill {verdict}",
        "",
        f"- started: {result.started_at.isoformat(timespec='seconds')}",
        f"- backup: {result.backup_id or 'none found'}",
        f"- backup location: {result.location or '-'}",
        f"- restored into: {result.target or '-'}",
        f"- backup age at drill time (RPO): {_duration(result.rpo_seconds)}",
        f"- time to restore and verify (RTO): {_duration(result.rto_seconds)}",
        f"- rows restored: {result.rows_restored:,}",
        "- newer migrations applied after the restore: "
        + (", ".join(result.upgraded_with) or "none"),
        f"- drill tests: {result.tests_passed} passed, {result.tests_failed} failed",
    ]
    if result.failure:
        lines += ["", f"**Failure** (stage `{result.failed_stage}`): {result.failure}"]
    lines += ["", "## Stages", "", "| stage | seconds |", "|---|---|"]
    lines += [f"| {name} | {secs:.2f} |" for name, secs in result.stages.items()]
    lines += ["", "## Invariants", "", "| | check | detail |", "|---|---|---|"]
    for inv in result.invariants:
        mark = green_or_red(inv.passed)
        lines.append(f"| {mark} | {inv.name} | {inv.detail} |")
    if not result.invariants:
        lines.append(
            f"| {green_or_red(False)} | no invariant could be checked | the drill stopped before "
            "verification |"
        )
    if result.tests_output:
        lines += ["", "## Drill tests", "", "```", result.tests_output, "```"]
    return "\n".join(lines)


def write_drill_report(result: DrillResult, reports_dir: Path) -> ReportFiles:
    return write_report(
        reports_dir,
        "restore-drill",
        drill_markdown(result),
        result.to_json(),
        moment=result.started_at,
    )


def drill_alert(
    result: DrillResult, report: ReportFiles | None, runbook_base_url: str | None = None
) -> Alert:
    """A success note or an actionable failure, with the numbers an on-call engineer wants."""
    fields = [
        ("Backup", result.backup_id or "none found"),
        ("RPO (backup age)", _duration(result.rpo_seconds)),
        ("RTO (restore + verify)", _duration(result.rto_seconds)),
        ("Drill tests", f"{result.tests_passed} passed, {result.tests_failed} failed"),
    ]
    if report:
        fields.append(("Report", str(report.markdown)))
    if not result.passed:
        fields.append(("Runbook", runbook_link(RUNBOOK_SECTION, runbook_base_url)))
    details = [f"{'ok  ' if i.passed else 'FAIL'} {i.name}: {i.detail}" for i in result.invariants]
    section = runbook_link(RUNBOOK_SECTION, runbook_base_url)
    links = [("Runbook: restore drill failed", section)] if runbook_base_url else []
    if result.passed:
        return Alert(
            title="Restore drill passed",
            status="success",
            summary=f"Backup {result.backup_id} was restored into {result.target} and verified.",
            fields=fields,
            details=details,
        )
    return Alert(
        title="Restore drill FAILED",
        status="failure",
        summary=(
            f"Stage `{result.failed_stage or 'verify'}` failed: "
            f"{(result.failure or result.first_red or 'a drill check is red').rstrip('.')}. "
            "The newest "
            "backup may "
            "not be restorable: run `hardening restore-drill` by hand and follow the runbook."
        ),
        fields=fields,
        details=details,
        links=links,
    )
