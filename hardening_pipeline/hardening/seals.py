"""Periodic seals over the audit log: a hash chain that shows when history was rewritten.

The append-only guards on ``audit_events`` stop every ordinary role, but whoever controls the
database (a superuser, or a role that may set ``session_replication_role``) can disable a guard
and change, delete or back-date rows. Seals do not prevent that; they make it *evident*:

* every so often ``seal_audit_log`` hashes the audit rows added since the previous seal, in id
  order, into a digest chained to the previous seal's digest, and stores the seal in
  ``hardening.audit_seals`` *and* as a MAC'd JSON copy in the backup store;
* ``verify_audit_seals`` (the ``audit_seal_chain`` status line) recomputes every digest from the
  rows as they are now. A changed row, a deleted row, or a row inserted with an id inside a sealed
  range (``OVERRIDING SYSTEM VALUE``) breaks it, and the result names the first bad id.

Sealing adds nothing to the write path: no trigger, column or lock on ``audit_events`` or on any
tenant table. It only reads rows that are already committed.

**Formats** (``v1``; an independent verifier needs only these lines and SHA-256/HMAC):

* row hash ``h = SHA-256(UTF-8 of jsonb_build_array(id, actor, tenant_id, table_name, operation,
  record_id, before, after, created_at AT TIME ZONE 'UTC', db_role, txid)::text)``. ``jsonb``
  text is canonical (keys sorted, fixed spacing, numbers exact) and the timestamp is rendered in
  UTC, so the text does not depend on the session's TimeZone or DateStyle. Postgres computes it
  (``pg_catalog.sha256``), so only 40 bytes per row cross the wire.
* seal digest ``SHA-256(DOMAIN || previous_digest || h_1 || ... || h_n || from_id || to_id ||
  row_count)`` with the three integers as signed 64-bit big-endian; ``previous_digest`` of seal 1
  is 32 zero bytes. Binding the range means a seal cannot be slid over other rows.
* fingerprints, per row in id order: ``varint(id - previous id)`` (the first relative to
  ``from_id - 1``; unsigned LEB128) then the first 8 bytes of ``h``. They only *locate* a
  mismatch; *detecting* one rests on the full SHA-256 digest.
* MAC: HMAC-SHA256 over the canonical JSON of the seal's fields (``mac_message``) under
  ``HKDF-SHA256(the master key's manifest MAC key, info="hardening-pipeline audit seal v1
  mac-key")``. The database row and the store copy carry the same MAC.
* store copy: ``seals/<seq, 12 digits>.json`` holding the MAC'd fields plus the fingerprints
  (base64) and the MAC (hex). Copies are written once and never overwritten or deleted.

**The safe horizon.** Identity values are handed out when a row is inserted, but rows become
visible when their transaction commits, and commit order is not id order. If a seal covered ids
up to 100 while a transaction holding id 97 was still open, row 97 would appear after the seal
and look forged. So a seal only reaches ids whose fate is settled:

1. read ``L``, the last id the sequence handed out, *then* list every transaction that holds a
   transaction id (each holds a lock on its own id, visible in ``pg_locks`` to any role). Every id
   up to ``L`` belongs to a transaction that had its transaction id before ``L`` was read: the
   capture triggers run after the base-table write, which assigns it first. So each such
   transaction has either ended or is in that list.
2. wait (up to ``wait_seconds``) until every listed transaction has released that lock. A
   transaction releases its locks only after it has left the list of running transactions that
   snapshots are built from, so rows are then read with a snapshot in which every id up to ``L``
   is visible or will never exist: the horizon is ``L``. (Neither ``pg_xact_status``, which
   says "committed" a moment before other sessions' snapshots agree, nor the in-progress list of
   ``pg_current_snapshot()``, whose ``xmax`` is the latest *completed* id + 1 and so omits running
   transactions above it, is enough on its own; both were tried.)
3. a transaction still open after the wait (a long batch, a session left idle in transaction)
   holds the horizon back instead of stopping sealing: its rows were created after it started,
   so every row created before the earliest such ``xact_start`` (less one second of margin) has
   a smaller id than anything it can commit. The horizon is the largest id created before that
   cutoff. When the start time cannot be seen (a prepared transaction, or a role without
   ``pg_read_all_stats``), nothing new is sealed this time.

The horizon needs the sequence to hand out ids in order: a sequence ``CACHE`` above 1 gives each
session its own block of ids, so sealing refuses to run then. A row written straight into
``audit_events`` (only a superuser can) is outside this reasoning, which is the point: it is the
case the seal exists to catch.

**Row-version checks** (``hardening.audit_seal_checks``, migration 010). Re-hashing renders
every jsonb image as text, about 10 s per million rows. Changing a row through SQL always gives
it a new row version: UPDATE writes a new tuple with a new ``xmin`` and ``ctid``, DELETE removes
it, a forged row has its own. So a verification that re-hashed a seal's rows and found them
intact may record a check: a versions digest (``row_versions``) with the seal's digest it was
made against, MAC'd like a seal (``mac_message``, format ``hardening-audit-seal-check/1``).

* versions digest: ``SHA-256(UTF-8 of the table's shape || 0x00 || SHA-256(per row in id
  order: int8(id) || int8(xmin) || UTF-8 of ctid::text || (0x01 || h, or 0x00)))``. The shape
  (``_TABLE_SHAPE``: the table's oid and kind, and every column's number, name, type, modifier,
  collation, dropped flag, missing value, generation and identity) is there because renaming,
  swapping or re-adding a column, or a type change that rewrites nothing, changes what every
  row reads as and no row's version. ``h`` is there for rows whose text columns take at least
  ``OUT_OF_LINE_BYTES`` stored bytes: only those can keep a value in the TOAST table, whose
  chunks a superuser can swap without touching the row. Only their images are read.
* later verifications still check every seal's structure, MAC and store copy, and read every
  sealed row's header (about 2 s per million rows); only seals whose versions differ from a
  trusted check, or that have none, are re-hashed. VACUUM FULL or CLUSTER (when they compact)
  and a logical restore move rows, so those seals are re-hashed once and checked again.
* trusted (``trusted_checks``): with a keyring, checks with a valid MAC; with a store but no
  keyring, none (the store, not the database, is then the reference, so none are written
  either); with neither, all (the database is then its own reference anyway).
* age: recording runs (the hourly asset, ``hardening seal``) re-hash each seal at least every
  ``RECHECK_AFTER`` (a day), and readers (the status line) stop trusting a check after
  ``TRUST_CHECKS_FOR``. That bounds what versions cannot show: a change written straight into
  the data files, or a row re-created under the same 32-bit ``xmin`` after 2^32 transactions.
  ``full`` (``hardening seal --full``) re-hashes everything now.

**What it cannot catch.** Without a store copy and without the key, someone who controls the
database can rewrite rows, then delete and recompute every seal: the chain in the database is
then self-consistent. With the key, a recomputed seal lacks a valid MAC; with the store, it
differs from the copy written when the seal was made. Rows newer than the last seal are not
protected until the next seal covers them.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import struct
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Self

import psycopg
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from psycopg import sql
from psycopg.rows import tuple_row

from hardening_pipeline.backup.crypto import Keyring
from hardening_pipeline.backup.store import BackupStore, ObjectNotFoundError
from hardening_pipeline.db.connection import connect, table_exists
from hardening_pipeline.db.job_locks import job_locks_available, take_job_lock
from hardening_pipeline.errors import ConfigError, HardeningError

__all__ = [
    "GENESIS_DIGEST",
    "STORE_PREFIX",
    "Horizon",
    "Seal",
    "SealError",
    "SealRun",
    "SealVerification",
    "decode_fingerprints",
    "safe_horizon",
    "seal_audit_log",
    "verify_audit_seals",
    "verify_seal_chain",
]

FORMAT = "hardening-audit-seal/1"
DOMAIN = b"hardening-pipeline audit seal v1\x00"
INFO_SEAL_MAC_KEY = b"hardening-pipeline audit seal v1 mac-key"
GENESIS_DIGEST = bytes(32)
FINGERPRINT_BYTES = 8
STORE_PREFIX = "seals/"
# One seal covers at most this many rows, so a first seal over a large log is split into
# several, each a small database row and store object (about 0.9 MB of fingerprints at most).
MAX_ROWS_PER_SEAL = 100_000
DEFAULT_WAIT_SECONDS = 10.0
# Slack between a transaction's start and the creation time of the rows it is compared with.
START_MARGIN = timedelta(seconds=1)
FETCH_ROWS = 10_000
# Serialises sealing runs (two at once would both try to write seal n + 1).
_LOCK_KEY = 0x5EA1_A0D1
# A second sealer waits this long for the first, then says who holds the lock instead of hanging.
SEAL_LOCK_TIMEOUT_MS = 60_000


class SealError(HardeningError):
    """A seal could not be made or read: the store copy is unreadable, forged or in the way."""


# --- seals ----------------------------------------------------------------------------------------


class _Authenticated:
    """The MAC half of a seal or a check: signed with, and checked against, the seal key."""

    key_id: str | None
    mac: bytes | None

    def mac_message(self) -> bytes:
        raise NotImplementedError

    def signed(self, keyring: Keyring) -> Self:
        """This record with a MAC under the keyring's current master key."""
        unsigned = replace(self, key_id=keyring.current_key_id, mac=None)
        mac = hmac.new(_seal_key(keyring, keyring.current_key_id), unsigned.mac_message(), "sha256")
        return replace(unsigned, mac=mac.digest())

    def mac_problem(self, keyring: Keyring) -> str | None:
        """Why the MAC does not authenticate this record, or None when it does."""
        if self.key_id is None or self.mac is None:
            return "carries no MAC"
        try:
            key = _seal_key(keyring, self.key_id)
        except ConfigError:
            return f"is MAC'd under master key id {self.key_id}, which is not configured"
        expected = hmac.new(key, self.mac_message(), "sha256").digest()
        if not hmac.compare_digest(expected, self.mac):
            return "has a MAC that does not match its contents (forged or altered)"
        return None


@dataclass(frozen=True)
class Seal(_Authenticated):
    """One link of the chain: which ids it covers and the digest over them."""

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

    def mac_message(self) -> bytes:
        """Canonical JSON of every field but the MAC and the fingerprints (bound by their hash)."""
        body = {
            "format": FORMAT,
            "seq": self.seq,
            "from_id": self.from_id,
            "to_id": self.to_id,
            "row_count": self.row_count,
            "digest": self.digest.hex(),
            "previous_digest": self.previous_digest.hex(),
            "fingerprints_sha256": hashlib.sha256(self.fingerprints).hexdigest(),
            "sealed_at": _iso(self.sealed_at),
            "sealed_by": self.sealed_by,
            "key_id": self.key_id,
        }
        return json.dumps(body, sort_keys=True, separators=(",", ":")).encode("utf-8")

    @property
    def store_key(self) -> str:
        return store_key(self.seq)

    def to_store_json(self) -> bytes:
        body = json.loads(self.mac_message())
        body["fingerprints"] = base64.b64encode(self.fingerprints).decode("ascii")
        body["mac"] = self.mac.hex() if self.mac else None
        return json.dumps(body, sort_keys=True, indent=1).encode("utf-8") + b"\n"

    @classmethod
    def from_store_json(cls, data: bytes, key: str) -> Seal:
        try:
            body = json.loads(data)
            if body.get("format") != FORMAT:
                raise ValueError(f"format {body.get('format')!r}")
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
            )
        except (ValueError, KeyError, TypeError, binascii.Error) as exc:
            raise SealError(f"the store object {key} is not a readable seal ({exc})") from None
        if hashlib.sha256(seal.fingerprints).hexdigest() != body.get("fingerprints_sha256"):
            raise SealError(f"the store object {key}: its fingerprints do not match their hash")
        if seal.store_key != key:
            raise SealError(f"the store object {key} holds seal {seal.seq}: it was moved or copied")
        return seal


def store_key(seq: int) -> str:
    """Where seal ``seq`` is copied in the backup store (zero-padded so keys sort by seq)."""
    return f"{STORE_PREFIX}{seq:012d}.json"


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat(timespec="microseconds")


def _seal_key(keyring: Keyring, key_id: str) -> bytes:
    """A key used for nothing but seals, derived from the master key's manifest MAC key."""
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=INFO_SEAL_MAC_KEY)
    return hkdf.derive(keyring.master_key(key_id).mac_key)


# --- fingerprints and digests ---------------------------------------------------------------------


def _varint(value: int) -> bytes:
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
    """(id, first 8 bytes of the row hash) for every row a seal covered, in id order."""
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


class _Accumulator:
    """Builds one seal's digest and fingerprints while rows stream past."""

    def __init__(self, from_id: int, previous_digest: bytes) -> None:
        self.from_id = from_id
        self.previous_digest = previous_digest
        self.hasher = hashlib.sha256(DOMAIN + previous_digest)
        self.fingerprints = bytearray()
        self.last_id = from_id - 1
        self.count = 0

    def add(self, row_id: int, row_hash: bytes) -> None:
        self.hasher.update(row_hash)
        self.fingerprints += _varint(row_id - self.last_id) + row_hash[:FINGERPRINT_BYTES]
        self.last_id = row_id
        self.count += 1

    def digest(self, to_id: int) -> bytes:
        hasher = self.hasher.copy()
        hasher.update(struct.pack(">qqq", self.from_id, to_id, self.count))
        return hasher.digest()


# The row hash ``h`` of the format above, as SQL over a row of public.audit_events.
_ROW_HASH = sql.SQL(
    """pg_catalog.sha256(pg_catalog.convert_to(pg_catalog.jsonb_build_array(
               id, actor, tenant_id, table_name, operation, record_id, before, after,
               created_at AT TIME ZONE 'UTC', db_role, txid)::text, 'UTF8'))"""
)
_ROW_HASHES = sql.SQL(
    """
    SELECT id, {row_hash}
    FROM public.audit_events
    WHERE id > %(after)s AND id <= %(upto)s
    ORDER BY id
    """
).format(row_hash=_ROW_HASH)
_MIN_BIGINT = -(2**63)


def _row_hashes(conn: psycopg.Connection, after: int, upto: int) -> Iterator[tuple[int, bytes]]:
    """(id, SHA-256 of the row's canonical text) in id order, streamed through a cursor."""
    with conn.cursor(name="audit_seal_rows", row_factory=tuple_row) as cur:
        cur.itersize = FETCH_ROWS
        cur.execute(_ROW_HASHES, {"after": after, "upto": upto})
        for row_id, row_hash in cur:
            yield row_id, bytes(row_hash)


# --- the safe horizon -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Horizon:
    """How far a seal may reach now, and what (if anything) held it back."""

    to_id: int
    allocated: int
    held_back_by: tuple[int, ...] = ()

    @property
    def complete(self) -> bool:
        return not self.held_back_by


_SEQUENCE = """
    SELECT pg_catalog.pg_sequence_last_value(s.seq) AS last_value, p.seqcache
    FROM (SELECT pg_catalog.pg_get_serial_sequence('public.audit_events', 'id')::regclass AS seq) s
    JOIN pg_catalog.pg_sequence p ON p.seqrelid = s.seq
"""
# Transaction ids (32-bit, as text -> bigint) currently held by other sessions, including
# prepared transactions (pid NULL). Subtransaction ids are listed too; waiting on them is harmless.
_HELD_XIDS = """
    SELECT coalesce(array_agg(DISTINCT l.transactionid::text::bigint), '{}') AS held
    FROM pg_catalog.pg_locks l
    WHERE l.locktype = 'transactionid' AND l.mode = 'ExclusiveLock' AND l.granted
      AND l.pid IS DISTINCT FROM pg_catalog.pg_backend_pid()
      AND (%(among)s::bigint[] IS NULL OR l.transactionid::text::bigint = ANY (%(among)s))
"""
# When each still-open transaction began: through the lock's pid, so a subtransaction id finds
# its session too. NULL for a prepared transaction or a session this role may not inspect.
_OPEN_SINCE = """
    SELECT x, min(a.xact_start) AS xact_start
    FROM unnest(%s::bigint[]) AS x
    LEFT JOIN pg_catalog.pg_locks l
        ON l.locktype = 'transactionid' AND l.mode = 'ExclusiveLock' AND l.granted
       AND l.transactionid::text::bigint = x
    LEFT JOIN pg_catalog.pg_stat_activity a ON a.pid = l.pid
    GROUP BY x
"""


def safe_horizon(
    conn: psycopg.Connection,
    floor: int,
    *,
    wait_seconds: float = DEFAULT_WAIT_SECONDS,
    poll_seconds: float = 0.1,
    sleep: Callable[[float], None] = time.sleep,
) -> Horizon:
    """The largest id a seal may cover now (see the module docstring); never below ``floor``.

    ``conn`` must be in READ COMMITTED, so every statement sees a fresh snapshot.
    """
    seq = conn.execute(_SEQUENCE).fetchone()
    if seq is None:
        raise SealError("audit_events.id has no sequence; is 002_audit_events applied?")
    if seq["seqcache"] > 1:
        raise ConfigError(
            f"the audit_events id sequence has CACHE {seq['seqcache']}, so ids are not handed "
            "out in order and no seal horizon is safe; ALTER SEQUENCE ... CACHE 1."
        )
    allocated = seq["last_value"] or 0
    if allocated <= floor:
        return Horizon(floor, allocated)
    deadline = time.monotonic() + wait_seconds
    open_xids: list[int] = conn.execute(_HELD_XIDS, {"among": None}).fetchone()["held"]
    while open_xids:
        open_xids = conn.execute(_HELD_XIDS, {"among": open_xids}).fetchone()["held"]
        if not open_xids or time.monotonic() >= deadline:
            break
        sleep(poll_seconds)
    if not open_xids:
        return Horizon(allocated, allocated)
    starts = conn.execute(_OPEN_SINCE, (open_xids,)).fetchall()
    if any(r["xact_start"] is None for r in starts):
        return Horizon(floor, allocated, tuple(open_xids))
    cutoff = min(r["xact_start"] for r in starts) - START_MARGIN
    row = conn.execute(
        "SELECT max(id) AS m FROM public.audit_events "
        "WHERE id > %s AND id <= %s AND created_at < %s",
        (floor, allocated, cutoff),
    ).fetchone()
    return Horizon(max(floor, row["m"] or floor), allocated, tuple(open_xids))


# --- sealing --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SealRun:
    """What one sealing run did."""

    seals: list[Seal]
    horizon: Horizon
    adopted: list[Seal] = field(default_factory=list)

    @property
    def latest(self) -> Seal | None:
        return (self.seals or self.adopted or [None])[-1]

    @property
    def rows(self) -> int:
        return sum(s.row_count for s in self.seals)

    def summary(self) -> str:
        parts = []
        if self.adopted:
            parts.append(f"re-recorded {len(self.adopted)} seal(s) from the store")
        if self.seals:
            first, last = self.seals[0], self.seals[-1]
            parts.append(
                f"sealed ids {first.from_id}..{last.to_id} ({self.rows} rows) as seal(s) "
                f"{first.seq}..{last.seq}"
            )
        else:
            parts.append("nothing new to seal")
        if self.horizon.held_back_by:
            parts.append(
                "held back at id "
                f"{self.horizon.to_id} (of {self.horizon.allocated} handed out) by open "
                f"transaction(s) {', '.join(map(str, self.horizon.held_back_by[:5]))}"
            )
        return "; ".join(parts)


_SEAL_COLUMNS = (
    "seq",
    "from_id",
    "to_id",
    "row_count",
    "digest",
    "previous_digest",
    "fingerprints",
    "sealed_at",
    "sealed_by",
    "key_id",
    "mac",
)
_SELECT_SEALS = sql.SQL("SELECT {} FROM hardening.audit_seals ORDER BY seq").format(
    sql.SQL(", ").join(map(sql.Identifier, _SEAL_COLUMNS))
)
_INSERT_SEAL = sql.SQL("INSERT INTO hardening.audit_seals ({}) VALUES ({})").format(
    sql.SQL(", ").join(map(sql.Identifier, _SEAL_COLUMNS)),
    sql.SQL(", ").join(sql.Placeholder(c) for c in _SEAL_COLUMNS),
)


def _seal_from_row(row: dict) -> Seal:
    values = {c: row[c] for c in _SEAL_COLUMNS}
    for c in ("digest", "previous_digest", "fingerprints", "mac"):
        if values[c] is not None:
            values[c] = bytes(values[c])
    return Seal(**values)


def read_seals(conn: psycopg.Connection) -> list[Seal]:
    """Every seal in the database, in seq order."""
    return [_seal_from_row(r) for r in conn.execute(_SELECT_SEALS).fetchall()]


def _last_seal(conn: psycopg.Connection) -> Seal | None:
    row = conn.execute(sql.SQL("{} DESC LIMIT 1").format(_SELECT_SEALS)).fetchone()
    return _seal_from_row(row) if row else None


def _insert(conn: psycopg.Connection, seal: Seal) -> None:
    conn.execute(_INSERT_SEAL, seal.__dict__)


def read_store_copy(store: BackupStore, seq: int) -> Seal | None:
    """The store copy of seal ``seq``, or None when there is none."""
    key = store_key(seq)
    try:
        data = b"".join(store.get(key))
    except ObjectNotFoundError:
        return None
    return Seal.from_store_json(data, key)


def _hash_range(conn: psycopg.Connection, seal: Seal) -> tuple[bytes, int, bytes]:
    acc = _Accumulator(seal.from_id, seal.previous_digest)
    for row_id, row_hash in _row_hashes(conn, seal.from_id - 1, seal.to_id):
        acc.add(row_id, row_hash)
    return acc.digest(seal.to_id), acc.count, bytes(acc.fingerprints)


def _adopt_store_copies(
    conn: psycopg.Connection, store: BackupStore, keyring: Keyring | None, head: Seal | None
) -> list[Seal]:
    """Re-record store copies that are ahead of the database, if they still match the rows.

    A copy ahead of the database means a run wrote the store and then failed to commit, or a
    seal was deleted from the database. Either way the copy is never overwritten: if it is
    authentic, continues the database's chain and still matches the rows, it goes back into the
    database; otherwise sealing stops, because continuing would hide the evidence.
    """
    adopted: list[Seal] = []
    while True:
        seq = head.seq + 1 if head else 1
        copy = read_store_copy(store, seq)
        if copy is None:
            return adopted
        why = copy.mac_problem(keyring) if keyring else None
        if why is None and copy.previous_digest != (head.digest if head else GENESIS_DIGEST):
            why = "does not continue the database's chain"
        if why is None and copy.from_id != (head.to_id + 1 if head else 1):
            why = "does not start where the database's last seal ends"
        if why is None and _hash_range(conn, copy) != (
            copy.digest,
            copy.row_count,
            copy.fingerprints,
        ):
            why = "no longer matches the audit rows it covers"
        if why is not None:
            raise SealError(
                f"seal {seq} exists in the backup store but not in the database, and the store "
                f"object {why}; sealing stopped so that it is not overwritten. Run the status "
                "check with the store and see docs/runbook.md#status-audit-seal-chain."
            )
        _insert(conn, copy)
        adopted.append(copy)
        head = copy


def seal_audit_log(
    url: str,
    store: BackupStore | None = None,
    keyring: Keyring | None = None,
    actor: str = "hardening seal",
    *,
    max_rows: int = MAX_ROWS_PER_SEAL,
    wait_seconds: float = DEFAULT_WAIT_SECONDS,
) -> SealRun:
    """Seal the audit rows added since the last seal, up to the safe horizon.

    The store copy of each seal is written before the database transaction commits, so a seal
    that exists in the database always has its copy; a copy whose commit failed is picked up by
    the next run (``_adopt_store_copies``). Runs are serialised with the seal's job lock.
    """
    if max_rows < 1:
        raise ValueError("max_rows must be at least 1")
    with connect(url, autocommit=True) as conn, conn.transaction():
        if job_locks_available(conn):
            take_job_lock(conn, "seal", lock_timeout_ms=SEAL_LOCK_TIMEOUT_MS)
        else:  # a database migrated before 013
            conn.execute("SELECT pg_catalog.pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
        head = _last_seal(conn)
        adopted = _adopt_store_copies(conn, store, keyring, head) if store else []
        head = adopted[-1] if adopted else head
        floor = head.to_id if head else 0
        horizon = safe_horizon(conn, floor, wait_seconds=wait_seconds)
        seals: list[Seal] = []
        if horizon.to_id > floor:
            seq = head.seq if head else 0
            previous = head.digest if head else GENESIS_DIGEST

            def close(acc: _Accumulator, to_id: int) -> None:
                nonlocal seq, previous
                seq += 1
                seal = Seal(
                    seq=seq,
                    from_id=acc.from_id,
                    to_id=to_id,
                    row_count=acc.count,
                    digest=acc.digest(to_id),
                    previous_digest=previous,
                    fingerprints=bytes(acc.fingerprints),
                    sealed_at=datetime.now(UTC),
                    sealed_by=actor,
                )
                if keyring is not None:
                    seal = seal.signed(keyring)
                if store is not None:
                    if store.exists(seal.store_key):
                        raise SealError(f"{seal.store_key} already exists in the backup store")
                    store.put(seal.store_key, [seal.to_store_json()])
                _insert(conn, seal)
                seals.append(seal)
                previous = seal.digest

            acc = _Accumulator(floor + 1, previous)
            for row_id, row_hash in _row_hashes(conn, floor, horizon.to_id):
                acc.add(row_id, row_hash)
                if acc.count >= max_rows and row_id < horizon.to_id:
                    close(acc, row_id)
                    acc = _Accumulator(row_id + 1, previous)
            close(acc, horizon.to_id)
    return SealRun(seals, horizon, adopted)


# --- row-version checks ---------------------------------------------------------------------------

CHECK_FORMAT = "hardening-audit-seal-check/1"
CHECKS_TABLE = "hardening.audit_seal_checks"
# In recording runs, a check older than this is not trusted, so every seal is re-hashed in full
# at least this often even if its row versions never change (a change below SQL, written
# straight into the data files, keeps them).
RECHECK_AFTER = timedelta(days=1)
# Readers (the status line) stop trusting a check this old, so a stopped recording job cannot
# leave the line vouching for rows nobody has re-hashed in a long time.
TRUST_CHECKS_FOR = 2 * RECHECK_AFTER
# A row whose text columns take this many stored bytes may keep a value out of line, in the
# table's TOAST relation, where a change does not give the row a new version. Postgres moves a
# value out of line only when the row, compressed, is still over ~2 kB, so any such row is well
# above this; for those rows the versions digest includes the row hash itself.
OUT_OF_LINE_BYTES = 1000
_EMPTY_ROWS = hashlib.sha256(b"").digest()


@dataclass(frozen=True)
class SealCheck(_Authenticated):
    """A full re-hash of one seal that found its rows intact, and the row versions it saw."""

    seq: int
    seal_digest: bytes
    versions_digest: bytes
    checked_at: datetime
    checked_by: str
    key_id: str | None = None
    mac: bytes | None = field(default=None, repr=False)

    def mac_message(self) -> bytes:
        body = {
            "format": CHECK_FORMAT,
            "seq": self.seq,
            "seal_digest": self.seal_digest.hex(),
            "versions_digest": self.versions_digest.hex(),
            "checked_at": _iso(self.checked_at),
            "checked_by": self.checked_by,
            "key_id": self.key_id,
        }
        return json.dumps(body, sort_keys=True, separators=(",", ":")).encode("utf-8")


_CHECK_COLUMNS = tuple(SealCheck.__dataclass_fields__)
_SELECT_CHECKS = sql.SQL(
    "SELECT {} FROM hardening.audit_seal_checks ORDER BY seq, checked_at"
).format(sql.SQL(", ").join(map(sql.Identifier, _CHECK_COLUMNS)))
_INSERT_CHECK = sql.SQL("INSERT INTO hardening.audit_seal_checks ({}) VALUES ({})").format(
    sql.SQL(", ").join(map(sql.Identifier, _CHECK_COLUMNS)),
    sql.SQL(", ").join(sql.Placeholder(c) for c in _CHECK_COLUMNS),
)
# What a row reads as depends on the table's columns too: renaming or swapping two, dropping
# one and adding it back with a default, or changing a type without a rewrite changes every
# sealed row's text and no row's version. So the table's shape is part of every digest.
_TABLE_SHAPE = """
    SELECT c.oid::text || ':' || c.relkind::text || ';' || pg_catalog.string_agg(
               pg_catalog.concat_ws(':', a.attnum, a.attname, a.atttypid, a.atttypmod,
                                    a.attcollation, a.attisdropped, a.atthasmissing,
                                    a.attmissingval::text, a.attgenerated, a.attidentity),
               ',' ORDER BY a.attnum) AS shape
    FROM pg_catalog.pg_class c
    JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0
    WHERE c.oid = pg_catalog.to_regclass('public.audit_events')
    GROUP BY c.oid, c.relkind
"""
# One pass over the sealed range, grouped by seal with a binary search over the seals' first
# ids. Bucket 0 holds ids below the first seal, which can only be forged rows. Per row: id,
# xmin and ctid, then 0x00, or 0x01 and the row hash when the row may hold a value out of line
# (only those rows have their images read).
_ROW_VERSIONS = sql.SQL(
    """
    SELECT pg_catalog.width_bucket(id, %(starts)s::bigint[]) AS bucket,
           pg_catalog.sha256(pg_catalog.string_agg(
               pg_catalog.int8send(id) || pg_catalog.int8send(xmin::text::bigint)
               || pg_catalog.convert_to(ctid::text, 'UTF8')
               || CASE WHEN coalesce(pg_catalog.pg_column_size(actor), 0)
                            + coalesce(pg_catalog.pg_column_size(table_name), 0)
                            + coalesce(pg_catalog.pg_column_size(operation), 0)
                            + coalesce(pg_catalog.pg_column_size(record_id), 0)
                            + coalesce(pg_catalog.pg_column_size(before), 0)
                            + coalesce(pg_catalog.pg_column_size(after), 0)
                            + coalesce(pg_catalog.pg_column_size(db_role), 0)
                            >= %(out_of_line)s
                       THEN '\\x01'::bytea || {row_hash}
                       ELSE '\\x00'::bytea END,
               ''::bytea ORDER BY id)) AS versions
    FROM public.audit_events
    WHERE id <= %(last)s
    GROUP BY 1
    """
).format(row_hash=_ROW_HASH)


def row_versions(conn: psycopg.Connection, chain: Sequence[Seal]) -> tuple[dict[int, bytes], bool]:
    """Each seal's versions digest, and whether any row lies below the first seal.

    ``versions_digest = SHA-256(UTF-8 of the table shape || 0x00 || rows)``, where ``rows`` is
    the SHA-256 that ``_ROW_VERSIONS`` computes for the seal's range (of no bytes when empty).
    """
    shape_row = conn.execute(_TABLE_SHAPE).fetchone()
    shape = (shape_row["shape"] if shape_row else "missing").encode("utf-8")
    found = {
        r["bucket"]: bytes(r["versions"])
        for r in conn.execute(
            _ROW_VERSIONS,
            {
                "starts": [s.from_id for s in chain],
                "last": chain[-1].to_id,
                "out_of_line": OUT_OF_LINE_BYTES,
            },
        ).fetchall()
    }
    versions = {
        s.seq: hashlib.sha256(shape + b"\x00" + found.get(i, _EMPTY_ROWS)).digest()
        for i, s in enumerate(chain, start=1)
    }
    return versions, 0 in found


def trusted_checks(
    conn: psycopg.Connection,
    chain: Sequence[Seal],
    store: BackupStore | None,
    keyring: Keyring | None,
    *,
    max_age: timedelta | None = None,
) -> dict[int, SealCheck]:
    """The newest check per seal that may stand in for re-hashing it.

    A check counts only for the seal digest it was made against. With a keyring, only checks
    whose MAC it verifies count. With a store but no keyring, none do: the store copies are
    then the reference, and a check in the database proves nothing to it. With neither, the
    database's own seals are the reference and its checks are trusted as far as they are.
    """
    if (store is not None and keyring is None) or not table_exists(conn, CHECKS_TABLE):
        return {}
    digests = {s.seq: s.digest for s in chain}
    now = datetime.now(UTC)
    trusted: dict[int, SealCheck] = {}
    for row in conn.execute(_SELECT_CHECKS).fetchall():
        values = {c: row[c] for c in _CHECK_COLUMNS}
        for c in ("seal_digest", "versions_digest", "mac"):
            if values[c] is not None:
                values[c] = bytes(values[c])
        check = SealCheck(**values)
        if digests.get(check.seq) != check.seal_digest:
            continue
        if keyring is not None and check.mac_problem(keyring):
            continue
        if max_age is not None and now - check.checked_at > max_age:
            continue
        trusted[check.seq] = check  # rows arrive oldest first, so the newest wins
    return trusted


# --- verification ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class SealVerification:
    """The outcome of checking the chain: a status line's worth, plus the first bad id."""

    passed: bool
    detail: str
    fix: str = ""
    first_bad_id: int | None = None
    seals: int = 0
    rows: int = 0
    store_checked: bool = False
    problems: list[str] = field(default_factory=list)
    rehashed_seals: int = 0
    rehashed_rows: int = 0


FIX = (
    "do not seal over it: compare the audit rows from the first bad id on with the newest backup "
    "taken before that seal, find who changed them (server log, pg_stat_activity, who holds "
    "superuser) and restore them; see docs/runbook.md#status-audit-seal-chain."
)


class _Problems:
    """Collects problems and works out the first bad id.

    A row the recomputation pins down (changed, deleted, inserted) is the answer; a problem
    with a seal itself (missing, unchained, differing from its copy) only says where its range
    starts, so it is used when no row could be pinned down.
    """

    def __init__(self) -> None:
        self.items: list[tuple[int | None, str, bool]] = []

    def add(self, bad_id: int | None, text: str, *, row: bool = False) -> None:
        self.items.append((bad_id, text, row))

    @property
    def texts(self) -> list[str]:
        # Row findings first: they are what the operator has to look at.
        return [t for _, t, row in self.items if row] + [t for _, t, row in self.items if not row]

    @property
    def first_bad_id(self) -> int | None:
        rows = [i for i, _, row in self.items if row and i is not None]
        seals = [i for i, _, row in self.items if not row and i is not None]
        return min(rows or seals) if rows or seals else None


def _check_structure(chain: Sequence[Seal], keyring: Keyring | None, problems: _Problems) -> None:
    previous: Seal | None = None
    for seal in chain:
        expected_seq = previous.seq + 1 if previous else 1
        expected_from = previous.to_id + 1 if previous else 1
        expected_prev = previous.digest if previous else GENESIS_DIGEST
        if seal.seq != expected_seq:
            problems.add(expected_from, f"seal {expected_seq} is missing")
        elif seal.from_id != expected_from:
            problems.add(
                min(seal.from_id, expected_from),
                f"seal {seal.seq} starts at id {seal.from_id}, not {expected_from}",
            )
        elif seal.previous_digest != expected_prev:
            problems.add(seal.from_id, f"seal {seal.seq} does not chain to seal {seal.seq - 1}")
        if keyring is not None and (why := seal.mac_problem(keyring)):
            problems.add(seal.from_id, f"seal {seal.seq} {why}")
        previous = seal


def _check_rows(
    conn: psycopg.Connection, chain: Sequence[Seal], problems: _Problems, after: int
) -> tuple[int, int | None]:
    """Recompute consecutive seals from the rows with ids above ``after``; returns (rows read,
    first bad id found here). ``after`` is the id before the first seal's range, or the lowest
    bigint for the chain's first seal, so that rows forged below it are read too."""
    rows_read = 0
    index = 0
    seal = chain[0]
    acc = _Accumulator(seal.from_id, seal.previous_digest)
    expected = decode_fingerprints(seal.fingerprints, seal.from_id)
    pending = next(expected, None)

    def finish() -> int | None:
        nonlocal pending
        if pending is not None:
            return pending[0]  # a sealed row is gone
        if acc.count != seal.row_count or acc.digest(seal.to_id) != seal.digest:
            return seal.from_id  # changed in a way the 8-byte fingerprints do not show
        return None

    def fail(bad_id: int, what: str) -> tuple[int, int]:
        problems.add(
            bad_id,
            f"id {bad_id} {what} (seal {seal.seq}, ids {seal.from_id}..{seal.to_id})",
            row=True,
        )
        return rows_read, bad_id

    try:
        for row_id, row_hash in _row_hashes(conn, after, chain[-1].to_id):
            rows_read += 1
            while row_id > seal.to_id:
                if (bad := finish()) is not None:
                    return fail(bad, "was deleted" if pending else "does not match its seal")
                index += 1
                seal = chain[index]
                acc = _Accumulator(seal.from_id, seal.previous_digest)
                expected = decode_fingerprints(seal.fingerprints, seal.from_id)
                pending = next(expected, None)
            if pending is not None and pending[0] < row_id:
                return fail(pending[0], "was deleted")
            if pending is None or pending[0] > row_id or row_id < seal.from_id:
                return fail(row_id, "was inserted after it was sealed")
            if row_hash[:FINGERPRINT_BYTES] != pending[1]:
                return fail(row_id, "was changed after it was sealed")
            acc.add(row_id, row_hash)
            pending = next(expected, None)
        while True:
            if (bad := finish()) is not None:
                return fail(bad, "was deleted" if pending else "does not match its seal")
            if index + 1 >= len(chain):
                return rows_read, None
            index += 1
            seal = chain[index]
            acc = _Accumulator(seal.from_id, seal.previous_digest)
            expected = decode_fingerprints(seal.fingerprints, seal.from_id)
            pending = next(expected, None)
    except SealError as exc:
        problems.add(seal.from_id, f"seal {seal.seq}: {exc}")
        return rows_read, seal.from_id


def _store_copies(store: BackupStore, problems: _Problems) -> dict[int, Seal]:
    copies: dict[int, Seal] = {}
    for obj in store.list(STORE_PREFIX):
        try:
            copy = Seal.from_store_json(b"".join(store.get(obj.key)), obj.key)
        except (SealError, ObjectNotFoundError) as exc:
            problems.add(None, str(exc))
            continue
        copies[copy.seq] = copy
    return copies


def _compare_with_store(
    db: list[Seal], copies: dict[int, Seal], keyring: Keyring | None, problems: _Problems
) -> list[Seal]:
    """Check the database's seals against the store copies; returns the chain to trust."""
    by_seq = {s.seq: s for s in db}
    chain: list[Seal] = []
    for seq in sorted(set(by_seq) | set(copies)):
        mine, copy = by_seq.get(seq), copies.get(seq)
        if copy is not None and keyring is not None and (why := copy.mac_problem(keyring)):
            problems.add(copy.from_id, f"store copy of seal {seq} {why}")
            copy = None
        if mine is None and copy is not None:
            problems.add(copy.from_id, f"seal {seq} is in the store but missing from the database")
        elif copy is None and seq not in copies and mine is not None:
            problems.add(mine.from_id, f"seal {seq} has no store copy")
        elif mine is not None and copy is not None and mine != copy:
            fields = [
                f
                for f in ("from_id", "to_id", "row_count", "digest", "previous_digest")
                if getattr(mine, f) != getattr(copy, f)
            ] or ["fingerprints/MAC"]
            problems.add(
                copy.from_id,
                f"seal {seq} in the database differs from its store copy ({', '.join(fields)})",
            )
        chosen = copy or mine
        if chosen is not None:
            chain.append(chosen)
    return chain


def verify_seal_chain(
    conn: psycopg.Connection,
    store: BackupStore | None = None,
    keyring: Keyring | None = None,
    *,
    full: bool = False,
    record_as: str | None = None,
) -> SealVerification:
    """Check the chain on an open connection (the status check runs it in its transaction).

    With a store, the MAC'd store copies are the reference and the database's seals must equal
    them; without one, the database's own seals are the reference (a full rewrite of seals and
    rows together then goes unseen, see the module docstring). With a keyring, every seal's MAC
    is checked too.

    Every seal's structure, MAC and store copy is checked on every call. Its rows are re-hashed
    unless a trusted check (``trusted_checks``) saw exactly the row versions that are there now;
    ``full`` re-hashes every seal regardless. ``record_as`` (a writable connection) records a
    check for each seal re-hashed when the whole chain is intact, and re-hashes seals whose last
    check is older than ``RECHECK_AFTER``; without it, checks older than ``TRUST_CHECKS_FOR``
    are not trusted.
    """
    problems = _Problems()
    db = read_seals(conn)
    chain = db
    if store is not None:
        chain = _compare_with_store(db, _store_copies(store, problems), keyring, problems)
    if not chain:
        if problems.items:
            return _red(problems, 0, 0, store is not None)
        return SealVerification(True, "no seals yet", store_checked=store is not None)
    _check_structure(chain, keyring, problems)
    # Versions are read before any row is re-hashed: a row changed in between then differs
    # from what a recorded check says, and the next verification re-hashes it.
    versions, below_first = row_versions(conn, chain) if record_as or not full else ({}, True)
    trusted = (
        {}
        if full
        else trusted_checks(
            conn, chain, store, keyring, max_age=RECHECK_AFTER if record_as else TRUST_CHECKS_FOR
        )
    )
    stale = [
        i
        for i, seal in enumerate(chain)
        if seal.seq not in trusted or trusted[seal.seq].versions_digest != versions[seal.seq]
    ]
    if below_first and stale[:1] != [0]:
        stale.insert(0, 0)  # the first seal's re-hash reads from the lowest id, so it finds them
    rows_read = 0
    for run in _consecutive(stale):
        first = chain[run[0]]
        after = _MIN_BIGINT if run[0] == 0 else first.from_id - 1
        read, bad = _check_rows(conn, [chain[i] for i in run], problems, after)
        rows_read += read
        if bad is not None:
            break
    if problems.items:
        return _red(problems, len(chain), rows_read, store is not None)
    # With a store but no key, checks are never trusted (trusted_checks), so none are written.
    if record_as is not None and stale and (store is None or keyring is not None):
        _record_checks(conn, [chain[i] for i in stale], versions, keyring, record_as)
    covered = sum(s.row_count for s in chain)
    checks = ["store copies match" if store is not None else "database copy only"]
    if keyring is not None:
        checks.append("MACs valid")
    if len(stale) == len(chain):
        rehashed = "every row re-hashed"
    else:
        spared = set(range(len(chain))) - set(stale)
        oldest = min(trusted[chain[i].seq].checked_at for i in spared)
        rehashed = (
            f"re-hashed {len(stale)} seal(s) ({rows_read} rows); {len(chain) - len(stale)} "
            f"unchanged since re-hashed (oldest {_iso(oldest)[:19]}Z)"
        )
    detail = (
        f"{len(chain)} seal(s) cover ids 1..{chain[-1].to_id} ({covered} rows), chain intact; "
        + ", ".join([rehashed, *checks])
        + f"; last sealed {_iso(chain[-1].sealed_at)[:19]}Z"
    )
    return SealVerification(
        True,
        detail,
        seals=len(chain),
        rows=covered,
        store_checked=store is not None,
        rehashed_seals=len(stale),
        rehashed_rows=rows_read,
    )


def _consecutive(indexes: Sequence[int]) -> Iterator[list[int]]:
    """Split sorted indexes into runs of consecutive ones: [0, 1, 4] -> [0, 1], [4]."""
    run: list[int] = []
    for i in indexes:
        if run and i != run[-1] + 1:
            yield run
            run = []
        run.append(i)
    if run:
        yield run


def _record_checks(
    conn: psycopg.Connection,
    seals: Sequence[Seal],
    versions: dict[int, bytes],
    keyring: Keyring | None,
    checked_by: str,
) -> None:
    if not table_exists(conn, CHECKS_TABLE):
        return
    now = datetime.now(UTC)
    for seal in seals:
        check = SealCheck(seal.seq, seal.digest, versions[seal.seq], now, checked_by)
        if keyring is not None:
            check = check.signed(keyring)
        conn.execute(_INSERT_CHECK, check.__dict__)


def _red(problems: _Problems, seals: int, rows: int, store_checked: bool) -> SealVerification:
    texts = problems.texts
    first = problems.first_bad_id
    shown = "; ".join(texts[:4]) + (f" (+{len(texts) - 4} more)" if len(texts) > 4 else "")
    detail = (f"first bad id {first}: " if first is not None else "") + shown
    return SealVerification(False, detail, FIX, first, seals, rows, store_checked, problems=texts)


def verify_audit_seals(
    url: str,
    store: BackupStore | None = None,
    keyring: Keyring | None = None,
    *,
    full: bool = False,
    record_as: str | None = None,
) -> SealVerification:
    """Check the chain against ``url`` in one transaction (see ``verify_seal_chain``).

    Read-only unless ``record_as`` asks for checks to be recorded. Repeatable read, so the row
    versions and the re-hashed rows come from one snapshot.
    """
    with connect(url) as conn:
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        conn.read_only = record_as is None
        with conn.transaction():
            return verify_seal_chain(conn, store, keyring, full=full, record_as=record_as)
