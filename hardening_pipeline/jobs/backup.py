"""The backup job: take the backup, then check the rows a restore would trip over."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypedDict, Unpack

from hardening_pipeline.alerts.runbook import runbook_link
from hardening_pipeline.backup.crypto import Keyring
from hardening_pipeline.backup.locks import lock_schedule, require_lockable
from hardening_pipeline.backup.nightly import BackupResult, run_backup
from hardening_pipeline.backup.store import BackupStore
from hardening_pipeline.canaries import CanaryResult, run_canaries

# The canaries whose findings a restore trips over: rows the restored foreign keys refuse.
INTEGRITY_CANARIES = ["orphaned_messages", "tenant_misalignment"]


class BackupOptions(TypedDict, total=False):
    """``run_backup``'s keyword options, typed for ``backup_job``'s pass-through."""

    dry_run: bool
    workers: int
    on_object: Callable[[str, int, int], None] | None
    schemas: Sequence[str]
    pg_dump_path: str | None


@dataclass(frozen=True)
class BackupJobResult:
    backup: BackupResult
    # Integrity canaries that fired: the backup holds rows a restore cannot load.
    blocking: list[CanaryResult]
    runbook_base_url: str | None = None
    # Kept backups whose lock this run extended to their weekly or monthly horizon.
    locks_extended: tuple[str, ...] = ()

    @property
    def passed(self) -> bool:
        return not self.blocking

    @property
    def subject(self) -> str:
        return f"backup {self.backup.backup_id} will not restore cleanly"

    @property
    def failure(self) -> str | None:
        if not self.blocking:
            return None
        first = self.blocking[0]
        return (
            f"canary {first.name} finds {first.summary()}; a restore cannot load such rows, so "
            f"fix them ({runbook_link(first.runbook_anchor, self.runbook_base_url)}) and take "
            "the backup again."
        )


def backup_job(
    url: str,
    store: BackupStore,
    keyring: Keyring,
    *,
    runbook_base_url: str | None = None,
    **options: Unpack[BackupOptions],
) -> BackupJobResult:
    """Back up ``url``; red (backup kept) when an integrity canary finds rows it cannot restore.

    ``options`` are ``run_backup``'s (``dry_run``, ``workers``, ``on_object``, ``schemas``,
    ``pg_dump_path``), passed through so the two cannot drift apart. A backup with bad rows
    beats none, so it is stored either way; but the drill would fail on those rows weeks later,
    so the run says so now.

    On a locked store the bucket must have Object Lock enabled (checked before anything is
    read), and afterwards the keepers this backup made final get their longer locks.
    """
    writes = not options.get("dry_run", False)
    if writes:
        require_lockable(store)
    result = run_backup(url, store, keyring, **options)
    extended = lock_schedule(store, keyring) if writes and store.object_lock else []
    blocking = [
        r
        for r in run_canaries(url, names=INTEGRITY_CANARIES)
        if not r.passed and r.severity == "error"
    ]
    return BackupJobResult(result, blocking, runbook_base_url, tuple(extended))
