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
from hardening_pipeline.backup.erasure_records import erasure_gaps, erasures_on_record
from hardening_pipeline.backup.ledger_rewrite import rewrite_ledger_table
from hardening_pipeline.backup.ledger_table import (
    LedgerPlacement,
    create_ledger_table,
    find_ledger_placement,
)
from hardening_pipeline.backup.manifest import Manifest
from hardening_pipeline.backup.store import BackupStore, ObjectNotFoundError
from hardening_pipeline.backup.store.version_holds import version_holds
from hardening_pipeline.backup.tenant_key_replay import deployment_mark, witnessed_marks
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
    new_ledger_id,
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
    raw = read_db_ledger_bytes(conn)
    return None if raw is None else (load_ledger(raw, keyring), raw)


def read_db_ledger_bytes(conn: psycopg.Connection) -> bytes | None:
    """The database's copy as stored, not yet verified; None when there is none (or no table)."""
    if not db_copy_available(conn):
        return None
    row = conn.execute("SELECT document FROM hardening.tenant_key_ledger WHERE id = 1").fetchone()
    document = _first(row)
    if document is None:
        return None
    return document.encode("ascii") if isinstance(document, str) else bytes(document)


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
        upsert_db_copy(conn, ledger, signed)
        conn.commit()
        rewrite_ledger_table(conn)


def upsert_db_copy(conn: psycopg.Connection, ledger: Ledger, signed: bytes) -> None:
    """The database's copy, in the caller's transaction (migration 021 applied)."""
    conn.execute(
        "INSERT INTO hardening.tenant_key_ledger (id, version, document) VALUES (1, %s, %s) "
        "ON CONFLICT (id) DO UPDATE SET version = excluded.version, "
        "document = excluded.document, written_at = now()",
        (ledger.version, signed.decode("ascii")),
    )


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
    ids = {c.ledger_id for c in copies if c.ledger_id}
    if len(ids) > 1:
        raise LedgerError(
            f"the ledger copies belong to different deployments ({deployments(ids)})."
        )
    return Ledger(
        max((c.version for c in copies), default=0),
        max((c.written_at for c in copies), default=EMPTY_LEDGER.written_at),
        tenants,
        tuple(sorted(erased.values(), key=lambda e: e.erased_at)),
        next(iter(ids), None),
    )


def deployments(ids: Iterable[str | None]) -> str:
    return "ledger ids " + " and ".join(sorted(i or "(none)" for i in ids))


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
    ids = {c.ledger_id for c in (in_store, in_db) if c and c.ledger_id}
    if len(ids) > 1:
        # Two deployments' ledgers (one copy put back from another deployment sharing the key).
        problems.append(
            f"the copies belong to different deployments (ledger id {in_store.ledger_id} in the "
            f"store, {in_db.ledger_id} in the database)"
        )
    elif in_store and in_db and raw_store != raw_db:
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


@dataclass(frozen=True)
class RetainedBackups:
    """The retained backups' manifests, and whether every backup's manifest could be read."""

    manifests: list[Manifest]
    unreadable: list[str]

    def key_uses(self) -> dict[str, LostKey]:
        """Every tenant key the manifests use, with its tenant and the backups using it."""
        uses: dict[str, LostKey] = {}
        for manifest in self.manifests:
            for entry in manifest.objects:
                if entry.tenant_key_id and entry.tenant_id:
                    use = uses.setdefault(
                        entry.tenant_key_id, LostKey(entry.tenant_id, entry.tenant_key_id, [])
                    )
                    use.backup_ids.append(manifest.backup_id)
        return uses


def retained_backups(
    store: BackupStore, keyring: Keyring, catalog: BackupCatalog | None = None
) -> RetainedBackups:
    catalog = catalog or list_backups(store, keyring)
    return RetainedBackups(
        [b.manifest for b in catalog.valid if b.manifest is not None],
        [b.backup_id for b in catalog.invalid],
    )


def lost_keys(
    store: BackupStore, keyring: Keyring, ledger: Ledger, catalog: BackupCatalog | None = None
) -> list[LostKey]:
    """Every key the retained backups use that ``ledger`` neither holds nor records as erased.

    Only backups whose manifest verifies can say which keys they use; ``untrusted_backups``
    names the others.
    """
    known = ledger.key_ids() | {e.key_id for e in ledger.erased}
    uses = retained_backups(store, keyring, catalog).key_uses()
    return [use for key_id, use in uses.items() if key_id not in known]


def ledger_status(
    conn: psycopg.Connection, store: BackupStore | None, keyring: Keyring | None
) -> tuple[bool, str, str]:
    """The status line: both copies agree, every key a retained backup uses is accounted for,
    and every erasure they record is in both copies and on the audit log.

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
    held = version_holds(store, LEDGER_KEY)
    if held:
        # The writer key may lock any version: an erasure could then never delete the key.
        return (
            False,
            f"{len(held)} version(s) of the ledger cannot be deleted: {held[0].describe()}, so "
            "erase-tenant refuses until it can be",
            f"{held[0].lift}, and find out who set it (the writer key can); see the runbook.",
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
    gaps = erasure_gaps(conn, comparison)
    if gaps:
        # A run that stopped after the store's write: the next backup copies the erasure to the
        # database, but nothing else puts it on the audit log or certifies it.
        return (
            False,
            "; ".join(g.sentence() for g in gaps[:5]),
            f"run `{gaps[0].command}`"
            + (" (and the same for each tenant named)" if len(gaps) > 1 else "")
            + ": it completes the erasure (both copies, the audit row with the original "
            "erasure time, the table rewrite) and writes its certificate.",
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
) -> tuple[list[tuple[str, Ledger]], list[str]]:
    """Every ledger copy that verifies (with where it was), and a sentence for each that does
    not."""
    copies, refused = [], []
    for where, read in (
        ("the store's copy", lambda: read_store_ledger(store, keyring)),
        ("the database's copy", lambda: read_db_ledger(conn, keyring)),
    ):
        try:
            found = read()
        except LedgerError as exc:
            refused.append(f"{where} was left out ({exc})")
            continue
        if found:
            copies.append((where, found[0]))
    return copies, refused


@dataclass
class Recovery:
    ledger: Ledger
    sources: list[str]
    refused: list[str]


RECOVER_LOCK_TIMEOUT_MS = 60_000


def _merged_sources(
    store: BackupStore, conn: psycopg.Connection, keyring: Keyring, escrow: bytes | None
) -> Recovery:
    """Every source this deployment can trust merged, keeping each key a retained backup uses.

    A copy of another deployment (its ledger id is not the one the database's copy and the
    retained backups record) and a store copy older than a version already recorded (put back
    from before an erasure) are left out, each with a sentence; every erasure on the audit log
    counts, whatever the copies say. The result's version is at least
    every version already recorded, so restores of the retained backups accept what recovery
    writes (one above it).
    """
    copies, refused = _readable_copies(store, conn, keyring)
    sources = [f"{len(copies)} ledger cop{'ies' if len(copies) != 1 else 'y'}"]
    if escrow is not None:
        copies.append(("the escrow export", load_ledger(escrow, keyring)))
        sources.append("the escrow export")
    retained = retained_backups(store, keyring)
    database = next((c for where, c in copies if where == "the database's copy"), None)
    ledger_id, highest = deployment_mark(witnessed_marks(retained.manifests, database))
    trusted = []
    for where, copy in copies:
        if ledger_id is not None and copy.ledger_id not in (ledger_id, None):
            refused.append(
                f"{where} was left out: it belongs to another deployment (ledger id "
                f"{copy.ledger_id}, not {ledger_id})"
            )
        elif where == "the store's copy" and highest and copy.version < highest.version:
            refused.append(
                f"the store's copy was left out: it is version {copy.version}, older than "
                f"{highest.reached}, so it was put back from before"
            )
        else:
            trusted.append(copy)
    if not trusted:
        raise LedgerError(
            "there is no readable copy of the tenant key ledger this deployment can trust and no "
            "escrow export ("
            + ("; ".join(refused) or "none was found")
            + "); pass --from <escrow export> (written by `hardening tenant-keys export`)."
        )
    on_record = erasures_on_record(conn)
    if on_record:
        trusted.append(Ledger(0, EMPTY_LEDGER.written_at, {}, on_record))
    merged = merge_keeping_used(trusted, retained)
    for entry in merged.tenants.values():
        require_key(keyring, entry)
    version = max(merged.version, highest.version if highest else 0)
    ledger_id = merged.ledger_id or ledger_id or new_ledger_id()
    return Recovery(replace(merged, version=version, ledger_id=ledger_id), sources, refused)


def merge_keeping_used(copies: list[Ledger], retained: RetainedBackups) -> Ledger:
    """``merge_ledgers``, but where two sources hold different keys for one tenant, the key the
    retained backups use is kept; when both are used, or an unreadable backup might use the
    other, nothing is merged (``LedgerError``) rather than a key some backup needs dropped."""
    merged = merge_ledgers(copies)
    erased = {e.key_id for e in merged.erased}
    offered: dict[str, dict[str, TenantKey]] = {}
    for copy in copies:
        for tenant, key in copy.tenants.items():
            if key.key_id not in erased:
                offered.setdefault(tenant, {})[key.key_id] = key
    conflicts = {t: keys for t, keys in sorted(offered.items()) if len(keys) > 1}
    if not conflicts:
        return merged
    uses = retained.key_uses()
    tenants = dict(merged.tenants)
    for tenant, keys in conflicts.items():
        ids = " and ".join(sorted(keys))
        in_use = [k for k in keys.values() if k.key_id in uses]
        if len(in_use) > 1:
            used_by = ", ".join(
                f"{k.key_id} by backup {uses[k.key_id].backup_ids[0]}" for k in in_use
            )
            raise LedgerError(
                f"the sources hold different keys for tenant {tenant} ({used_by}), and a ledger "
                "holds one key per tenant, so nothing was recovered and neither key was dropped: "
                "keep every source as it is (the escrow export, both copies and the store's "
                "older versions of the ledger)."
            )
        if retained.unreadable:
            raise LedgerError(
                f"the sources hold different keys for tenant {tenant} (key ids {ids}) and "
                f"backup(s) {', '.join(retained.unreadable[:3])} failed verification, so which "
                "one they use cannot be told; nothing was recovered and neither key was "
                "dropped: make those backups verify or delete them (`hardening retention "
                "--dry-run` lists them), then run recovery again."
            )
        # Unused by every retained backup: dropping the older loses nothing.
        tenants[tenant] = in_use[0] if in_use else max(keys.values(), key=lambda k: k.created_at)
    return replace(merged, tenants=tenants)


def export_ledger(store: BackupStore, url: str, keyring: Keyring) -> bytes:
    """The escrow export: every trusted copy merged and signed, every key still wrapped."""
    from hardening_pipeline.db.connection import connect
    from hardening_pipeline.db.job_locks import job_locks_available, take_job_lock

    with connect(url) as lock_conn, connect(url) as conn:
        # Under the backup lock, as backups and erasures write the ledger: a recovery running
        # beside an erasure could write back the key it just destroyed.
        if job_locks_available(lock_conn):
            take_job_lock(lock_conn, "backup", lock_timeout_ms=RECOVER_LOCK_TIMEOUT_MS)
        merged = _merged_sources(store, conn, keyring, None).ledger
    return sign_ledger(merged, keyring)


def recover_ledger(
    store: BackupStore, url: str, keyring: Keyring, *, escrow: bytes | None = None
) -> Recovery:
    """Write the union of every trusted copy (and an escrow export) back to both copies.

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
        recovery = _merged_sources(store, conn, keyring, escrow)
        recovery.ledger = replace(
            recovery.ledger, version=recovery.ledger.version + 1, written_at=datetime.now(UTC)
        )
        write_both_copies(store, conn, recovery.ledger, keyring, forget_older=True)
    return recovery
