"""Apply the 30 daily / 12 weekly / 12 monthly retention to the store.

It never deletes on doubt: if the store cannot be listed completely, or any manifest fails
verification, nothing is deleted and the run fails so a human looks. Only whole backups are
deleted, manifest first (the manifest was written last, so the backup stops existing at once and
a crash half-way leaves only manifest-less debris), then the rest of the folder. Folders without
a manifest are removed once they are older than a grace period, so a backup still running is
never touched.

On a locked store (``backup.locks``) it first extends the keepers' locks to their horizons, then
deletes only what is past its lock; a backup still locked is kept, with its date, and goes on
a later run. A lock is a reason to keep, never an error.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from hardening_pipeline.backup.catalog import BackupCatalog, StoredBackup, list_backups
from hardening_pipeline.backup.crypto import Keyring
from hardening_pipeline.backup.locks import extend_locks, lock_needs
from hardening_pipeline.backup.manifest import MANIFEST_NAME
from hardening_pipeline.backup.retention import (
    BackupRef,
    RetentionPlan,
    RetentionPolicy,
    plan_retention,
)
from hardening_pipeline.backup.store import BackupStore, ObjectLockedError
from hardening_pipeline.errors import CheckFailed

INCOMPLETE_GRACE = timedelta(days=1)


@dataclass
class RetentionOutcome:
    """What retention kept (with the rule that kept each), deleted, and cleaned up."""

    plan: RetentionPlan
    debris: list[StoredBackup]
    dry_run: bool
    deleted: list[str] = field(default_factory=list)
    debris_removed: list[str] = field(default_factory=list)
    stale_uploads_aborted: int = 0
    # Backups (and incomplete folders) the plan would delete but whose lock has not run out:
    # id -> retain-until date (None when the store only said "locked").
    locked: dict[str, datetime | None] = field(default_factory=dict)
    # Kept backups whose lock was extended to their horizon (or would be, in a dry run).
    locks_extended: list[str] = field(default_factory=list)


def apply_retention(
    store: BackupStore,
    keyring: Keyring,
    policy: RetentionPolicy | None = None,
    *,
    dry_run: bool = False,
    now: datetime | None = None,
    incomplete_grace: timedelta = INCOMPLETE_GRACE,
) -> RetentionOutcome:
    """Plan retention over the verified backups and (unless ``dry_run``) carry it out."""
    policy = policy or RetentionPolicy()
    now = now or datetime.now(UTC)
    catalog: BackupCatalog = list_backups(store, keyring, now=now)
    if catalog.invalid:
        names = "; ".join(f"{b.backup_id}: {b.problem}" for b in catalog.invalid)
        raise CheckFailed(
            f"retention deleted nothing because {len(catalog.invalid)} backup(s) failed "
            f"verification ({names}); see docs/runbook.md#backup-retention-refused."
        )
    by_id = {b.backup_id: b for b in catalog.valid}
    plan = plan_retention([BackupRef(b.backup_id, b.created_at) for b in catalog.valid], policy)
    newest = catalog.newest
    if newest is not None and newest.backup_id not in plan.kept_ids:
        raise CheckFailed(  # the planner guarantees this; checked again because it is the last copy
            f"retention would delete the newest backup {newest.backup_id}; refusing."
        )
    debris = [
        b
        for b in catalog.incomplete
        if b.last_modified is not None and now - b.last_modified > incomplete_grace
    ]
    outcome = RetentionOutcome(plan=plan, debris=debris, dry_run=dry_run)
    locking = store.object_lock is not None
    if locking:
        folders = {b.backup_id: b.folder for b in catalog.valid}
        needs = lock_needs(plan, folders, policy, now)
        outcome.locks_extended = extend_locks(store, needs, dry_run=dry_run)
        for ref in plan.delete:
            until = store.locked_until(by_id[ref.backup_id].folder + MANIFEST_NAME)
            if until is not None and until > now:
                outcome.locked[ref.backup_id] = until
    if dry_run:
        return outcome
    for ref in plan.delete:
        if ref.backup_id in outcome.locked:
            continue
        backup = by_id[ref.backup_id]
        try:
            store.delete(backup.folder + MANIFEST_NAME)
            store.delete_prefix(backup.folder)
        except ObjectLockedError:
            # Locked longer than its manifest said (a lock set by hand, or GOVERNANCE mode
            # changed): keep what is left; without its manifest it is debris for a later run.
            outcome.locked[ref.backup_id] = None
            continue
        outcome.deleted.append(ref.backup_id)
    for backup in debris:
        try:
            store.delete_prefix(backup.folder)
        except ObjectLockedError:
            outcome.locked[backup.backup_id] = None
            continue
        outcome.debris_removed.append(backup.backup_id)
    outcome.stale_uploads_aborted = store.abort_stale_uploads(incomplete_grace, now=now)
    return outcome
