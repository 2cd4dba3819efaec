"""Slack alert when the status check turns red, once per distinct set of red lines."""

from __future__ import annotations

from datetime import timedelta

from hardening_pipeline.alerts.runbook import RUNBOOK_PATH, runbook_link
from hardening_pipeline.alerts.slack import Alert, SlackNotifier
from hardening_pipeline.alerts.state import (
    DEFAULT_REALERT_AFTER,
    AlertOutcome,
    TrackedFinding,
    notify,
)
from hardening_pipeline.hardening.status import StatusReport

ALERT_KEY = "status_check"


def status_alert(
    report: StatusReport, report_path: str | None = None, runbook_base_url: str | None = None
) -> Alert:
    red = report.red
    runbook = (
        runbook_link(red[0].runbook_anchor, runbook_base_url)
        if red
        else (runbook_base_url or RUNBOOK_PATH)
    )
    return Alert(
        title=f"Hardening status: {len(red)} check(s) red",
        status="failure",
        summary=(
            f"The database {report.database} no longer meets {len(red)} hardening guarantee(s): "
            + ", ".join(line.name for line in red)
            + ". Each line below says what is wrong and how to fix it."
        ),
        fields=[
            ("Red checks", str(len(red))),
            ("Database", report.database),
            ("Report", report_path or "-"),
            ("Runbook", runbook),
        ],
        details=[f"{line.name}: {line.detail} -> fix: {line.fix}" for line in red],
        query="hardening status   # re-run the checklist after fixing",
        links=[("Runbook: what to do", runbook)] if runbook_base_url else [],
    )


def status_resolved_alert(report: StatusReport) -> Alert:
    return Alert(
        title="Hardening status: all green again",
        status="resolved",
        summary=f"All {len(report.lines)} hardening checks on {report.database} are green.",
    )


def alert_status(
    url: str,
    report: StatusReport,
    notifier: SlackNotifier,
    *,
    report_path: str | None = None,
    runbook_base_url: str | None = None,
    realert_after: timedelta = DEFAULT_REALERT_AFTER,
) -> AlertOutcome:
    """Alert when the set of red lines is new or larger; announce when everything is green."""
    red_names = sorted(line.name for line in report.red)
    item = TrackedFinding(
        key=ALERT_KEY,
        failing=bool(red_names),
        fingerprint=",".join(red_names) or "green",
        magnitude=len(red_names),
        alert=status_alert(report, report_path, runbook_base_url) if red_names else None,
        resolved_alert=status_resolved_alert(report),
    )
    return notify(url, notifier, [item], realert_after=realert_after)[0]
