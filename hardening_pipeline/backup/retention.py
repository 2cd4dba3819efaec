"""Which backups to keep: restic's ``forget --keep-daily/--keep-weekly/--keep-monthly`` rules.

The rules are restic's (``doc/060_forget.rst`` and ``ApplyPolicy`` in
``internal/data/snapshot_policy.go``), chosen because they are written down precisely enough to
test against and because restic users already know what they do:

* Backups are walked newest first.
* Each policy (daily, weekly, monthly) has a counter. A backup whose period (UTC calendar day,
  ISO week Monday 00:00 to Sunday 23:59 UTC, calendar month) differs from the period of the last
  backup that policy kept is kept, and the counter goes down by one. So each policy keeps the
  newest backup of each of its N most recent periods *that have backups*: a missed night uses no
  slot, and several backups in one day only keep the newest.
* Policies are independent and ORed: a backup kept by any policy is kept. The newest backup
  therefore uses one daily, one weekly and one monthly slot.
* Oldest-backup rule: when the walk reaches the oldest backup and a policy still has slots left,
  that policy keeps the oldest backup too, even if its period was already covered. This keeps the
  longest possible history while the store is young.
* A policy that keeps nothing at all (every count zero) removes nothing, like restic, so a
  configuration mistake can never empty the store.

On top of restic, the newest backup is always kept, whatever the policy says: it is the one the
restore drill and a real restore would reach for.

Periods are computed in UTC, not in the server's local time zone, so the same history gives the
same plan on every machine. This module does no I/O: callers list verified backups, pass them
here, and delete what the plan says.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

__all__ = [
    "BackupRef",
    "KeptBackup",
    "RetentionPlan",
    "RetentionPolicy",
    "plan_retention",
]


@dataclass(frozen=True)
class RetentionPolicy:
    """How many daily, weekly and monthly periods to keep one backup for."""

    daily: int = 30
    weekly: int = 12
    monthly: int = 12

    def __post_init__(self) -> None:
        for name in ("daily", "weekly", "monthly"):
            value = getattr(self, name)
            # bool is an int subclass; True as "one day" is almost certainly a bug upstream.
            if not isinstance(value, int) or isinstance(value, bool):
                raise ValueError(f"retention {name} must be an integer, got {value!r}")
            if value < 0:
                raise ValueError(f"retention {name} must be zero or more, got {value}")

    @property
    def keeps_nothing(self) -> bool:
        return self.daily == 0 and self.weekly == 0 and self.monthly == 0

    @property
    def max_kept(self) -> int:
        """Upper bound on kept backups: every slot, the oldest, and the newest."""
        return self.daily + self.weekly + self.monthly + 1


@dataclass(frozen=True)
class BackupRef:
    """One verified backup as retention sees it: an id and when it was taken."""

    backup_id: str
    created_at: datetime

    def __post_init__(self) -> None:
        if not isinstance(self.backup_id, str) or not self.backup_id:
            raise ValueError(f"backup_id must be a non-empty string, got {self.backup_id!r}")
        if not isinstance(self.created_at, datetime):
            raise TypeError(f"created_at of backup {self.backup_id} must be a datetime")
        # A naive datetime would be bucketed by whatever zone the host runs in, so two machines
        # could disagree about which day a backup belongs to.
        if self.created_at.tzinfo is None or self.created_at.utcoffset() is None:
            raise ValueError(
                f"created_at of backup {self.backup_id} must be timezone-aware, "
                f"got naive {self.created_at.isoformat()}"
            )

    @property
    def created_at_utc(self) -> datetime:
        return self.created_at.astimezone(UTC)


@dataclass(frozen=True)
class KeptBackup:
    """A backup the plan keeps, with every reason it is kept (for the report and the logs)."""

    backup_id: str
    created_at: datetime
    reasons: list[str] = field(default_factory=list)
    # The policies (daily, weekly, monthly) whose period it is the newest backup of, for lock
    # horizons; a slot spent by the oldest-backup rule is not one (the next backup takes it).
    slots: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class RetentionPlan:
    """What to keep and what to delete; both newest first."""

    keep: list[KeptBackup]
    delete: list[BackupRef]

    @property
    def kept_ids(self) -> list[str]:
        return [k.backup_id for k in self.keep]

    @property
    def deleted_ids(self) -> list[str]:
        return [d.backup_id for d in self.delete]


def _day(t: datetime) -> str:
    return t.strftime("%Y-%m-%d")


def _iso_week(t: datetime) -> str:
    # ISO year, not calendar year: 2026-12-31 is in 2027-W01 and 2027-01-01 may be in 2026-W53.
    year, week, _ = t.isocalendar()
    return f"{year}-W{week:02d}"


def _month(t: datetime) -> str:
    return t.strftime("%Y-%m")


@dataclass
class _Slot:
    name: str
    remaining: int
    period_of: Callable[[datetime], str]
    last: str | None = None


def plan_retention(backups: Iterable[BackupRef], policy: RetentionPolicy) -> RetentionPlan:
    """Apply ``policy`` to ``backups`` and say which to keep and which to delete.

    The input order does not matter: backups are sorted newest first, ties on the timestamp broken
    by id, so the same set always gives the same plan. Duplicate ids are rejected because they
    mean the caller's listing is wrong, and deleting by a duplicated id could remove a backup the
    plan meant to keep.
    """
    refs = list(backups)
    seen: set[str] = set()
    for ref in refs:
        if not isinstance(ref, BackupRef):
            raise TypeError(f"plan_retention expects BackupRef items, got {type(ref).__name__}")
        if ref.backup_id in seen:
            raise ValueError(f"backup id {ref.backup_id!r} appears more than once")
        seen.add(ref.backup_id)

    ordered = sorted(refs, key=lambda r: (r.created_at_utc, r.backup_id), reverse=True)
    if not ordered:
        return RetentionPlan(keep=[], delete=[])

    if policy.keeps_nothing:
        return RetentionPlan(
            keep=[
                KeptBackup(r.backup_id, r.created_at, ["policy keeps everything"]) for r in ordered
            ],
            delete=[],
        )

    slots = [
        _Slot("daily", policy.daily, _day),
        _Slot("weekly", policy.weekly, _iso_week),
        _Slot("monthly", policy.monthly, _month),
    ]
    oldest_index = len(ordered) - 1
    keep: list[KeptBackup] = []
    delete: list[BackupRef] = []

    for index, ref in enumerate(ordered):
        when = ref.created_at_utc
        reasons: list[str] = []
        slots_spent: list[str] = []
        kept_as_oldest = False
        for slot in slots:
            if slot.remaining == 0:
                continue
            period = slot.period_of(when)
            if period != slot.last:
                reasons.append(f"{slot.name} {period}")
                slots_spent.append(slot.name)
            elif index == oldest_index:
                # restic's `val != b.Last || nr == len(list)-1`: the policy has slots left, so it
                # spends one on the oldest backup to stretch the history as far back as possible.
                kept_as_oldest = True
            else:
                continue
            slot.last = period
            slot.remaining -= 1
        if kept_as_oldest:
            reasons.append("oldest")
        if index == 0:
            reasons.append("newest")
        if reasons:
            keep.append(KeptBackup(ref.backup_id, ref.created_at, reasons, slots_spent))
        else:
            delete.append(ref)

    return RetentionPlan(keep=keep, delete=delete)
