"""The retention job: apply the keep rules and list every decision with its reason once.

The CLI's table, the Dagster metadata and the evidence log all render ``rows``, so the three
cannot disagree about what was kept, what went, and why.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from hardening_pipeline.backup.crypto import Keyring
from hardening_pipeline.backup.prune import RetentionOutcome, apply_retention
from hardening_pipeline.backup.retention import RetentionPolicy
from hardening_pipeline.backup.store import BackupStore

KEEP = "keep"
INCOMPLETE_WHY = "incomplete: no manifest after the grace period"


def locked_why(until: datetime | None) -> str:
    when = f" until {until:%Y-%m-%d %H:%M} UTC" if until is not None else ""
    return f"locked{when}: no rule keeps it, deleted once the lock runs out"


@dataclass(frozen=True)
class RetentionRow:
    backup_id: str
    # None for an incomplete folder: without a manifest there is no verified time.
    taken_at: datetime | None
    decision: str  # "keep", "deleted" or "would delete"
    why: str

    @property
    def kept(self) -> bool:
        return self.decision == KEEP


@dataclass(frozen=True)
class RetentionJobResult:
    outcome: RetentionOutcome
    policy: RetentionPolicy
    location: str

    @property
    def passed(self) -> bool:
        # Retention either finishes or raises with nothing deleted; a finished run is green.
        return True

    @property
    def subject(self) -> str:
        return f"retention on {self.location}"

    @property
    def failure(self) -> str | None:
        return None

    @property
    def dry_run(self) -> bool:
        return self.outcome.dry_run

    @property
    def verb(self) -> str:
        return "would delete" if self.outcome.dry_run else "deleted"

    @property
    def rows(self) -> list[RetentionRow]:
        """Every backup and incomplete folder with what happened to it, kept ones first."""
        outcome = self.outcome
        locked = outcome.locked
        extended = set(outcome.locks_extended)
        rows = [
            RetentionRow(
                k.backup_id,
                k.created_at,
                KEEP,
                ", ".join(k.reasons) + ("; lock extended" if k.backup_id in extended else ""),
            )
            for k in outcome.plan.keep
        ]
        rows += [
            RetentionRow(r.backup_id, r.created_at, KEEP, locked_why(locked[r.backup_id]))
            if r.backup_id in locked
            else RetentionRow(r.backup_id, r.created_at, self.verb, "not selected by any rule")
            for r in outcome.plan.delete
        ]
        rows += [
            RetentionRow(d.backup_id, None, KEEP, locked_why(locked[d.backup_id]))
            if d.backup_id in locked
            else RetentionRow(d.backup_id, None, self.verb, INCOMPLETE_WHY)
            for d in outcome.debris
        ]
        return rows

    def summary(self) -> str:
        outcome = self.outcome
        locked = set(outcome.locked)
        gone = [r for r in outcome.plan.delete if r.backup_id not in locked]
        debris = [d for d in outcome.debris if d.backup_id not in locked]
        text = (
            f"{len(outcome.plan.keep)} kept, {len(gone)} {self.verb}, "
            f"{len(debris)} incomplete {self.verb}"
        )
        if locked:
            text += f", {len(locked)} kept until their lock runs out"
        return text


def retention_job(
    store: BackupStore,
    keyring: Keyring,
    policy: RetentionPolicy | None = None,
    *,
    dry_run: bool = False,
) -> RetentionJobResult:
    """Keep what ``policy`` selects (30/12/12 by default) and delete the rest, manifest first."""
    policy = policy or RetentionPolicy()
    outcome = apply_retention(store, keyring, policy, dry_run=dry_run)
    return RetentionJobResult(outcome, policy, store.describe())
