"""Turn canary results into Slack alerts an on-call person can act on without opening a laptop.

Each alert says what is wrong, how many rows, which tenants, a few ids, the exact SQL to
investigate (the canary file itself, runnable in psql) and where the runbook explains the fix.
Dedup and "resolved" messages come from ``hardening_pipeline.alerts.state``.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

from hardening_pipeline.alerts.runbook import runbook_link
from hardening_pipeline.alerts.slack import Alert, SlackNotifier
from hardening_pipeline.alerts.state import (
    DEFAULT_REALERT_AFTER,
    AlertOutcome,
    TrackedFinding,
    notify,
)
from hardening_pipeline.canaries.runner import CanaryResult, CanaryThresholds

MAX_DETAIL_LINES = 10


def alert_key(result: CanaryResult) -> str:
    return f"canary:{result.name}"


def investigation_query(result: CanaryResult) -> str:
    """The canary's own SQL, with the thresholds it ran with when they differ from the defaults.

    Comment lines are dropped: the file on disk keeps them, and Slack has room for ~3000 chars.
    """
    defaults = CanaryThresholds().as_settings()
    changed = {k: v for k, v in result.thresholds.items() if defaults.get(k) != v}
    body = "\n".join(
        line for line in result.query.splitlines() if not line.lstrip().startswith("--")
    ).strip()
    if not changed:
        return body
    sets = ", ".join(f"set_config('{k}', '{v}', true)" for k, v in sorted(changed.items()))
    return f"BEGIN READ ONLY;\nSELECT {sets};\n{body}\nROLLBACK;"


def _runbook(result: CanaryResult, runbook_base_url: str | None) -> tuple[str, list]:
    link = runbook_link(result.runbook_anchor, runbook_base_url)
    return link, [("Runbook: what to do", link)] if runbook_base_url else []


def failure_alert(result: CanaryResult, runbook_base_url: str | None = None) -> Alert:
    """The alert for a failing canary: ERROR canaries are failures, volume canaries warnings."""
    runbook, links = _runbook(result, runbook_base_url)
    if result.error is not None:
        summary = (
            f"The canary {result.name} could not run ({result.error}), so nobody is watching "
            f"for {result.what_it_means}. Run the query below by hand to see why."
        )
    else:
        whole_tables = all(f.tenant_id is None for f in result.findings)
        affected = "every tenant (whole tables)" if whole_tables else len(result.tenants)
        summary = (
            f"{result.count} {result.counted or result.table} flagged: {result.what_it_means}. "
            f"Tenants affected: {affected}."
        )
    details = [
        f"tenant {f.tenant_id or '(none)'} / {f.subject}: {f.count} — {f.detail}"
        + (f"; ids: {', '.join(f.sample_ids)}" if f.sample_ids else "")
        for f in result.findings[:MAX_DETAIL_LINES]
    ]
    if len(result.findings) > MAX_DETAIL_LINES:
        details.append(f"… and {len(result.findings) - MAX_DETAIL_LINES} more (run the query)")
    return Alert(
        title=f"Canary {result.name}: {result.title.lower()} detected",
        status="failure" if result.severity == "error" else "warning",
        summary=summary,
        fields=[
            ("Canary", result.name),
            ("Severity", result.severity.upper()),
            ("Count", str(result.count)),
            ("Tenants", ", ".join(result.tenants[:5]) + (" …" if len(result.tenants) > 5 else "")),
            ("Sample ids", ", ".join(result.samples[:5]) or "-"),
            ("Runbook", runbook),
        ],
        details=details,
        query=investigation_query(result),
        links=links,
    )


def resolved_alert(result: CanaryResult, runbook_base_url: str | None = None) -> Alert:
    runbook, links = _runbook(result, runbook_base_url)
    return Alert(
        title=f"Canary {result.name}: resolved",
        status="resolved",
        summary=f"{result.title} is back to 0; {result.resolved_meaning}.",
        fields=[("Canary", result.name), ("Runbook", runbook)],
        links=links,
    )


def tracked(result: CanaryResult, runbook_base_url: str | None = None) -> TrackedFinding:
    return TrackedFinding(
        key=alert_key(result),
        failing=not result.passed,
        fingerprint=result.fingerprint,
        magnitude=result.count,
        alert=None if result.passed else failure_alert(result, runbook_base_url),
        resolved_alert=resolved_alert(result, runbook_base_url),
    )


def alert_canaries(
    url: str,
    results: Sequence[CanaryResult],
    notifier: SlackNotifier,
    *,
    runbook_base_url: str | None = None,
    realert_after: timedelta = DEFAULT_REALERT_AFTER,
) -> list[AlertOutcome]:
    """Alert on new or grown findings, announce cleared ones; see ``alerts.state`` for the rules."""
    return notify(
        url,
        notifier,
        [tracked(r, runbook_base_url) for r in results],
        realert_after=realert_after,
    )
