"""``erase-tenant``: destroy one tenant's data key everywhere the key ledger lives.

The tenant's objects stay in every retained (locked) backup, but under a key nobody holds any
more: not the store, not the database, not the master key's holder. The erasure is planned
first (which key, which backups), so the confirmation can name both; then, holding the backup's
job lock so no backup writes the ledger meanwhile, the key moves to the ledger's ``erased`` list
in both copies, the audit log records it (and is sealed), and a certificate says what was
destroyed and when.
"""

from __future__ import annotations

import contextlib
import json
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import psycopg
from psycopg.types.json import Jsonb

from hardening_pipeline.backup.catalog import list_backups
from hardening_pipeline.backup.crypto import Keyring
from hardening_pipeline.backup.erased_audit import record_erased_audit
from hardening_pipeline.backup.store import BackupStore, StoreError
from hardening_pipeline.backup.tenant_key_copies import (
    LedgerComparison,
    agreed_ledger,
    compare_copies,
    read_db_ledger,
    read_store_ledger,
    rewrite_db_copy,
    write_db_copy,
)
from hardening_pipeline.backup.tenant_keys import (
    LEDGER_KEY,
    ErasedKey,
    Ledger,
    sign_ledger,
)
from hardening_pipeline.db.connection import connect
from hardening_pipeline.db.job_locks import job_locks_available, take_job_lock
from hardening_pipeline.errors import CheckFailed, ConfigError, HardeningError
from hardening_pipeline.reports import report_stamp

# How long erase-tenant waits for a running backup to finish before giving up.
ERASE_LOCK_TIMEOUT_MS = 60_000


class ErasureFailed(CheckFailed):
    """The erasure could not be completed everywhere, and so was not done at all."""


@dataclass(frozen=True)
class ErasurePlan:
    """What ``erase-tenant`` would destroy: the tenant's key and the backups it opens."""

    tenant_id: str
    key_id: str
    backups: tuple[str, ...]

    def confirmation(self) -> str:
        return (
            f"Erase tenant {self.tenant_id}? Its key {self.key_id} is destroyed, and its data in "
            f"{len(self.backups)} retained backup(s) can never be decrypted again, by anyone."
        )


@dataclass
class ErasureCertificate:
    """The record an auditor keeps: which key, which backups, destroyed when, and where."""

    tenant_id: str
    key_id: str
    erased_at: str
    backups: list[str]
    ledger_version: int
    store_copy: str
    database_copy: str
    audit_event_id: int | None
    sealed: str
    verified: list[str] = field(default_factory=list)

    def markdown(self) -> str:
        lines = [
            f"# Erasure certificate: tenant {self.tenant_id}",
            "",
            f"- tenant key destroyed: `{self.key_id}` at {self.erased_at}",
            f"- key ledger version: {self.ledger_version}",
            f"- store copy: {self.store_copy}",
            f"- database copy: {self.database_copy}",
            f"- audit log: event {self.audit_event_id}, {self.sealed}",
            f"- retained backups holding the tenant's data, now unreadable ({len(self.backups)}):",
            *[f"  - {b}" for b in self.backups],
            "- checked after the erasure:",
            *[f"  - {v}" for v in self.verified],
        ]
        return "\n".join(lines) + "\n"


def normalise_tenant(tenant_id: str) -> str:
    try:
        return str(uuid.UUID(tenant_id))
    except ValueError:
        raise ConfigError(f"tenant {tenant_id!r} is not a UUID; pass the tenant's id.") from None


def plan_erasure(store: BackupStore, keyring: Keyring, url: str, tenant_id: str) -> ErasurePlan:
    """Find the tenant's key and every retained backup that holds an object under it."""
    tenant = normalise_tenant(tenant_id)
    with connect(url) as conn:
        comparison = agreed_ledger(store, conn, keyring, "nothing was erased")
    ledger = comparison.agreed
    entry = ledger.tenants.get(tenant)
    if entry is None:
        done = next((e for e in ledger.erased if e.tenant_id == tenant), None)
        if done is not None:
            raise ConfigError(
                f"tenant {tenant} was already erased at {done.erased_at.isoformat()} (key id "
                f"{done.key_id}); there is nothing left to erase."
            )
        raise ConfigError(
            f"the key ledger holds no key for tenant {tenant}; check the id (a tenant gets its "
            "key with its first backup)."
        )
    catalog = list_backups(store, keyring)
    backups = tuple(
        b.backup_id
        for b in catalog.valid
        if b.manifest is not None
        and any(o.tenant_key_id == entry.key_id for o in b.manifest.objects)
    )
    return ErasurePlan(tenant, entry.key_id, backups)


def _record(conn: psycopg.Connection, plan: ErasurePlan, erased_at: datetime) -> int | None:
    """The audit row; None on a database migrated before 021 (the certificate says so)."""
    exists = conn.execute(
        "SELECT to_regprocedure('hardening.record_tenant_erasure(uuid, jsonb)') IS NOT NULL AS ok"
    ).fetchone()
    if not exists["ok"]:
        return None
    details = {
        "event": "tenant_key_erased",
        "tenant_id": plan.tenant_id,
        "key_id": plan.key_id,
        "erased_at": erased_at.isoformat(),
        "backups": list(plan.backups),
    }
    row = conn.execute(
        "SELECT hardening.record_tenant_erasure(%s, %s) AS id", (plan.tenant_id, Jsonb(details))
    ).fetchone()
    return int(row["id"])


def erase_tenant(
    store: BackupStore,
    keyring: Keyring,
    url: str,
    plan: ErasurePlan,
    *,
    seal_anchor: Path | None = None,
    now: datetime | None = None,
) -> ErasureCertificate:
    """Destroy the planned key in both ledger copies, record and seal it, and verify."""
    erased_at = now or datetime.now(UTC)
    with connect(url) as lock_conn:
        if job_locks_available(lock_conn):
            take_job_lock(lock_conn, "backup", lock_timeout_ms=ERASE_LOCK_TIMEOUT_MS)
        with connect(url) as conn:
            comparison = compare_copies(store, conn, keyring)
            ledger = comparison.agreed
            entry = ledger.tenants.get(plan.tenant_id)
            if comparison.problems or entry is None or entry.key_id != plan.key_id:
                raise ConfigError(
                    f"the key ledger changed since the erasure of tenant {plan.tenant_id} was "
                    "planned; nothing was erased: run erase-tenant again."
                )
            tenants = {t: k for t, k in ledger.tenants.items() if t != plan.tenant_id}
            erased = (
                *ledger.erased,
                ErasedKey(plan.tenant_id, plan.key_id, erased_at, plan.backups),
            )
            new = Ledger(ledger.version + 1, erased_at, tenants, erased)
            signed = sign_ledger(new, keyring)
            # While the rows are still readable: the seals of the rows the backups lose with it.
            record_erased_audit(store, conn, [plan.tenant_id])
            _replace_store_copy(store, signed, comparison, plan)
            # The audit row and the database copy commit together: no erasure off the record.
            audit_id = _record(conn, plan, erased_at)
            write_db_copy(conn, new, signed)
            database_copy = (
                "hardening.tenant_key_ledger (table rewritten by VACUUM FULL)"
                if comparison.database_available
                else "none (migration 021 not applied)"
            )
        lock_conn.rollback()
    if comparison.database_available:
        with connect(url) as conn:
            rewrite_db_copy(conn)
    sealed = _seal(url, store, keyring, audit_id, seal_anchor)
    certificate = ErasureCertificate(
        tenant_id=plan.tenant_id,
        key_id=plan.key_id,
        erased_at=erased_at.isoformat(),
        backups=list(plan.backups),
        ledger_version=new.version,
        store_copy=f"{store.describe()}/{LEDGER_KEY} (older versions deleted)",
        database_copy=database_copy,
        audit_event_id=audit_id,
        sealed=sealed,
    )
    certificate.verified = verify_erased(store, keyring, url, plan.key_id)
    return certificate


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
    covering = next((s for s in run.seals if s.from_id <= audit_id <= s.to_id), None)
    if covering is None:
        return "not sealed yet (outside this run's horizon); run `hardening seal`"
    return f"sealed in seal {covering.seq}"


def write_certificate(certificate: ErasureCertificate, evidence_root: Path) -> Path:
    """``<evidence>/erasures/<stamp>-tenant-<id>.json`` and ``.md``; returns the JSON path."""
    folder = evidence_root / "erasures"
    folder.mkdir(parents=True, exist_ok=True)
    base = folder / f"{report_stamp()}-tenant-{certificate.tenant_id}"
    json_path = base.with_suffix(".json")
    json_path.write_text(json.dumps(asdict(certificate), indent=2) + "\n", encoding="utf-8")
    base.with_suffix(".md").write_text(certificate.markdown(), encoding="utf-8")
    return json_path
