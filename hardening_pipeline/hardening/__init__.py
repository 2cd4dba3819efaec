"""The hardening status checker and its report writer."""

from hardening_pipeline.hardening.report import ReportFiles, checklist_markdown, write_report
from hardening_pipeline.hardening.status import (
    CHECKS,
    CheckLine,
    StatusReport,
    run_checks,
    run_status_check,
)

__all__ = [
    "CHECKS",
    "CheckLine",
    "ReportFiles",
    "StatusReport",
    "checklist_markdown",
    "run_checks",
    "run_status_check",
    "write_report",
]
