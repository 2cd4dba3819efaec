"""SQL canaries: cheap read-only queries that find what the constraints should have prevented."""

from hardening_pipeline.canaries.alerts import alert_canaries, failure_alert, resolved_alert
from hardening_pipeline.canaries.runner import (
    CANARIES,
    CanaryFinding,
    CanaryResult,
    CanarySpec,
    CanaryThresholds,
    failing,
    load_canary_sql,
    run_canaries,
)

__all__ = [
    "CANARIES",
    "CanaryFinding",
    "CanaryResult",
    "CanarySpec",
    "CanaryThresholds",
    "alert_canaries",
    "failing",
    "failure_alert",
    "load_canary_sql",
    "resolved_alert",
    "run_canaries",
]
