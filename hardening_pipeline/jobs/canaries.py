"""The canary job: run the SQL canaries read-only and alert Slack on what changed."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from hardening_pipeline.alerts.runbook import runbook_link
from hardening_pipeline.alerts.slack import SlackNotifier
from hardening_pipeline.alerts.state import AlertOutcome
from hardening_pipeline.canaries import CanaryResult, alert_canaries, run_canaries


@dataclass(frozen=True)
class CanaryJobResult:
    results: list[CanaryResult]
    # Empty when no alert was asked for.
    alerts: list[AlertOutcome]
    runbook_base_url: str | None = None

    @property
    def red(self) -> list[CanaryResult]:
        """Every canary that found something, the ones that block (ERROR) first."""
        failed = [r for r in self.results if not r.passed]
        return sorted(failed, key=lambda r: r.severity != "error")

    @property
    def blocking(self) -> list[CanaryResult]:
        """Findings that fail a run; WARN canaries are shown but do not fail one."""
        return [r for r in self.red if r.severity == "error"]

    @property
    def passed(self) -> bool:
        return not self.red

    @property
    def subject(self) -> str:
        red = self.red
        if not red:
            return "no canary failed"
        others = f" (and {', '.join(r.name for r in red[1:])})" if red[1:] else ""
        return f"canary {red[0].name} failed{others}"

    @property
    def failure(self) -> str | None:
        if not self.red:
            return None
        first = self.red[0]
        return (
            f"{first.summary()}; the runbook says what to do: "
            f"{runbook_link(first.runbook_anchor, self.runbook_base_url)}"
        )


def canary_job(
    url: str,
    *,
    names: Iterable[str] | None = None,
    notifier: SlackNotifier | None,
    runbook_base_url: str | None = None,
) -> CanaryJobResult:
    """Run the canaries (all, or ``names``); alert on new, grown or cleared findings."""
    results = run_canaries(url, names=names)
    alerts: list[AlertOutcome] = []
    if notifier is not None:
        alerts = alert_canaries(url, results, notifier, runbook_base_url=runbook_base_url)
    return CanaryJobResult(results, alerts, runbook_base_url)
