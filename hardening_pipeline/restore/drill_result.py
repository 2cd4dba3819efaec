"""What a restore drill found: each stage's time, the invariants checked, the drill tests.

``DrillResult`` is what the report, the Slack message and the Dagster asset read; ``Stages`` times
the drill's stages and records which one failed.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


@dataclass
class Invariant:
    """One thing the drill checked on the restored database."""

    name: str
    passed: bool
    detail: str


@dataclass
class DrillResult:
    """Everything the report, the Slack message and the Dagster asset need."""

    started_at: datetime
    stages: dict[str, float] = field(default_factory=dict)
    invariants: list[Invariant] = field(default_factory=list)
    backup_id: str | None = None
    backup_created_at: datetime | None = None
    location: str | None = None
    tests_passed: int = 0
    tests_failed: int = 0
    tests_output: str = ""
    failure: str | None = None
    failed_stage: str | None = None
    rows_restored: int = 0
    target: str = ""
    upgraded_with: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return (
            self.failure is None
            and bool(self.invariants)
            and all(i.passed for i in self.invariants)
            and self.tests_failed == 0
            and self.tests_passed > 0
        )

    @property
    def first_red(self) -> str | None:
        """The first invariant or drill test that failed, named, with why."""
        for invariant in self.invariants:
            if not invariant.passed:
                return f"invariant {invariant.name} is red: {invariant.detail}"
        for line in self.tests_output.splitlines():
            if line.startswith("FAILED "):
                return "drill test " + line.removeprefix("FAILED ")
        if self.failure is None and self.tests_passed == 0:
            return "no drill test ran"
        return None

    @property
    def rto_seconds(self) -> float:
        return sum(self.stages.values())

    @property
    def rpo_seconds(self) -> float | None:
        if self.backup_created_at is None:
            return None
        return (self.started_at - self.backup_created_at).total_seconds()

    def to_json(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "started_at": self.started_at.isoformat(),
            "backup_id": self.backup_id,
            "backup_created_at": self.backup_created_at.isoformat()
            if self.backup_created_at
            else None,
            "backup_location": self.location,
            "restore_target": self.target,
            "rpo_seconds": self.rpo_seconds,
            "rto_seconds": round(self.rto_seconds, 3),
            "stages_seconds": {k: round(v, 3) for k, v in self.stages.items()},
            "rows_restored": self.rows_restored,
            "migrations_applied_after_restore": self.upgraded_with,
            "invariants": [vars(i) for i in self.invariants],
            "drill_tests": {"passed": self.tests_passed, "failed": self.tests_failed},
            "failed_stage": self.failed_stage,
            "failure": self.failure,
        }


class Stages:
    """Times each stage and records which one failed."""

    def __init__(self, result: DrillResult, on_stage: Callable[[str, str], None] | None) -> None:
        self.result = result
        self.on_stage = on_stage

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        if self.on_stage:
            self.on_stage(name, "started")
        started = time.perf_counter()
        try:
            yield
        except BaseException:
            self.result.failed_stage = self.result.failed_stage or name
            raise
        finally:
            self.result.stages[name] = time.perf_counter() - started
        if self.on_stage:
            self.on_stage(name, "done")
