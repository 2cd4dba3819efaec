"""Which stored versions of one key nobody may delete now: a retention or a legal hold on them.

An object written without a lock can be locked afterwards by any key allowed to set retention
or legal holds, the nightly writer key included (B2's capabilities apply to every file under the
key's bucket and name prefix, and the writer writes the key ledger under the same prefix as the
locked backups). A version locked like that outlives every delete, so whatever must stay
deletable (the tenant key ledger) is checked here before it is relied on. A folder has no
versions and no locks: nothing is ever held there.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from hardening_pipeline.backup.store.interface import BackupStore, check_key
from hardening_pipeline.backup.store.s3_errors import call_s3
from hardening_pipeline.backup.store.s3_store import S3Store


@dataclass(frozen=True)
class VersionHold:
    """One version of a key that cannot be deleted yet, and what holds it."""

    key: str
    version_id: str
    written_at: datetime | None
    retain_until: datetime | None
    mode: str | None
    legal_hold: bool

    def describe(self) -> str:
        written = f" (written {self.written_at:%Y-%m-%d %H:%M}Z)" if self.written_at else ""
        holds = []
        if self.retain_until is not None:
            holds.append(f"a {self.mode or 'retention'} lock until {self.retain_until.isoformat()}")
        if self.legal_hold:
            holds.append("a legal hold")
        return f"version {self.version_id} of {self.key}{written} is under {' and '.join(holds)}"

    @property
    def lift(self) -> str:
        """How the hold goes away, if anything but time can lift it."""
        if self.legal_hold:
            return "remove the legal hold with a key holding writeFileLegalHolds"
        if self.mode == "GOVERNANCE":
            return "lift the GOVERNANCE lock with a key holding bypassGovernance"
        assert self.retain_until is not None
        return (
            "a COMPLIANCE lock cannot be lifted by anyone, so wait until "
            f"{self.retain_until:%Y-%m-%d %H:%M}Z"
        )


def version_holds(store: BackupStore, key: str) -> list[VersionHold]:
    """Every stored version of ``key`` under a retention still running or a legal hold.

    B2 answers with the lock of a version only to a key holding ``readFileRetentions`` (and
    ``readFileLegalHolds`` for holds); without them a held version looks free here, and the
    delete that follows fails instead.
    """
    if not isinstance(store, S3Store):
        return []
    full = store.prefix + check_key(key)
    where, endpoint = store.describe(), store.endpoint
    now = store.clock()
    held = []
    for version_id in store.version_ids(key):
        head: dict[str, Any] = call_s3(
            f"read the lock of {key}",
            store.client.head_object,
            where=where,
            endpoint=endpoint,
            Bucket=store.bucket,
            Key=full,
            VersionId=version_id,
        )
        until = head.get("ObjectLockRetainUntilDate")
        until = until.astimezone(UTC) if until is not None and until > now else None
        legal = head.get("ObjectLockLegalHoldStatus") == "ON"
        if until is not None or legal:
            modified = head.get("LastModified")
            held.append(
                VersionHold(
                    key,
                    version_id,
                    modified.astimezone(UTC) if modified else None,
                    until,
                    head.get("ObjectLockMode") if until else None,
                    legal,
                )
            )
    return held
