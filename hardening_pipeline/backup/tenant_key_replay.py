"""A key ledger put back into the store: refused, against what the store's writer cannot undo.

The nightly writer key may put objects into the store, so it may put back a ``ledger.json``
kept from before an erasure, or one of another deployment that shares the master key: its
signature verifies, and the erased tenant's key is in it. A reader therefore holds the store's
copy against witnesses that key cannot rewrite: the ledger id and version every retained backup
recorded in its manifest (signed, and locked), and the database's copy when it is reachable.
A ledger of another deployment, one older than a version already seen, or one that lacks an
erasure the database's copy records is refused. What the ledger is: ``backup/tenant_keys.py``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from hardening_pipeline.backup.manifest import Manifest
from hardening_pipeline.backup.tenant_keys import (
    LEDGER_KEY,
    MANIFEST_LEDGER_ID,
    MANIFEST_LEDGER_VERSION,
    RECOVER_COMMAND,
    Ledger,
    LedgerError,
)


class LedgerReplayedError(LedgerError):
    """The store's ledger copy is older than, or foreign to, what this deployment has seen."""


@dataclass(frozen=True)
class LedgerMark:
    """A ledger version this deployment is known to have reached, and who says so."""

    ledger_id: str | None
    version: int
    witness: str  # "backup <id>" or "the database's copy"

    @property
    def reached(self) -> str:
        verb = "holds" if self.witness.startswith("the database") else "was written under"
        return f"the version {self.version} {self.witness} {verb}"


def manifest_metadata(ledger: Ledger) -> dict[str, str]:
    """What a backup's manifest records of the ledger it was written under."""
    if ledger.ledger_id is None:
        return {}
    return {MANIFEST_LEDGER_ID: ledger.ledger_id, MANIFEST_LEDGER_VERSION: str(ledger.version)}


def recorded_mark(manifest: Manifest) -> LedgerMark | None:
    """The ledger a backup was written under; None for backups written before it was recorded."""
    ledger_id = manifest.metadata.get(MANIFEST_LEDGER_ID)
    version = manifest.metadata.get(MANIFEST_LEDGER_VERSION, "")
    if not ledger_id or not version.isdigit():
        return None
    return LedgerMark(ledger_id, int(version), f"backup {manifest.backup_id}")


def witnessed_marks(
    manifests: Iterable[Manifest], database: Ledger | None, first: Manifest | None = None
) -> list[LedgerMark]:
    """Every mark, the deciding ones first: the database's copy, ``first``, then newest first."""
    ordered = sorted(manifests, key=lambda m: m.created_at, reverse=True)
    marks = [m for m in map(recorded_mark, [*([first] if first else []), *ordered]) if m]
    if database is not None:
        marks.insert(0, LedgerMark(database.ledger_id, database.version, "the database's copy"))
    return marks


def deployment_mark(marks: list[LedgerMark]) -> tuple[str | None, LedgerMark | None]:
    """This deployment's ledger id, and the highest version seen under it."""
    ledger_id = next((m.ledger_id for m in marks if m.ledger_id), None)
    same = [m for m in marks if m.ledger_id in (ledger_id, None)]
    return ledger_id, max(same, key=lambda m: m.version, default=None)


def check_not_replayed(
    ledger: Ledger,
    *,
    manifests: Iterable[Manifest],
    database: Ledger | None,
    first: Manifest | None = None,
    nothing_done: str = "nothing was decrypted with it",
    which: str = "the store's tenant key ledger",
) -> None:
    """Refuse the store's ``ledger`` when a witness shows it was put back; silent otherwise.

    Backups written before manifests recorded the ledger witness nothing, so a store that only
    holds those is read as before.
    """
    marks = witnessed_marks(manifests, database, first)
    ledger_id, highest = deployment_mark(marks)
    fix = (
        f"{nothing_done}: find out who wrote {LEDGER_KEY} (the store's writer key can), then run "
        f"`{RECOVER_COMMAND}`, which keeps every erasure the database's copy and the audit log "
        "record"
    )
    if ledger_id is not None and ledger.ledger_id != ledger_id:
        witness = next(m for m in marks if m.ledger_id == ledger_id).witness
        raise LedgerReplayedError(
            f"{which} (ledger id {ledger.ledger_id or 'none'}) is not the "
            f"one {witness} names (ledger id {ledger_id}), so it was put back "
            f"from another deployment or from before the ledger had one; {fix}."
        )
    if highest is not None and ledger.version < highest.version:
        raise LedgerReplayedError(
            f"{which} is version {ledger.version}, older than "
            f"{highest.reached}, so it was put back and may hold keys erased since; {fix}."
        )
    kept = {e.key_id for e in ledger.erased}
    lost = [e for e in (database.erased if database else ()) if e.key_id not in kept]
    if lost:
        raise LedgerReplayedError(
            f"{which} lacks the erasure of tenant {lost[0].tenant_id} (key "
            f"id {lost[0].key_id}) that the database's copy records, so it was put back; {fix}."
        )
