"""Locked backups that follow the retention schedule (S3 Object Lock on B2).

A bucket's default retention knows one period for everything; the 30/12/12 schedule needs three.
So the kit locks each object itself: written with the daily horizon (``policy.daily`` days), and
extended to the weekly or monthly horizon once retention has made the backup that period's keeper.
A keeper is final only once a newer backup exists: the newest backup holds the weekly and monthly
slots of a week and month that are not over yet, and extending a COMPLIANCE lock cannot be undone,
so every nightly backup would otherwise be locked for a year. Its daily lock covers it until then.

A horizon is the earliest moment retention could let the backup go: the keeper of ISO week W
leaves the 12 newest weeks when week W+12 begins at the soonest, the keeper of month M when month
M+12 begins, a daily keeper of day D when day D+30 begins. Locking to exactly then protects every
backup for as long as the schedule promises it, without holding anything the schedule has let go
(a missed night keeps a backup longer, and then retention, not the lock, keeps it). Locks are a
floor under the schedule, never a reason to fail: retention keeps what is still locked and
deletes it on a later run.
"""

from __future__ import annotations

import calendar
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from hardening_pipeline.backup.catalog import UNTRUSTED_FIX, list_backups, untrusted_backups
from hardening_pipeline.backup.crypto import Keyring
from hardening_pipeline.backup.manifest import MANIFEST_NAME
from hardening_pipeline.backup.retention import (
    BackupRef,
    KeptBackup,
    RetentionPlan,
    RetentionPolicy,
    plan_retention,
)
from hardening_pipeline.backup.store import BackupStore, ObjectLock
from hardening_pipeline.errors import ConfigError
from hardening_pipeline.settings import ENV_OBJECT_LOCK, ENV_STORE_URL


def write_lock(mode: str, policy: RetentionPolicy | None = None) -> ObjectLock | None:
    """The lock every new object gets: ``mode`` (or None for "off") for the daily horizon."""
    if mode == "off":
        return None
    policy = policy or RetentionPolicy()
    # A policy without dailies still locks a day: an unlocked write is what an attacker wants.
    return ObjectLock(mode, timedelta(days=max(policy.daily, 1)))


def _add_months(moment: datetime, months: int) -> datetime:
    index = moment.month - 1 + months
    year, month = moment.year + index // 12, index % 12 + 1
    day = min(moment.day, calendar.monthrange(year, month)[1])
    return moment.replace(year=year, month=month, day=day)


def required_lock(kept: KeptBackup, policy: RetentionPolicy, *, final: bool) -> datetime:
    """How long ``kept`` must stay locked: the furthest horizon of the slots it holds.

    ``final`` is False for the newest backup, whose weekly and monthly slots may still pass
    to a later backup of the same week or month; it keeps its daily horizon only (which the
    write lock, counted from a moment later that day, already covers).
    """
    day = kept.created_at.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    until = day + timedelta(days=max(policy.daily, 1))
    if final and "weekly" in kept.slots:
        monday = day - timedelta(days=day.weekday())
        until = max(until, monday + timedelta(weeks=policy.weekly))
    if final and "monthly" in kept.slots:
        until = max(until, _add_months(day.replace(day=1), policy.monthly))
    return until


@dataclass(frozen=True)
class LockNeed:
    """A kept backup and the lock the schedule wants on it."""

    backup_id: str
    folder: str
    until: datetime


def lock_needs(
    plan: RetentionPlan, folders: dict[str, str], policy: RetentionPolicy, now: datetime
) -> list[LockNeed]:
    """The locks the plan's keepers need that have not run out yet, newest first."""
    newest = plan.keep[0].backup_id if plan.keep else None
    needs = []
    for kept in plan.keep:
        until = required_lock(kept, policy, final=kept.backup_id != newest)
        if until > now:
            needs.append(LockNeed(kept.backup_id, folders[kept.backup_id], until))
    return needs


def extend_locks(store: BackupStore, needs: list[LockNeed], *, dry_run: bool = False) -> list[str]:
    """Extend every lock shorter than its need; returns the ids extended (or to extend).

    The manifest is extended last, so a manifest already locked long enough proves its whole
    folder is, and a run costs one lookup per kept backup once the locks are in place.
    """
    extended = []
    for need in needs:
        manifest = need.folder + MANIFEST_NAME
        current = store.locked_until(manifest)
        if current is not None and current >= need.until:
            continue
        if not dry_run:
            store.extend_lock(need.folder, need.until, last_key=manifest)
        extended.append(need.backup_id)
    return extended


def require_lockable(store: BackupStore) -> None:
    """A store configured to lock must be a bucket with Object Lock enabled."""
    lock = store.object_lock
    if lock is not None and not store.lock_enabled():
        raise ConfigError(
            f"{ENV_OBJECT_LOCK} is {lock.mode} but {store.describe()} does not have Object Lock "
            f"enabled; create a bucket with Object Lock enabled (B2: Bucket Settings, Object "
            f"Lock) and point {ENV_STORE_URL} at it, or set {ENV_OBJECT_LOCK}=off."
        )


def lock_schedule(
    store: BackupStore,
    keyring: Keyring,
    policy: RetentionPolicy | None = None,
    *,
    now: datetime | None = None,
) -> list[str]:
    """After a backup: extend the locks of the keepers it made final (the writer key may)."""
    policy = policy or RetentionPolicy()
    now = now or datetime.now(UTC)
    catalog = list_backups(store, keyring, now=now)
    plan = plan_retention([BackupRef(b.backup_id, b.created_at) for b in catalog.valid], policy)
    folders = {b.backup_id: b.folder for b in catalog.valid}
    return extend_locks(store, lock_needs(plan, folders, policy, now))


@dataclass(frozen=True)
class LockCheck:
    passed: bool
    detail: str
    # The newest backup's lock: nobody can delete or change it before then.
    immutable_until: datetime | None = None
    # Set when the fix is not the usual one (extend short locks): a manifest nobody can trust.
    fix: str = ""


def check_backup_locks(
    store: BackupStore,
    keyring: Keyring,
    policy: RetentionPolicy | None = None,
    *,
    now: datetime | None = None,
) -> LockCheck | None:
    """Is every kept backup locked to its horizon? None when the store is not set to lock.

    Never raises for what it finds; a store that cannot be read is a red result.
    """
    lock = store.object_lock
    if lock is None:
        return None
    policy = policy or RetentionPolicy()
    now = now or datetime.now(UTC)
    try:
        require_lockable(store)
        catalog = list_backups(store, keyring, now=now)
        plan = plan_retention([BackupRef(b.backup_id, b.created_at) for b in catalog.valid], policy)
        folders = {b.backup_id: b.folder for b in catalog.valid}
        needs = lock_needs(plan, folders, policy, now)
        held = {n.backup_id: store.locked_until(n.folder + MANIFEST_NAME) for n in needs}
    except Exception as exc:  # any failure to look is itself a reason to alert
        return LockCheck(False, f"could not check the locks in {store.describe()}: {exc}")
    # Skipping them would leave the line green over backups nobody knows the locks of.
    untrusted = untrusted_backups(catalog)
    if untrusted:
        return LockCheck(False, untrusted, fix=UNTRUSTED_FIX)
    short = [n for n in needs if held[n.backup_id] is None or held[n.backup_id] < n.until]
    if short:
        first = short[0]
        found = held[first.backup_id]
        return LockCheck(
            False,
            f"{len(short)} of {len(needs)} kept backups are locked for less than their "
            f"retention horizon; {first.backup_id} is "
            + (f"locked until {found:%Y-%m-%d}" if found else "not locked")
            + f", needs {first.until:%Y-%m-%d}",
        )
    if not needs:
        return LockCheck(True, f"no backup in {store.describe()} needs a lock")
    newest = needs[0]
    until = held[newest.backup_id]
    return LockCheck(
        True,
        f"{len(needs)} kept backups locked ({lock.mode}) to their retention horizon; backups "
        f"immutable until {until:%Y-%m-%d} (newest {newest.backup_id})",
        until,
    )
