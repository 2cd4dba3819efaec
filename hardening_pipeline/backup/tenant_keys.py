"""Per-tenant data keys and the key ledger: erase one tenant from every retained backup.

Locked backups cannot be edited, so a tenant who leaves (or asks for erasure) is removed from
them by destroying a key instead (crypto-shredding). Each tenant's objects are encrypted under
that tenant's own random 32-byte data key, the same key in every backup; the shared object and
the schema object keep the per-backup shared key of the manifest. Tenant keys live only in the
**key ledger**, wrapped (AES-256-GCM) by the master key and bound to the tenant id, never inside
a locked object. Destroying a tenant's ledger entry makes that tenant's objects in every retained
backup undecryptable, even with the master key, while every other tenant still restores.

The ledger is signed (HMAC-SHA256 under the master key, as a manifest is), versioned (a
counter that every write increases) and bound to its deployment (a random ``ledger_id`` made
once, in the signed body, so a ledger of another deployment sharing the master key is told
apart). Each backup's manifest records the ledger id and version it was written under, so a
restore refuses an older ledger put back into the store (``backup/tenant_key_replay.py``).
It lives in two copies so that losing one loses nothing: the store (``tenant-keys/ledger.json``,
never locked; an erasure deletes its older versions) and the database
(``hardening.tenant_key_ledger``, migration 021). Every backup compares them first. The
layout is specified in ``docs/backup-format.md``.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from hardening_pipeline.backup.crypto import (
    WRAPPED_KEY_BYTES,
    BackupIntegrityError,
    Keyring,
    UnknownKeyError,
    WrappedDataKey,
)
from hardening_pipeline.backup.manifest_signing import canonical_json
from hardening_pipeline.errors import CheckFailed, ConfigError
from hardening_pipeline.settings import ENV_ENCRYPTION_KEYS_PREVIOUS

LEDGER_FORMAT = "hardening-pipeline-tenant-key-ledger"
LEDGER_VERSION = 1
LEDGER_KEY = "tenant-keys/ledger.json"
LEDGER_TABLE = "hardening.tenant_key_ledger"
MAC_FIELD = "hmac_sha256"
MAX_LEDGER_BYTES = 256 << 20
# The manifest metadata fields a backup records the ledger it was written under in.
MANIFEST_LEDGER_ID = "tenant_key_ledger_id"
MANIFEST_LEDGER_VERSION = "tenant_key_ledger_version"
RECOVER_COMMAND = "hardening tenant-keys recover"

_HEX16 = re.compile(r"[0-9a-f]{16}")
_HEX32 = re.compile(r"[0-9a-f]{32}")
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
    # The deployment this ledger belongs to; None only in ledgers written before it existed,
    # which get one at their next write.
    ledger_id: str | None = None

    def erased_key(self, key_id: str) -> ErasedKey | None:
        return next((e for e in self.erased if e.key_id == key_id), None)

    def key_ids(self) -> set[str]:
        return {k.key_id for k in self.tenants.values()}


EMPTY_LEDGER = Ledger(0, datetime.fromtimestamp(0, UTC), {})


def new_ledger_id() -> str:
    return secrets.token_hex(16)


def format_time(value: datetime) -> str:
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
        "written_at": format_time(ledger.written_at),
        "key_id": mac_key_id,
        **({"ledger_id": ledger.ledger_id} if ledger.ledger_id else {}),
        "tenants": [
            {
                "tenant_id": k.tenant_id,
                "key_id": k.key_id,
                "master_key_id": k.master_key_id,
                "wrapped_key": base64.b64encode(k.wrapped_key).decode("ascii"),
                "created_at": format_time(k.created_at),
            }
            for _, k in sorted(ledger.tenants.items())
        ],
        "erased": [
            {
                "tenant_id": e.tenant_id,
                "key_id": e.key_id,
                "erased_at": format_time(e.erased_at),
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


def _fields(
    value: Any, where: str, names: Sequence[str], optional: Sequence[str] = ()
) -> dict[str, Any]:
    if not isinstance(value, dict) or not set(names) <= set(value) <= {*names, *optional}:
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
        ("ledger_id",),
    )
    version = top["version"]
    if type(version) is not int or version < 1:
        raise LedgerError("key ledger field version must be a positive integer.")
    ledger_id = top.get("ledger_id")
    if ledger_id is not None and not (isinstance(ledger_id, str) and _HEX32.fullmatch(ledger_id)):
        raise LedgerError("key ledger field ledger_id must be 32 lowercase hex digits.")
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
    written_at = _parse_time(top["written_at"], "written_at")
    return Ledger(version, written_at, tenants, tuple(erased), ledger_id)


def require_key(keyring: Keyring, entry: TenantKey) -> bytes:
    """Unwrap a ledger entry, naming the tenant when it does not authenticate."""
    try:
        return keyring.unwrap_tenant_key(entry.wrapped, entry.tenant_id)
    except BackupIntegrityError as exc:
        raise LedgerError(str(exc)) from None
