"""The key ledger's two copies (store and database): read, write, compare, status, escrow
export and recovery. What the ledger is: ``backup/tenant_keys.py``."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import psycopg

from hardening_pipeline.backup.catalog import (
    UNTRUSTED_FIX,
    BackupCatalog,
    list_backups,
    untrusted_backups,
)
from hardening_pipeline.backup.crypto import (
    Keyring,
)
from hardening_pipeline.backup.ledger_table import (
    LedgerPlacement,
    create_ledger_table,
    find_ledger_placement,
)
from hardening_pipeline.backup.store import BackupStore, ObjectNotFoundError
from hardening_pipeline.backup.tenant_keys import (
    EMPTY_LEDGER,
    LEDGER_KEY,
    LEDGER_TABLE,
    MAX_LEDGER_BYTES,
    RECOVER_COMMAND,
    ErasedKey,
    Ledger,
    LedgerError,
    TenantKey,
    load_ledger,
    require_key,
    sign_ledger,
)

# --- the two copies ---------------------------------------------------------------------------


def read_store_ledger(store: BackupStore, keyring: Keyring) -> tuple[Ledger, bytes] | None:
    """The store's copy, verified, with its bytes; None when the store holds none."""
    try:
        raw = bytearray()
        for chunk in store.get(LEDGER_KEY):
            raw += chunk
            if len(raw) > MAX_LEDGER_BYTES:
                break
    except ObjectNotFoundError:
        return None
    return load_ledger(bytes(raw), keyring), bytes(raw)


def db_copy_available(conn: psycopg.Connection) -> bool:
    row = conn.execute("SELECT to_regclass(%s) IS NOT NULL AS ok", (LEDGER_TABLE,)).fetchone()
    return bool(_first(row))


def _first(row: Any) -> Any:
    if row is None:
        return None
    return next(iter(row.values())) if isinstance(row, dict) else row[0]


def read_db_ledger(conn: psycopg.Connection, keyring: Keyring) -> tuple[Ledger, bytes] | None:
    """The database's copy, verified, with its bytes; None when there is none (or no table)."""
    if not db_copy_available(conn):
        return None
    row = conn.execute("SELECT document FROM hardening.tenant_key_ledger WHERE id = 1").fetchone()
    document = _first(row)
    if document is None:
        return None
    raw = document.encode("ascii") if isinstance(document, str) else bytes(document)
    return load_ledger(raw, keyring), raw


def write_both_copies(
    store: BackupStore,
    conn: psycopg.Connection | None,
    ledger: Ledger,
    keyring: Keyring,
    *,
    forget_older: bool = False,
) -> bytes:
    """Write ``ledger`` to the store (older versions removed) and to the database table.

    The store first: a crash between the two leaves the store ahead, which the next backup's
    comparison adopts. The table is rewritten at once, so a destroyed key does not linger in
    its dead row versions (the server's WAL still holds it until recycled: see the README).
    """
    signed = sign_ledger(ledger, keyring)
    store.replace_unlocked(LEDGER_KEY, signed, forget_older=forget_older)
    write_db_copy(conn, ledger, signed)
    return signed


def write_db_copy(conn: psycopg.Connection | None, ledger: Ledger, signed: bytes) -> None:
    """The database's copy (committed, the table rewritten); nothing before migration 021."""
    if conn is not None and db_copy_available(conn):
        conn.execute(
            "INSERT INTO hardening.tenant_key_ledger (id, version, document) VALUES (1, %s, %s) "
            "ON CONFLICT (id) DO UPDATE SET version = excluded.version, "
            "document = excluded.document, written_at = now()",
            (ledger.version, signed.decode("ascii")),
        )
        conn.commit()
        rewrite_db_copy(conn)


def rewrite_db_copy(conn: psycopg.Connection) -> None:
    """Rewrite the ledger table so no old row version (a destroyed key among them) survives.

    A plain VACUUM only marks the old version free, its bytes stay in the page until reused;
    FULL copies the live row into a new file. A transaction that is older than the write keeps
    the old version alive, so erasure calls this again once its own lock is released.
    """
    with _autocommit(conn):
        conn.execute("VACUUM FULL hardening.tenant_key_ledger")


class _autocommit:
    def __init__(self, conn: psycopg.Connection) -> None:
        self._conn = conn
        self._was = conn.autocommit

    def __enter__(self) -> None:
        self._conn.autocommit = True

    def __exit__(self, *exc: object) -> None:
        self._conn.autocommit = self._was


def merge_ledgers(copies: Iterable[Ledger]) -> Ledger:
    """Every key any copy holds and every erasure any copy records; an erasure always wins."""
    copies = list(copies)
    erased: dict[str, ErasedKey] = {}
    for copy in copies:
        for e in copy.erased:
            erased.setdefault(e.key_id, e)
    tenants: dict[str, TenantKey] = {}
    for copy in sorted(copies, key=lambda c: c.version, reverse=True):
        for tenant, key in copy.tenants.items():
            if key.key_id not in erased:
                tenants.setdefault(tenant, key)
    return Ledger(
        max((c.version for c in copies), default=0),
        max((c.written_at for c in copies), default=EMPTY_LEDGER.written_at),
        tenants,
        tuple(sorted(erased.values(), key=lambda e: e.erased_at)),
    )


def unexplained_losses(older: Ledger, newer: Ledger) -> list[str]:
    """Keys ``older`` holds that ``newer`` neither holds nor records as erased."""
    kept = newer.key_ids() | {e.key_id for e in newer.erased}
    return sorted(
        f"{k.tenant_id} (key id {k.key_id})" for k in older.tenants.values() if k.key_id not in kept
    )


@dataclass
class LedgerComparison:
    """The two copies side by side, and what, if anything, is wrong between them."""

    store: Ledger | None
    database: Ledger | None
    database_available: bool
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    store_bytes: bytes | None = None
    database_bytes: bytes | None = None
    # Where the database's copy is; a problem there is one of ``problems`` too.
    placement: LedgerPlacement | None = None

    @property
    def misplaced(self) -> LedgerPlacement | None:
        """The placement, when the database's copy is lost or not where it belongs."""
        return self.placement if self.placement and self.placement.problem else None

    @property
    def agreed(self) -> Ledger:
        return merge_ledgers(c for c in (self.store, self.database) if c is not None)


def compare_copies(
    store: BackupStore, conn: psycopg.Connection | None, keyring: Keyring
) -> LedgerComparison:
    """Read and compare both copies; a lost entry that no erasure explains is a problem."""
    problems: list[str] = []
    in_store = in_db = None
    raw_store = raw_db = None
    try:
        found = read_store_ledger(store, keyring)
        if found:
            in_store, raw_store = found
    except LedgerError as exc:
        problems.append(f"the store's copy cannot be trusted: {exc}")
    placement = find_ledger_placement(conn) if conn is not None else None
    if placement is not None and placement.problem:
        problems.append(placement.problem)
    available = conn is not None and db_copy_available(conn)
    if available:
        try:
            found = read_db_ledger(conn, keyring)  # type: ignore[arg-type]
            if found:
                in_db, raw_db = found
        except LedgerError as exc:
            problems.append(f"the database's copy cannot be trusted: {exc}")
    result = LedgerComparison(
        in_store, in_db, available, problems, [], raw_store, raw_db, placement
    )
    if in_store and in_db and raw_store != raw_db:
        if in_store.version == in_db.version:
            problems.append(f"both copies claim version {in_store.version} but differ")
        else:
            # A crash between the two writes leaves one copy a version behind; that is not a
            # loss unless the newer copy dropped a key the older one holds without erasing it.
            older, newer, where = (
                (in_store, in_db, "database")
                if in_store.version < in_db.version
                else (in_db, in_store, "store")
            )
            lost = unexplained_losses(older, newer)
            if lost:
                problems.append(
                    f"the {where}'s copy (version {newer.version}) lacks the key of tenant(s) "
                    f"{', '.join(lost)} without an erasure record"
                )
            else:
                result.notes.append(
                    f"the copies were at versions {in_store.version} (store) and "
                    f"{in_db.version} (database); the newer one was adopted"
                )
    elif available and bool(in_store) != bool(in_db):
        result.notes.append(
            "only the " + ("store" if in_store else "database") + " held a copy; the other "
            "was written again from it"
        )
    return result


def agreed_ledger(
    store: BackupStore, conn: psycopg.Connection, keyring: Keyring, nothing_done: str
) -> LedgerComparison:
    """Both copies compared; refused, saying ``nothing_done``, when they disagree."""
    comparison = compare_copies(store, conn, keyring)
    misplaced = comparison.misplaced
    if misplaced is not None:
        raise LedgerError(f"{misplaced.problem}; {nothing_done}: {misplaced.fix}")
    if comparison.problems:
        raise LedgerError(
            f"the tenant key ledger copies disagree ({'; '.join(comparison.problems)}); "
            f"{nothing_done}: run `{RECOVER_COMMAND}` to rebuild the ledger from both copies and "
            "the master key (or from the escrow export)."
        )
    return comparison


@dataclass(frozen=True)
class LostKey:
    """A tenant key retained backups use that no ledger copy holds and no erasure explains."""

    tenant_id: str
    key_id: str
    backup_ids: list[str]


def lost_keys(
    store: BackupStore, keyring: Keyring, ledger: Ledger, catalog: BackupCatalog | None = None
) -> list[LostKey]:
    """Every key the retained backups use that ``ledger`` neither holds nor records as erased.

    Only backups whose manifest verifies can say which keys they use; ``untrusted_backups``
    names the others.
    """
    known = ledger.key_ids() | {e.key_id for e in ledger.erased}
    lost: dict[str, LostKey] = {}
    for backup in (catalog or list_backups(store, keyring)).valid:
        for entry in backup.manifest.objects if backup.manifest else ():
            if entry.tenant_key_id and entry.tenant_key_id not in known and entry.tenant_id:
                found = lost.setdefault(
                    entry.tenant_key_id, LostKey(entry.tenant_id, entry.tenant_key_id, [])
                )
                found.backup_ids.append(backup.backup_id)
    return list(lost.values())


def ledger_status(
    conn: psycopg.Connection, store: BackupStore | None, keyring: Keyring | None
) -> tuple[bool, str, str]:
    """The status line: both copies agree, and every key a retained backup uses is accounted for.

    A key named by a retained backup that neither copy holds nor records as erased was deleted
    without an erasure: that tenant's data is lost from every backup unless the key comes back.
    """
    placement = find_ledger_placement(conn)
    if placement.problem:  # the database alone shows it: no store needed
        return False, placement.problem, placement.fix
    if store is None or keyring is None:
        return True, "compared at every backup (this status run has no store to compare with)", ""
    fix = (
        f"run `{RECOVER_COMMAND}` (add --from <escrow export> if both copies lost the key) to "
        "write the missing entries back to both copies; find out who deleted them."
    )
    comparison = compare_copies(store, conn, keyring)
    if comparison.problems:
        return False, "; ".join(comparison.problems), fix
    ledger = comparison.agreed
    catalog = list_backups(store, keyring)
    lost = lost_keys(store, keyring, ledger, catalog)
    if lost:
        named = sorted(f"{k.tenant_id} ({k.backup_ids[0]})" for k in lost)
        return (
            False,
            f"{len(lost)} tenant key(s) used by retained backups are in no ledger copy and were "
            f"never erased: tenant(s) {', '.join(named[:5])}",
            fix,
        )
    untrusted = untrusted_backups(catalog)
    if untrusted:
        return False, f"{untrusted}; which tenant keys it uses is unknown", UNTRUSTED_FIX
    copies = [w for w, c in (("store", comparison.store), ("database", comparison.database)) if c]
    return (
        True,
        f"version {ledger.version} in the {' and '.join(copies) or 'no'} cop"
        f"{'ies' if len(copies) > 1 else 'y'}: {len(ledger.tenants)} tenant key(s), "
        f"{len(ledger.erased)} erased",
        "",
    )


def _readable_copies(
    store: BackupStore, conn: psycopg.Connection, keyring: Keyring
) -> tuple[list[Ledger], list[str]]:
    """Every ledger copy that verifies, and a sentence for each that does not."""
    copies, refused = [], []
    for where, read in (
        ("store", lambda: read_store_ledger(store, keyring)),
        ("database", lambda: read_db_ledger(conn, keyring)),
    ):
        try:
            found = read()
        except LedgerError as exc:
            refused.append(f"the {where}'s copy was left out ({exc})")
            continue
        if found:
            copies.append(found[0])
    return copies, refused


def export_ledger(store: BackupStore, url: str, keyring: Keyring) -> bytes:
    """The escrow export: both copies merged and signed, every key still wrapped."""
    from hardening_pipeline.db.connection import connect
    from hardening_pipeline.db.job_locks import job_locks_available, take_job_lock

    with connect(url) as lock_conn, connect(url) as conn:
        # Under the backup lock, as backups and erasures write the ledger: a recovery running
        # beside an erasure could write back the key it just destroyed.
        if job_locks_available(lock_conn):
            take_job_lock(lock_conn, "backup", lock_timeout_ms=RECOVER_LOCK_TIMEOUT_MS)
        copies, refused = _readable_copies(store, conn, keyring)
    if not copies:
        raise LedgerError(
            "no copy of the tenant key ledger could be read ("
            + ("; ".join(refused) or "there is none yet: run a backup first")
            + ")."
        )
    merged = merge_ledgers(copies)
    for entry in merged.tenants.values():
        require_key(keyring, entry)
    return sign_ledger(merged, keyring)


@dataclass
class Recovery:
    ledger: Ledger
    sources: list[str]
    refused: list[str]


RECOVER_LOCK_TIMEOUT_MS = 60_000


def recover_ledger(
    store: BackupStore, url: str, keyring: Keyring, *, escrow: bytes | None = None
) -> Recovery:
    """Write the union of every readable copy (and an escrow export) back to both copies.

    Every key is unwrapped with the master key first, so nothing that would not open a backup
    is written; an erasure recorded anywhere stays an erasure.
    """
    from hardening_pipeline.db.connection import connect
    from hardening_pipeline.db.job_locks import job_locks_available, take_job_lock

    with connect(url) as lock_conn, connect(url) as conn:
        # Under the backup lock, as backups and erasures write the ledger: a recovery running
        # beside an erasure could write back the key it just destroyed.
        if job_locks_available(lock_conn):
            take_job_lock(lock_conn, "backup", lock_timeout_ms=RECOVER_LOCK_TIMEOUT_MS)
        placement = find_ledger_placement(conn)
        if placement.elsewhere:
            raise LedgerError(f"{placement.problem}; nothing was written: {placement.fix}")
        if placement.lost:
            create_ledger_table(conn)
        copies, refused = _readable_copies(store, conn, keyring)
        sources = [f"{len(copies)} ledger cop{'ies' if len(copies) != 1 else 'y'}"]
        if escrow is not None:
            copies.append(load_ledger(escrow, keyring))
            sources.append("the escrow export")
        if not copies:
            raise LedgerError(
                "there is no readable copy of the tenant key ledger and no escrow export; pass "
                "--from <escrow export> (written by `hardening tenant-keys export`)."
            )
        merged = merge_ledgers(copies)
        for entry in merged.tenants.values():
            require_key(keyring, entry)
        ledger = replace(merged, version=merged.version + 1, written_at=datetime.now(UTC))
        write_both_copies(store, conn, ledger, keyring, forget_older=True)
    return Recovery(ledger, sources, refused)
