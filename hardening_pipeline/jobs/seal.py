"""The seal job: seal the audit rows added since the last seal, then verify the whole chain."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from hardening_pipeline.backup.crypto import Keyring
from hardening_pipeline.backup.store import BackupStore
from hardening_pipeline.db.connection import connect
from hardening_pipeline.hardening.seals import (
    SealRun,
    SealVerification,
    seal_audit_log,
    verify_audit_seals,
)
from hardening_pipeline.hardening.seals.format import has_format_2
from hardening_pipeline.hardening.seals.horizon import DEFAULT_WAIT_SECONDS, max_seal_lag


@dataclass(frozen=True)
class SealJobResult:
    # None with verify_only: nothing was sealed.
    run: SealRun | None
    verification: SealVerification

    @property
    def passed(self) -> bool:
        return self.verification.passed

    @property
    def subject(self) -> str:
        return "the audit seal chain is broken"

    @property
    def failure(self) -> str | None:
        if self.verification.passed:
            return None
        return f"{self.verification.detail}; {self.verification.fix}"


def seal_job(
    url: str,
    *,
    store: BackupStore,
    keyring: Keyring,
    actor: str,
    verify_only: bool = False,
    full: bool = False,
    wait_seconds: float = DEFAULT_WAIT_SECONDS,
    anchor_path: Path | None = None,
) -> SealJobResult:
    """Seal what is new (unless ``verify_only``) and verify the chain against the store copies
    and the anchor at ``anchor_path``; the full re-hashes are recorded as ``actor``."""
    max_lag = max_seal_lag()  # a bad setting stops the job before anything is sealed
    run = None
    if not verify_only:
        run = seal_audit_log(
            url,
            store=store,
            keyring=keyring,
            actor=actor,
            wait_seconds=wait_seconds,
            anchor_path=anchor_path,
        )
    verification = verify_audit_seals(
        url,
        store=store,
        keyring=keyring,
        full=full,
        record_as=actor,
        anchor_path=anchor_path,
        max_lag=max_lag,
    )
    return SealJobResult(run, verification)


def sealing_not_ready(url: str) -> str | None:
    """Why this database cannot be sealed yet (the kit's schema is not installed), or None.

    A fresh deployment starts its sealing before anyone migrated: that is a state to wait in,
    not a failure to alert on every minute.
    """
    with connect(url) as conn:
        missing = "SELECT to_regclass('hardening.audit_seals') IS NULL AS missing"
        if conn.execute(missing).fetchone()["missing"]:
            return "the database has no audit seal tables yet"
        if not has_format_2(conn):
            return "the database lacks migration 014_audit_seal_v2, which new seals need"
    return None
