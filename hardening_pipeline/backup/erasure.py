"""``erase-tenant``: destroy one tenant's data key everywhere the key ledger lives.

The tenant's objects stay in every retained (locked) backup, but under a key nobody holds any
more: not the store, not the database, not the master key's holder. The erasure is planned
first (which key, which backups), so the confirmation can name both; then, holding the backup's
job lock so no backup writes the ledger meanwhile, the key moves to the ledger's ``erased`` list
in both copies, the audit log records it (and is sealed), and a certificate says what was
destroyed and when.

The store's copy is written first, so a database that refuses afterwards (or a crash) leaves the
key destroyed but the erasure incomplete; running the command again finds what is missing
(``erasure_records.py``) and completes it with the original erasure time. The table rewrite that
removes the database copy's old row version reports whoever could still see it
(``ledger_rewrite.py``), and the certificate says so instead of claiming it gone.
"""

from __future__ import annotations

import contextlib
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import psycopg
from psycopg.types.json import Jsonb

from hardening_pipeline.backup.catalog import list_backups
from hardening_pipeline.backup.crypto import Keyring
from hardening_pipeline.backup.erased_audit import record_erased_audit
from hardening_pipeline.backup.erasure_certificate import ErasureCertificate
from hardening_pipeline.backup.erasure_certificate import write_certificate as write_certificate
from hardening_pipeline.backup.erasure_records import (
    ERASE_COMMAND,
    audit_rows,
    can_record,
    erasure_gaps,
)
from hardening_pipeline.backup.ledger_rewrite import LedgerRewrite, rewrite_ledger_table
from hardening_pipeline.backup.store import BackupStore, StoreError
from hardening_pipeline.backup.store.version_holds import version_holds
from hardening_pipeline.backup.tenant_digests import KEYED_DIGESTS_SINCE
from hardening_pipeline.backup.tenant_key_copies import (
    LedgerComparison,
    agreed_ledger,
    compare_copies,
    read_db_ledger,
    read_store_ledger,
    upsert_db_copy,
)
from hardening_pipeline.backup.tenant_keys import (
    LEDGER_KEY,
    ErasedKey,
    Ledger,
    new_ledger_id,
    sign_ledger,
)
from hardening_pipeline.db.connection import connect
from hardening_pipeline.db.job_locks import job_locks_available, take_job_lock
from hardening_pipeline.errors import CheckFailed, ConfigError, HardeningError

# How long erase-tenant waits for a running backup to finish before giving up.
ERASE_LOCK_TIMEOUT_MS = 60_000
# How long it waits for sessions that could still see the ledger's old row version.
OLD_VERSIONS_WAIT_SECONDS = 30.0


class ErasureFailed(CheckFailed):
    """The erasure could not be completed everywhere, and so was not done at all."""


class ErasureIncomplete(ConfigError):
    """The key is destroyed in some copy, but a step is missing: a re-run completes it."""


@dataclass(frozen=True)
class ErasurePlan:
    """What ``erase-tenant`` would destroy: the tenant's key and the backups it opens; or,
    for a key an earlier run already destroyed (``erased``), what that run left undone."""

    tenant_id: str
    key_id: str
    backups: tuple[str, ...]
    erased: ErasedKey | None = None
    missing: tuple[str, ...] = ()
    # Those of ``backups`` whose manifest (format 1) holds plain digests of the tenant's tables.
    plain_digests: tuple[str, ...] = ()

    def confirmation(self) -> str:
        older = (
            f" {len(self.plain_digests)} of them, written before digests were keyed, keep plain "
            "SHA-256 digests of its tables in their manifests until retention deletes them."
            if self.plain_digests
            else ""
        )
        return (
            f"Erase tenant {self.tenant_id}? Its key {self.key_id} is destroyed, and its data in "
            f"{len(self.backups)} retained backup(s) can never be decrypted again, by anyone."
            + older
        )

    def incomplete(self, missing: list[str] | tuple[str, ...], cause: str) -> ErasureIncomplete:
        return ErasureIncomplete(
            f"the erasure of tenant {self.tenant_id} (key {self.key_id}) is incomplete "
            f"({', '.join(missing)}) because {cause}; run "
            f"`{ERASE_COMMAND} {self.tenant_id}` to complete it once that is fixed."
        )


def normalise_tenant(tenant_id: str) -> str:
    try:
        return str(uuid.UUID(tenant_id))
    except ValueError:
        raise ConfigError(f"tenant {tenant_id!r} is not a UUID; pass the tenant's id.") from None


def plan_erasure(
    store: BackupStore,
    keyring: Keyring,
    url: str,
    tenant_id: str,
    *,
    evidence_root: Path | None = None,
) -> ErasurePlan:
    """Find the tenant's key and every retained backup that holds an object under it; or the
    earlier erasure of it that a copy, the audit log or ``evidence_root`` lacks."""
    tenant = normalise_tenant(tenant_id)
    with connect(url) as conn:
        comparison = agreed_ledger(store, conn, keyring, "nothing was erased")
        ledger = comparison.agreed
        entry = ledger.tenants.get(tenant)
        gaps = (
            [] if entry is not None else erasure_gaps(conn, comparison, evidence_root=evidence_root)
        )
    if entry is None:
        gap = next((g for g in reversed(gaps) if g.erased.tenant_id == tenant), None)
        if gap is not None:
            earlier = gap.erased
            return ErasurePlan(tenant, earlier.key_id, earlier.backups, earlier, gap.missing)
        done = next((e for e in reversed(ledger.erased) if e.tenant_id == tenant), None)
        if done is not None:
            raise ConfigError(
                f"tenant {tenant} was already erased at {done.erased_at.isoformat()} (key id "
                f"{done.key_id}); there is nothing left to erase."
            )
        raise ConfigError(
            f"the key ledger holds no key for tenant {tenant}; check the id (a tenant gets its "
            "key with its first backup)."
        )
    refuse_if_held(store, tenant)
    catalog = list_backups(store, keyring)
    holding = [
        b.manifest
        for b in catalog.valid
        if b.manifest is not None
        and any(o.tenant_key_id == entry.key_id for o in b.manifest.objects)
    ]
    plain = [m.backup_id for m in holding if m.format_version < KEYED_DIGESTS_SINCE]
    backups = tuple(m.backup_id for m in holding)
    return ErasurePlan(tenant, entry.key_id, backups, plain_digests=tuple(plain))


def _record(conn: psycopg.Connection, erased: ErasedKey, completed_at: datetime | None) -> int:
    """The audit row (migration 021 applied)."""
    details = {
        "event": "tenant_key_erased",
        "tenant_id": erased.tenant_id,
        "key_id": erased.key_id,
        "erased_at": erased.erased_at.isoformat(),
        "backups": list(erased.backups),
        # A re-run recording an erasure an earlier run left off the record.
        **({"recorded_late_at": completed_at.isoformat()} if completed_at else {}),
    }
    row = conn.execute(
        "SELECT hardening.record_tenant_erasure(%s, %s) AS id", (erased.tenant_id, Jsonb(details))
    ).fetchone()
    return int(row["id"])


@dataclass(frozen=True)
class _Written:
    erased: ErasedKey
    ledger: Ledger
    audit_id: int | None
    database_available: bool


def erase_tenant(
    store: BackupStore,
    keyring: Keyring,
    url: str,
    plan: ErasurePlan,
    *,
    seal_anchor: Path | None = None,
    now: datetime | None = None,
    old_versions_wait: float | None = None,
) -> ErasureCertificate:
    """Destroy the planned key in both ledger copies, record and seal it, and verify; for a
    plan of an earlier, incomplete erasure, do what it left undone."""
    now = now or datetime.now(UTC)
    written = _write_ledger_and_record(store, keyring, url, plan, now)
    wait = OLD_VERSIONS_WAIT_SECONDS if old_versions_wait is None else old_versions_wait
    rewrite = _rewrite(url, plan, wait) if written.database_available else None
    erased = written.erased
    certificate = ErasureCertificate(
        tenant_id=plan.tenant_id,
        key_id=plan.key_id,
        erased_at=erased.erased_at.isoformat(),
        backups=list(erased.backups),
        ledger_version=written.ledger.version,
        store_copy=f"{store.describe()}/{LEDGER_KEY} (older versions deleted)",
        database_copy=(
            f"hardening.tenant_key_ledger ({rewrite.describe()})"
            if rewrite is not None
            else "none (migration 021 not applied)"
        ),
        audit_event_id=written.audit_id,
        sealed=_seal(url, store, keyring, written.audit_id, seal_anchor),
        old_row_versions_removed=rewrite is None or rewrite.removed,
        old_row_version_holders=list(rewrite.holders) if rewrite is not None else [],
        completed_at=now.isoformat() if plan.erased is not None else None,
        plain_digests=list(plan.plain_digests),
    )
    certificate.verified = verify_erased(store, keyring, url, plan.key_id)
    return certificate


def refuse_if_held(store: BackupStore, tenant_id: str) -> None:
    """Refuse before anything is destroyed when a stored ledger version cannot be deleted.

    Every older version of the ledger holds the key, and a version under a retention or a
    legal hold (which the writer key can set) would keep it past the erasure.
    """
    held = version_holds(store, LEDGER_KEY)
    if held:
        raise ErasureFailed(
            f"{held[0].describe()}, so it cannot be deleted and would keep tenant {tenant_id}'s "
            f"key; nothing was erased: {held[0].lift}, then run erase-tenant again"
            + (f" ({len(held)} versions are held)." if len(held) > 1 else ".")
        )


def _write_ledger_and_record(
    store: BackupStore, keyring: Keyring, url: str, plan: ErasurePlan, now: datetime
) -> _Written:
    """Under the backup's job lock: the store copy, then the audit row and the database copy
    in one transaction. A database failure after the store copy was written is an incomplete
    erasure, said so in one sentence with the command that completes it."""
    store_written = plan.erased is not None
    committed = False
    try:
        with connect(url) as lock_conn:
            if job_locks_available(lock_conn):
                take_job_lock(lock_conn, "backup", lock_timeout_ms=ERASE_LOCK_TIMEOUT_MS)
            with connect(url) as conn:
                comparison = compare_copies(store, conn, keyring)
                erased, new = _next_ledger(comparison, plan, now)
                if new is not None:
                    refuse_if_held(store, plan.tenant_id)
                signed = sign_ledger(new, keyring) if new is not None else b""
                # While the rows are readable: the seals of the audit rows backups lose with it.
                record_erased_audit(store, conn, [plan.tenant_id])
                if new is not None:
                    _replace_store_copy(store, signed, comparison, plan)
                    store_written = True
                # The audit row and the database copy commit together: no erasure off the record.
                audit_id = None
                if can_record(conn):
                    audit_id = audit_rows(conn, [erased]).get(plan.key_id) or _record(
                        conn, erased, now if plan.erased is not None else None
                    )
                if new is not None and comparison.database_available:
                    upsert_db_copy(conn, new, signed)
                conn.commit()
                committed = True
            lock_conn.rollback()
    except psycopg.Error as exc:
        cause = f"the database refused ({str(exc).strip().splitlines()[0]})"
        if not store_written:
            raise ErasureFailed(
                f"{cause}; nothing was erased: run `{ERASE_COMMAND} {plan.tenant_id}` again."
            ) from exc
        missing = ["the database copy's table was not rewritten", "no certificate"]
        if not committed:
            missing = list(plan.missing) or [
                "the database copy does not record it",
                "no audit row",
                "no certificate",
            ]
        raise plan.incomplete(missing, cause) from exc
    ledger = new if new is not None else comparison.agreed
    return _Written(erased, ledger, audit_id, comparison.database_available)


def _next_ledger(
    comparison: LedgerComparison, plan: ErasurePlan, now: datetime
) -> tuple[ErasedKey, Ledger | None]:
    """The erasure, and the ledger to write to both copies (None when both record it)."""
    ledger = comparison.agreed
    changed = ConfigError(
        f"the key ledger changed since the erasure of tenant {plan.tenant_id} was planned; "
        f"nothing more was erased: run `{ERASE_COMMAND} {plan.tenant_id}` again."
    )
    if comparison.problems:
        raise changed
    if plan.erased is None:
        entry = ledger.tenants.get(plan.tenant_id)
        if entry is None or entry.key_id != plan.key_id:
            raise changed
        erased = ErasedKey(plan.tenant_id, plan.key_id, now, plan.backups)
        tenants = {t: k for t, k in ledger.tenants.items() if t != plan.tenant_id}
        ledger_id = ledger.ledger_id or new_ledger_id()
        return erased, Ledger(ledger.version + 1, now, tenants, (*ledger.erased, erased), ledger_id)
    erased = ledger.erased_key(plan.key_id)
    if erased is None:
        raise changed
    copies = [comparison.store] + ([comparison.database] if comparison.database_available else [])
    if all(c is not None and c.erased_key(plan.key_id) for c in copies) and (
        not comparison.database_available or comparison.store_bytes == comparison.database_bytes
    ):
        return erased, None
    ledger_id = ledger.ledger_id or new_ledger_id()
    return erased, Ledger(ledger.version + 1, now, ledger.tenants, ledger.erased, ledger_id)


def _rewrite(url: str, plan: ErasurePlan, wait_seconds: float) -> LedgerRewrite:
    """After the lock is released (its transaction is older than the write and would keep the
    old row version), rewrite the table once nothing older can still see it."""
    try:
        with connect(url) as conn:
            return rewrite_ledger_table(conn, wait_seconds=wait_seconds)
    except psycopg.Error as exc:
        raise plan.incomplete(
            ["the database copy's table was not rewritten", "no certificate"],
            f"VACUUM FULL failed ({str(exc).strip().splitlines()[0]})",
        ) from exc


def _replace_store_copy(
    store: BackupStore, signed: bytes, comparison: LedgerComparison, plan: ErasurePlan
) -> None:
    """The store's new copy, every older version deleted; on failure the old copy is put back.

    Deleting needs a key allowed to (on B2 the pruning key): when the store refuses, the key
    would live on in the bucket's version history, so the erasure stops with nothing erased.
    """
    try:
        store.replace_unlocked(LEDGER_KEY, signed, forget_older=True)
    except StoreError as exc:
        previous = comparison.store_bytes or comparison.database_bytes
        if previous is not None:
            # Current again: the copy written a moment ago records an erasure that did not
            # happen, and stays only as an older version nobody reads.
            with contextlib.suppress(StoreError):
                store.replace_unlocked(LEDGER_KEY, previous)
        if plan.erased is not None:
            raise plan.incomplete(
                plan.missing,
                f"the store refused to delete the older versions of {LEDGER_KEY} ({exc}): use "
                "the pruning key, BACKUP_PRUNE_KEY_ID",
            ) from exc
        # Held since the check before the write (the writer key may lock any version).
        with contextlib.suppress(StoreError):
            refuse_if_held(store, plan.tenant_id)
        raise ErasureFailed(
            f"the store refused to delete the older versions of {LEDGER_KEY} ({exc}), so tenant "
            f"{plan.tenant_id}'s key would live on there; nothing was erased: run erase-tenant "
            "with a store key allowed to delete files (the pruning key, BACKUP_PRUNE_KEY_ID)."
        ) from exc


def verify_erased(store: BackupStore, keyring: Keyring, url: str, key_id: str) -> list[str]:
    """Read both copies back: neither may hold the key, and both must record its erasure."""
    found = []
    copies: list[tuple[str, Ledger | None]] = [
        ("store copy", (read_store_ledger(store, keyring) or (None, b""))[0])
    ]
    with connect(url) as conn:
        copies.append(("database copy", (read_db_ledger(conn, keyring) or (None, b""))[0]))
    for where, copy in copies:
        if copy is None:
            continue
        if key_id in copy.key_ids() or copy.erased_key(key_id) is None:
            raise HardeningError(f"the {where} of the key ledger still holds key {key_id}.")
        found.append(f"{where} (version {copy.version}) holds no key {key_id}, records its erasure")
    return found


def _seal(
    url: str, store: BackupStore, keyring: Keyring, audit_id: int | None, anchor: Path | None
) -> str:
    """Seal the audit log now, so the erasure's row is under a seal at once."""
    if audit_id is None:
        return "not recorded (migration 021 not applied)"
    from hardening_pipeline.hardening.seals.sealing import seal_audit_log

    try:
        run = seal_audit_log(url, store, keyring, actor="cli:erase-tenant", anchor_path=anchor)
    except (HardeningError, psycopg.Error) as exc:
        return f"not sealed yet ({str(exc).strip().splitlines()[0]}); run `hardening seal`"
    covering = next((s.seq for s in run.seals if s.from_id <= audit_id <= s.to_id), None)
    if covering is None:
        # A row an earlier run recorded may be under an earlier seal already.
        with connect(url) as conn:
            row = conn.execute(_SEALED_IN, (audit_id,)).fetchone()
        covering = row["seq"] if row else None
    if covering is None:
        return "not sealed yet (outside this run's horizon); run `hardening seal`"
    return f"sealed in seal {covering}"


_SEALED_IN = "SELECT min(seq) AS seq FROM hardening.audit_seals WHERE %s BETWEEN from_id AND to_id"
