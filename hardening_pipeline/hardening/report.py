"""Write a status report an auditor can read (Markdown) and a machine can diff (JSON).

Reports are timestamped, never overwritten: the folder is the history of what the database
looked like on each run. Names are ``status-YYYYMMDDTHHMMSSZ.md`` / ``.json`` (UTC).
"""

from __future__ import annotations

from pathlib import Path

from hardening_pipeline.alerts.runbook import RUNBOOK_PATH, runbook_link
from hardening_pipeline.hardening.status import StatusReport
from hardening_pipeline.reports import ReportFiles, green_or_red
from hardening_pipeline.reports import write_report as write_timestamped_report


def _cell(text: str) -> str:
    # A "|" inside a table cell would start a new column, and "<table>" would be taken for an
    # HTML tag and vanish from the rendered fix.
    return (
        text.replace("|", "\\|")
        .replace("\n", " ")
        .replace("&", "&amp;")
        .replace("<", "&lt;")
        .replace(">", "&gt;")
    )


def _runbook_ref(anchor: str, runbook_base_url: str | None) -> str:
    """A link when the runbook is published somewhere absolute; otherwise its path as text (a
    relative link would open a page of whatever renders the report, never the runbook)."""
    if runbook_base_url:
        return f"[runbook]({runbook_link(anchor, runbook_base_url)})"
    return f"runbook: `{runbook_link(anchor)}`"


def checklist_markdown(report: StatusReport, runbook_base_url: str | None = None) -> str:
    """The checklist as a Markdown table: also used as Dagster metadata."""
    lines = [
        "| | check | detail | fix |",
        "|---|---|---|---|",
    ]
    for line in report.lines:
        mark = green_or_red(line.passed)
        name = f"`{line.name}` {line.title}"
        fix = (
            f"{_cell(line.fix)} ({_runbook_ref(line.runbook_anchor, runbook_base_url)})"
            if line.fix
            else ""
        )
        lines.append(f"| {mark} | {_cell(name)} | {_cell(line.detail)} | {fix} |")
    return "\n".join(lines)


def report_markdown(report: StatusReport) -> str:
    verdict = "ALL GREEN" if report.passed else f"{len(report.red)} RED"
    return "\n".join(
        [
            f"# Hardening status: {verdict}",
            "",
            f"- database: {report.database}",
            f"- checked at: {report.started_at.isoformat(timespec='seconds')}",
            f"- took: {report.seconds:.2f}s",
            f"- checks: {len(report.lines)} ({len(report.lines) - len(report.red)} green, "
            f"{len(report.red)} red)",
            "",
            checklist_markdown(report),
            "",
            f"What each line means and how to fix it: `{RUNBOOK_PATH}` (section `status-<name>`).",
            "",
        ]
    )


def write_report(report: StatusReport, directory: Path) -> ReportFiles:
    """Write ``status-<UTC timestamp>.md`` and ``.json`` into ``directory`` (created if needed)."""
    return write_timestamped_report(
        directory, "status", report_markdown(report), report.as_dict(), moment=report.started_at
    )
