"""Per-tenant data keys and the key ledger: erase one tenant from every retained backup.

Locked backups cannot be edited, so a tenant who leaves (or asks for erasure) is removed from
them by destroying a key instead (crypto-shredding). Each tenant's objects are encrypted under
that tenant's own random 32-byte data key, the same key in every backup; the shared object and
the schema object keep the per-backup shared key of the manifest. Tenant keys live only in the
**key ledger**, wrapped (AES-256-GCM) by the master key and bound to the tenant id, never inside
a locked object. Destroying a tenant's ledger entry makes that tenant's objects in every retained
backup undecryptable, even with the master key, while every other tenant still restores.

The ledger is signed (HMAC-SHA256 under the master key, as a manifest is) and versioned (a
counter that every write increases). It lives in two copies so that losing one loses nothing:
the store (``tenant-keys/ledger.json``, never locked; an erasure deletes its older versions)
and the database (``hardening.tenant_key_ledger``, migration 021). Every backup compares them
first. The layout is specified in ``docs/backup-format.md``.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import psycopg

from hardening_pipeline.backup.crypto import (
    WRAPPED_KEY_BYTES,
    BackupIntegrityError,
    Keyring,
    UnknownKeyError,
    WrappedDataKey,
    data_key_id,
    generate_data_key,
)
from hardening_pipeline.backup.manifest import (
    Manifest,
    ObjectEntry,
    canonical_json,
    unwrap_data_key,
)
from hardening_pipeline.backup.store import BackupStore, ObjectNotFoundError
from hardening_pipeline.errors import CheckFailed, ConfigError
from hardening_pipeline.settings import ENV_ENCRYPTION_KEYS_PREVIOUS

LEDGER_FORMAT = "hardening-pipeline-tenant-key-ledger"
LEDGER_VERSION = 1
LEDGER_KEY = "tenant-keys/ledger.json"
LEDGER_TABLE = "hardening.tenant_key_ledger"
MAC_FIELD = "hmac_sha256"
MAX_LEDGER_BYTES = 256 << 20
RECOVER_COMMAND = "hardening tenant-keys recover"

_HEX16 = re.compile(r"[0-9a-f]{16}")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_TIMESTAMP = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z")


class LedgerError(CheckFailed):
    """A ledger copy is altered or malformed, or the copies disagree and no erasure explains it."""


class TenantErasedError(ConfigError):
    """The tenant's key was destroyed by ``erase-tenant``: its backed-up rows cannot be read.

    A ``ConfigError`` (exit 2): asking for an erased tenant is a request nothing can fulfil, not
    a fault of the backups.
    """


@dataclass(frozen=True)
class TenantKey:
    """One tenant's data key, wrapped by the master key ``master_key_id``."""

    tenant_id: str
    key_id: str
    master_key_id: str
    wrapped_key: bytes = field(repr=False)
    created_at: datetime

    @property
    def wrapped(self) -> WrappedDataKey:
        return WrappedDataKey(self.master_key_id, self.wrapped_key)


@dataclass(frozen=True)
class ErasedKey:
    """A destroyed tenant key: which tenant and key, when, and the backups it made unreadable."""

    tenant_id: str
    key_id: str
    erased_at: datetime
    backups: tuple[str, ...]


@dataclass(frozen=True)
class Ledger:
    version: int
    written_at: datetime
    tenants: Mapping[str, TenantKey]
    erased: tuple[ErasedKey, ...] = ()

    def erased_key(self, key_id: str) -> ErasedKey | None:
        return next((e for e in self.erased if e.key_id == key_id), None)

    def key_ids(self) -> set[str]:
        return {k.key_id for k in self.tenants.values()}


EMPTY_LEDGER = Ledger(0, datetime.fromtimestamp(0, UTC), {})


def _time(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse_time(value: Any, where: str) -> datetime:
    if not isinstance(value, str) or not _TIMESTAMP.fullmatch(value):
        raise LedgerError(f"key ledger field {where} is not a UTC timestamp.")
    return datetime.strptime(value, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)


def ledger_body(ledger: Ledger, mac_key_id: str) -> dict[str, Any]:
    return {
        "format": LEDGER_FORMAT,
        "format_version": LEDGER_VERSION,
        "version": ledger.version,
        "written_at": _time(ledger.written_at),
        "key_id": mac_key_id,
        "tenants": [
            {
                "tenant_id": k.tenant_id,
                "key_id": k.key_id,
                "master_key_id": k.master_key_id,
                "wrapped_key": base64.b64encode(k.wrapped_key).decode("ascii"),
                "created_at": _time(k.created_at),
            }
            for _, k in sorted(ledger.tenants.items())
        ],
        "erased": [
            {
                "tenant_id": e.tenant_id,
                "key_id": e.key_id,
                "erased_at": _time(e.erased_at),
                "backups": list(e.backups),
            }
            for e in ledger.erased
        ],
    }


def sign_ledger(ledger: Ledger, keyring: Keyring) -> bytes:
    """The exact bytes of a ledger copy: canonical JSON plus its HMAC under the current key."""
    body = ledger_body(ledger, keyring.current_key_id)
    mac = keyring.manifest_mac(keyring.current_key_id, canonical_json(body))
    return canonical_json({**body, MAC_FIELD: mac.hex()})


def _fields(value: Any, where: str, names: Sequence[str]) -> dict[str, Any]:
    if not isinstance(value, dict) or set(value) != set(names):
        raise LedgerError(f"key ledger field {where} must hold exactly {', '.join(names)}.")
    return value


def load_ledger(raw: bytes, keyring: Keyring) -> Ledger:
    """Authenticate and strictly parse one ledger copy (``LedgerError`` when altered)."""
    if len(raw) > MAX_LEDGER_BYTES:
        raise LedgerError("the key ledger is larger than any ledger this kit writes.")
    try:
        document = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise LedgerError("the key ledger is not valid JSON.") from None
    if not isinstance(document, dict) or document.get("format") != LEDGER_FORMAT:
        raise LedgerError(f"the key ledger does not carry format {LEDGER_FORMAT!r}.")
    if document.get("format_version") != LEDGER_VERSION:
        raise LedgerError(
            f"key ledger format version {document.get('format_version')!r} is not supported; "
            "upgrade hardening_pipeline to read it."
        )
    mac_hex = document.pop(MAC_FIELD, None)
    key_id = document.get("key_id")
    if not isinstance(mac_hex, str) or not _HEX64.fullmatch(mac_hex):
        raise LedgerError(f"the key ledger has no valid {MAC_FIELD}.")
    if not isinstance(key_id, str) or not _HEX16.fullmatch(key_id):
        raise LedgerError("the key ledger has no valid key_id.")
    body = canonical_json(document)
    try:
        expected = keyring.manifest_mac(key_id, body)
    except UnknownKeyError:
        raise UnknownKeyError(
            f"the tenant key ledger was signed with master key id {key_id}, which is none of the "
            f"configured keys ({', '.join(keyring.key_ids)}); add that key to "
            f"{ENV_ENCRYPTION_KEYS_PREVIOUS}: the tenant keys of every backup are wrapped by it."
        ) from None
    if not hmac.compare_digest(expected, bytes.fromhex(mac_hex)):
        raise LedgerError(
            f"the key ledger failed authentication under master key id {key_id}; it was "
            "altered or written with another key."
        )
    if canonical_json({**document, MAC_FIELD: mac_hex}) != raw:
        raise LedgerError("the key ledger bytes are not in canonical form.")
    top = _fields(
        document,
        "(top level)",
        ("format", "format_version", "version", "written_at", "key_id", "tenants", "erased"),
    )
    version = top["version"]
    if type(version) is not int or version < 1:
        raise LedgerError("key ledger field version must be a positive integer.")
    tenants: dict[str, TenantKey] = {}
    for i, item in enumerate(top["tenants"] if isinstance(top["tenants"], list) else [None]):
        t = _fields(
            item,
            f"tenants[{i}]",
            ("tenant_id", "key_id", "master_key_id", "wrapped_key", "created_at"),
        )
        if not all(isinstance(t[k], str) for k in ("tenant_id", "key_id", "master_key_id")):
            raise LedgerError(f"key ledger field tenants[{i}] holds a non-string id.")
        if not (_HEX16.fullmatch(t["key_id"]) and _HEX16.fullmatch(t["master_key_id"])):
            raise LedgerError(f"key ledger field tenants[{i}] holds a malformed key id.")
        try:
            wrapped = base64.b64decode(str(t["wrapped_key"]), validate=True)
        except (binascii.Error, ValueError):
            wrapped = b""
        if len(wrapped) != WRAPPED_KEY_BYTES or t["tenant_id"] in tenants:
            raise LedgerError(f"key ledger field tenants[{i}] is malformed or repeated.")
        tenants[t["tenant_id"]] = TenantKey(
            t["tenant_id"],
            t["key_id"],
            t["master_key_id"],
            wrapped,
            _parse_time(t["created_at"], f"tenants[{i}].created_at"),
        )
    erased = []
    for i, item in enumerate(top["erased"] if isinstance(top["erased"], list) else [None]):
        e = _fields(item, f"erased[{i}]", ("tenant_id", "key_id", "erased_at", "backups"))
        backups = e["backups"]
        if (
            not isinstance(e["tenant_id"], str)
            or not isinstance(e["key_id"], str)
            or not _HEX16.fullmatch(e["key_id"])
            or not isinstance(backups, list)
            or not all(isinstance(b, str) for b in backups)
        ):
            raise LedgerError(f"key ledger field erased[{i}] is malformed.")
        erased.append(
            ErasedKey(
                e["tenant_id"],
                e["key_id"],
                _parse_time(e["erased_at"], f"erased[{i}].erased_at"),
                tuple(backups),
            )
        )
    return Ledger(version, _parse_time(top["written_at"], "written_at"), tenants, tuple(erased))


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
    available = conn is not None and db_copy_available(conn)
    if available:
        try:
            found = read_db_ledger(conn, keyring)  # type: ignore[arg-type]
            if found:
                in_db, raw_db = found
        except LedgerError as exc:
            problems.append(f"the database's copy cannot be trusted: {exc}")
    result = LedgerComparison(in_store, in_db, available, problems, [], raw_store, raw_db)
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


def ledger_status(
    conn: psycopg.Connection, store: BackupStore | None, keyring: Keyring | None
) -> tuple[bool, str, str]:
    """The status line: both copies agree, and every key a retained backup uses is accounted for.

    A key named by a retained backup that neither copy holds nor records as erased was deleted
    without an erasure: that tenant's data is lost from every backup unless the key comes back.
    """
    if store is None or keyring is None:
        return True, "compared at every backup (this status run has no store to compare with)", ""
    from hardening_pipeline.backup.catalog import list_backups

    fix = (
        f"run `{RECOVER_COMMAND}` (add --from <escrow export> if both copies lost the key) to "
        "write the missing entries back to both copies; find out who deleted them."
    )
    comparison = compare_copies(store, conn, keyring)
    if comparison.problems:
        return False, "; ".join(comparison.problems), fix
    ledger = comparison.agreed
    known = ledger.key_ids() | {e.key_id for e in ledger.erased}
    lost: dict[str, str] = {}
    for backup in list_backups(store, keyring).valid:
        for entry in backup.manifest.objects if backup.manifest else ():
            if entry.tenant_key_id and entry.tenant_key_id not in known:
                lost.setdefault(entry.tenant_key_id, f"{entry.tenant_id} ({backup.backup_id})")
    if lost:
        return (
            False,
            f"{len(lost)} tenant key(s) used by retained backups are in no ledger copy and were "
            f"never erased: tenant(s) {', '.join(sorted(lost.values())[:5])}",
            fix,
        )
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

    with connect(url) as conn:
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


def recover_ledger(
    store: BackupStore, url: str, keyring: Keyring, *, escrow: bytes | None = None
) -> Recovery:
    """Write the union of every readable copy (and an escrow export) back to both copies.

    Every key is unwrapped with the master key first, so nothing that would not open a backup
    is written; an erasure recorded anywhere stays an erasure.
    """
    from hardening_pipeline.db.connection import connect

    with connect(url) as conn:
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


# --- keys for a backup ------------------------------------------------------------------------


@dataclass
class BackupTenantKeys:
    """The tenant keys one backup run encrypts with, and the ledger they were recorded in."""

    keys: dict[str, bytes]
    ledger: Ledger
    comparison: LedgerComparison

    def key_for(self, tenant_id: str | None) -> bytes | None:
        return None if tenant_id is None else self.keys[tenant_id]


def prepare_tenant_keys(
    store: BackupStore,
    url: str,
    keyring: Keyring,
    tenant_ids: Sequence[str],
    *,
    dry_run: bool = False,
    now: datetime | None = None,
) -> BackupTenantKeys:
    """Compare the ledger copies, add keys for new tenants, record them before any object.

    Refuses (red) when the copies disagree in a way no erasure explains, and when a tenant
    whose key was erased still has rows: backing it up under a new key would bring the erased
    data back into the backups.
    """
    from hardening_pipeline.db.connection import connect

    now = now or datetime.now(UTC)
    with connect(url) as conn:
        comparison = compare_copies(store, conn, keyring)
        if comparison.problems:
            raise LedgerError(
                f"the tenant key ledger copies disagree ({'; '.join(comparison.problems)}); no "
                f"backup was written: run `{RECOVER_COMMAND}` to rebuild the ledger from both "
                "copies and the master key (or from the escrow export)."
            )
        ledger = comparison.agreed
        erased_tenants = {e.tenant_id: e for e in ledger.erased}
        present = [t for t in tenant_ids if t in erased_tenants and t not in ledger.tenants]
        if present:
            when = _time(erased_tenants[present[0]].erased_at)
            raise CheckFailed(
                f"tenant {present[0]} was erased at {when} but still has rows in the database; "
                "no backup was written: delete the tenant and its rows from the database, then "
                "run the backup again."
            )
        tenants = dict(ledger.tenants)
        keys: dict[str, bytes] = {}
        changed = comparison.store is None or (
            comparison.database_available and comparison.database is None
        )
        changed = changed or bool(comparison.notes)
        for tenant in tenant_ids:
            entry = tenants.get(tenant)
            if entry is None:
                key = generate_data_key()
                wrapped = keyring.wrap_tenant_key(key, tenant)
                tenants[tenant] = TenantKey(
                    tenant, data_key_id(key).hex(), wrapped.key_id, wrapped.ciphertext, now
                )
                changed = True
            else:
                key = keyring.unwrap_tenant_key(entry.wrapped, tenant)
                if entry.master_key_id != keyring.current_key_id:
                    # Rotation: the entry moves to the current master key on this write.
                    wrapped = keyring.wrap_tenant_key(key, tenant)
                    tenants[tenant] = replace(
                        entry, master_key_id=wrapped.key_id, wrapped_key=wrapped.ciphertext
                    )
                    changed = True
            keys[tenant] = key
        if changed:
            ledger = Ledger(ledger.version + 1, now, tenants, ledger.erased)
            if not dry_run:
                write_both_copies(store, conn, ledger, keyring)
        return BackupTenantKeys(keys, ledger, comparison)


# --- keys for a reader ------------------------------------------------------------------------


class ObjectKeys:
    """Which key opens each object of one backup: the manifest's shared key or a tenant's key.

    Tenant keys come from the store's ledger, read once and only if the backup uses any.
    """

    def __init__(self, store: BackupStore, manifest: Manifest, keyring: Keyring) -> None:
        self._store = store
        self._manifest = manifest
        self._keyring = keyring
        self._shared: bytes | None = None
        self._ledger: Ledger | None = None

    @property
    def manifest(self) -> Manifest:
        return self._manifest

    def unwrap(self, entry: TenantKey) -> bytes:
        return self._keyring.unwrap_tenant_key(entry.wrapped, entry.tenant_id)

    @property
    def shared(self) -> bytes:
        if self._shared is None:
            self._shared = unwrap_data_key(self._manifest, self._keyring)
        return self._shared

    def ledger(self) -> Ledger:
        if self._ledger is None:
            found = read_store_ledger(self._store, self._keyring)
            if found is None:
                raise LedgerError(
                    f"backup {self._manifest.backup_id} holds tenant objects encrypted under "
                    f"tenant keys, but the store has no key ledger ({LEDGER_KEY}); run "
                    f"`{RECOVER_COMMAND}` to write it again from the database's copy or the "
                    "escrow export."
                )
            self._ledger = found[0]
        return self._ledger

    def erased(self, entry: ObjectEntry) -> ErasedKey | None:
        """The erasure that destroyed this object's key, None when it can still be read."""
        if entry.tenant_key_id is None:
            return None
        return self.ledger().erased_key(entry.tenant_key_id)

    def for_object(self, entry: ObjectEntry) -> bytes:
        if entry.tenant_key_id is None:
            return self.shared
        ledger = self.ledger()
        erased = ledger.erased_key(entry.tenant_key_id)
        if erased is not None:
            raise TenantErasedError(erased_sentence(erased, self._manifest.backup_id))
        key = ledger.tenants.get(entry.tenant_id or "")
        if key is None or key.key_id != entry.tenant_key_id:
            raise LedgerError(
                f"the key ledger holds no key {entry.tenant_key_id} for tenant "
                f"{entry.tenant_id} of backup {self._manifest.backup_id}, and records no "
                f"erasure of it; run `{RECOVER_COMMAND}` to rebuild the ledger from its copies "
                "and the escrow export."
            )
        return self._keyring.unwrap_tenant_key(key.wrapped, key.tenant_id)


def object_key(
    store: BackupStore, manifest: Manifest, keyring: Keyring, entry: ObjectEntry
) -> bytes:
    """The key that opens one object of a backup (a restore keeps an ``ObjectKeys`` instead)."""
    return ObjectKeys(store, manifest, keyring).for_object(entry)


def erased_sentence(erased: ErasedKey, backup_id: str) -> str:
    return (
        f"tenant {erased.tenant_id} was erased at {_time(erased.erased_at)} (key id "
        f"{erased.key_id} destroyed), so its rows in backup {backup_id} can no longer be "
        "decrypted by anyone; there is nothing of it to restore."
    )


def require_key(keyring: Keyring, entry: TenantKey) -> bytes:
    """Unwrap a ledger entry, naming the tenant when it does not authenticate."""
    try:
        return keyring.unwrap_tenant_key(entry.wrapped, entry.tenant_id)
    except BackupIntegrityError as exc:
        raise LedgerError(str(exc)) from None


__all__ = [
    "LEDGER_KEY",
    "LEDGER_TABLE",
    "BackupTenantKeys",
    "ErasedKey",
    "Ledger",
    "LedgerError",
    "ObjectKeys",
    "TenantErasedError",
    "TenantKey",
    "compare_copies",
    "load_ledger",
    "merge_ledgers",
    "prepare_tenant_keys",
    "read_db_ledger",
    "read_store_ledger",
    "sign_ledger",
    "write_both_copies",
]
