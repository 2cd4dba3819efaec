"""Is there a recent, verified backup? The dead man's switch for the nightly schedule.

A schedule that silently stops (a dead daemon, a disabled workflow, a revoked key) produces no
failed run and so no failure alert. This check looks at the store itself: the newest backup with
a verified manifest must be younger than ``max_age`` (26 hours: a nightly run plus slack). It is
a line of ``hardening status --backup-freshness``, an hourly Dagster asset check, and a step of
the hourly GitHub workflow, so it still fires when Dagster is the thing that died.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from hardening_pipeline.backup.catalog import list_backups
from hardening_pipeline.backup.crypto import Keyring
from hardening_pipeline.backup.store import BackupStore

DEFAULT_MAX_AGE = timedelta(hours=26)


@dataclass(frozen=True)
class Freshness:
    passed: bool
    detail: str
    newest_backup_id: str | None
    age: timedelta | None


def _hours(age: timedelta) -> str:
    return f"{age.total_seconds() / 3600:.1f} h"


def check_backup_freshness(
    store: BackupStore,
    keyring: Keyring,
    *,
    max_age: timedelta = DEFAULT_MAX_AGE,
    now: datetime | None = None,
) -> Freshness:
    """Never raises for what it finds; a store that cannot be listed is a red result."""
    now = now or datetime.now(UTC)
    try:
        catalog = list_backups(store, keyring, now=now)
    except Exception as exc:  # any failure to look is itself a reason to alert
        return Freshness(False, f"could not list {store.describe()}: {exc}", None, None)
    newest = catalog.newest
    if newest is None:
        extra = f" ({len(catalog.invalid)} failed verification)" if catalog.invalid else ""
        return Freshness(False, f"no verified backup in {store.describe()}{extra}", None, None)
    age = now - newest.created_at
    if age > max_age:
        return Freshness(
            False,
            f"newest verified backup {newest.backup_id} is {_hours(age)} old "
            f"(limit {_hours(max_age)})",
            newest.backup_id,
            age,
        )
    return Freshness(
        True,
        f"newest verified backup {newest.backup_id} is {_hours(age)} old",
        newest.backup_id,
        age,
    )
