"""The seal and check records, their MAC, fingerprints and the seal digest.

The byte formats are specified in ``docs/audit-seal-format.md``; this module is the reference
implementation of that page. Apart from ``has_format_2``, nothing here talks to the database.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Self

import psycopg
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from hardening_pipeline.backup.crypto import Keyring
from hardening_pipeline.errors import ConfigError, HardeningError

FORMATS = {1: "hardening-audit-seal/1", 2: "hardening-audit-seal/2"}
CURRENT_VERSION = 2
DOMAINS = {
    1: b"hardening-pipeline audit seal v1\x00",
    2: b"hardening-pipeline audit seal v2\x00",
}
# The MAC key derivation did not change with format 2.
INFO_SEAL_MAC_KEY = b"hardening-pipeline audit seal v1 mac-key"
GENESIS_DIGEST = bytes(32)
FINGERPRINT_BYTES = 8
STORE_PREFIX = "seals/"


class SealError(HardeningError):
    """A seal could not be made or read: the store copy is unreadable, forged or in the way,
    or the rows to be sealed show that the unsealed window was rewritten."""


class _Authenticated:
    """The MAC half of a seal or a check: signed with, and checked against, the seal key."""

    key_id: str | None
    mac: bytes | None

    def mac_message(self) -> bytes:
        raise NotImplementedError

    def signed(self, keyring: Keyring) -> Self:
        """This record with a MAC under the keyring's current master key."""
        unsigned = replace(self, key_id=keyring.current_key_id, mac=None)
        mac = hmac.new(seal_key(keyring, keyring.current_key_id), unsigned.mac_message(), "sha256")
        return replace(unsigned, mac=mac.digest())

    def mac_problem(self, keyring: Keyring) -> str | None:
        """Why the MAC does not authenticate this record, or None when it does."""
        if self.key_id is None or self.mac is None:
            return "carries no MAC"
        try:
            key = seal_key(keyring, self.key_id)
        except ConfigError:
            return f"is MAC'd under master key id {self.key_id}, which is not configured"
        expected = hmac.new(key, self.mac_message(), "sha256").digest()
        if not hmac.compare_digest(expected, self.mac):
            return "has a MAC that does not match its contents (forged or altered)"
        return None


def canonical_json(body: dict) -> bytes:
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode("utf-8")


@dataclass(frozen=True)
class Seal(_Authenticated):
    """One link of the chain: which ids it covers and the digest over them.

    Format 2 seals also record the unsealed window as it stood (``high_water``, ``pending``,
    ``last_created_at``); format 1 seals have None there.
    """

    seq: int
    from_id: int
    to_id: int
    row_count: int
    digest: bytes
    previous_digest: bytes
    fingerprints: bytes = field(repr=False)
    sealed_at: datetime
    sealed_by: str
    key_id: str | None = None
    mac: bytes | None = field(default=None, repr=False)
    version: int = 1
    high_water: int | None = None
    pending: bytes | None = field(default=None, repr=False)
    last_created_at: datetime | None = None

    def mac_message(self) -> bytes:
        """Canonical JSON of every field but the MAC and the fingerprints (bound by their hash)."""
        body: dict = {
            "format": FORMATS[self.version],
            "seq": self.seq,
            "from_id": self.from_id,
            "to_id": self.to_id,
            "row_count": self.row_count,
            "digest": self.digest.hex(),
            "previous_digest": self.previous_digest.hex(),
            "fingerprints_sha256": hashlib.sha256(self.fingerprints).hexdigest(),
            "sealed_at": iso(self.sealed_at),
            "sealed_by": self.sealed_by,
            "key_id": self.key_id,
        }
        if self.version >= 2:
            body["high_water"] = self.high_water
            body["pending_sha256"] = hashlib.sha256(self.pending or b"").hexdigest()
            body["last_created_at"] = (
                iso(self.last_created_at) if self.last_created_at is not None else None
            )
        return canonical_json(body)

    @property
    def store_key(self) -> str:
        return store_key(self.seq)

    def to_store_json(self) -> bytes:
        body = json.loads(self.mac_message())
        body["fingerprints"] = base64.b64encode(self.fingerprints).decode("ascii")
        if self.version >= 2:
            body["pending"] = base64.b64encode(self.pending or b"").decode("ascii")
        body["mac"] = self.mac.hex() if self.mac else None
        return json.dumps(body, sort_keys=True, indent=1).encode("utf-8") + b"\n"

    @classmethod
    def from_store_json(cls, data: bytes, key: str) -> Seal:
        try:
            body = json.loads(data)
            version = {v: k for k, v in FORMATS.items()}.get(body.get("format"))
            if version is None:
                raise ValueError(f"format {body.get('format')!r}")
            extra: dict = {}
            if version >= 2:
                last = body["last_created_at"]
                extra = {
                    "high_water": int(body["high_water"]),
                    "pending": base64.b64decode(body["pending"], validate=True),
                    "last_created_at": datetime.fromisoformat(last) if last else None,
                }
            seal = cls(
                seq=int(body["seq"]),
                from_id=int(body["from_id"]),
                to_id=int(body["to_id"]),
                row_count=int(body["row_count"]),
                digest=bytes.fromhex(body["digest"]),
                previous_digest=bytes.fromhex(body["previous_digest"]),
                fingerprints=base64.b64decode(body["fingerprints"], validate=True),
                sealed_at=datetime.fromisoformat(body["sealed_at"]),
                sealed_by=str(body["sealed_by"]),
                key_id=body.get("key_id"),
                mac=bytes.fromhex(body["mac"]) if body.get("mac") else None,
                version=version,
                **extra,
            )
        except (ValueError, KeyError, TypeError, binascii.Error) as exc:
            raise SealError(f"the store object {key} is not a readable seal ({exc})") from None
        if hashlib.sha256(seal.fingerprints).hexdigest() != body.get("fingerprints_sha256"):
            raise SealError(f"the store object {key}: its fingerprints do not match their hash")
        if version >= 2 and (
            hashlib.sha256(seal.pending or b"").hexdigest() != body.get("pending_sha256")
        ):
            raise SealError(f"the store object {key}: its pending rows do not match their hash")
        if seal.store_key != key:
            raise SealError(f"the store object {key} holds seal {seal.seq}: it was moved or copied")
        return seal


def has_format_2(conn: psycopg.Connection) -> bool:
    """Whether migration 014 (the ``version`` columns) is applied on this connection's database.

    A database restored from a backup taken before 014 is migrated only as far as the backup
    was, and its seals must still verify.
    """
    row = conn.execute(
        "SELECT count(*) AS n FROM pg_catalog.pg_attribute WHERE attname = 'version' AND "
        "attrelid IN (pg_catalog.to_regclass('hardening.audit_seals'), "
        "pg_catalog.to_regclass('hardening.audit_seal_checks'))"
    ).fetchone()
    return row["n"] == 2


def store_key(seq: int) -> str:
    """Where seal ``seq`` is copied in the backup store (zero-padded so keys sort by seq)."""
    return f"{STORE_PREFIX}{seq:012d}.json"


def iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat(timespec="microseconds")


def seal_key(keyring: Keyring, key_id: str) -> bytes:
    """A key used for nothing but seals, derived from the master key's manifest MAC key."""
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=INFO_SEAL_MAC_KEY)
    return hkdf.derive(keyring.master_key(key_id).mac_key)


# --- fingerprints and digests ---------------------------------------------------------------------


def varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def decode_fingerprints(blob: bytes, from_id: int) -> Iterator[tuple[int, bytes]]:
    """(id, first 8 bytes of the row hash) for every row in ``blob``, in id order; the first id
    is relative to ``from_id - 1``."""
    pos, current, size = 0, from_id - 1, len(blob)
    while pos < size:
        delta, shift = 0, 0
        while True:
            if pos >= size:
                raise SealError("fingerprints end in the middle of an id")
            byte = blob[pos]
            pos += 1
            delta |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        if delta < 1 or pos + FINGERPRINT_BYTES > size:
            raise SealError("fingerprints are malformed")
        current += delta
        yield current, blob[pos : pos + FINGERPRINT_BYTES]
        pos += FINGERPRINT_BYTES


class Fingerprints:
    """Delta-encoded ids with the first bytes of each row hash, built while rows stream past."""

    def __init__(self, from_id: int) -> None:
        self.last_id = from_id - 1
        self.blob = bytearray()

    def add(self, row_id: int, row_hash: bytes) -> None:
        self.blob += varint(row_id - self.last_id) + row_hash[:FINGERPRINT_BYTES]
        self.last_id = row_id


class Accumulator:
    """Builds one seal's digest and fingerprints while rows stream past."""

    def __init__(self, from_id: int, previous_digest: bytes, version: int = CURRENT_VERSION):
        self.from_id = from_id
        self.previous_digest = previous_digest
        self.version = version
        self.hasher = hashlib.sha256(DOMAINS[version] + previous_digest)
        self._fingerprints = Fingerprints(from_id)
        self.count = 0

    @property
    def fingerprints(self) -> bytearray:
        return self._fingerprints.blob

    def add(self, row_id: int, row_hash: bytes) -> None:
        self.hasher.update(row_hash)
        self._fingerprints.add(row_id, row_hash)
        self.count += 1

    def digest(self, to_id: int) -> bytes:
        hasher = self.hasher.copy()
        hasher.update(struct.pack(">qqq", self.from_id, to_id, self.count))
        return hasher.digest()
