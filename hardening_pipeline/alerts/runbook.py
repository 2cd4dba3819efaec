"""Where the on-call runbook is, for every alert, report and check that points at a section."""

from __future__ import annotations

RUNBOOK_PATH = "docs/runbook.md"


def runbook_link(anchor: str, base_url: str | None = None) -> str:
    """Where a runbook section is: on the published runbook (HARDENING_RUNBOOK_URL) when there
    is one, else as the path in this repository."""
    return f"{base_url or RUNBOOK_PATH}#{anchor}"
