"""Row-version checks: re-hash a seal once, then trust it while its rows keep their versions.

Changing a row through SQL always gives it a new row version: UPDATE writes a new tuple with a
new ``xmin`` and ``ctid``, DELETE removes it, a forged row has its own. So a verification that
re-hashed a seal's rows (in Python) and found them intact may record a check: a digest of the
row versions it saw, with the seal digest it was made against, MAC'd like a seal. Later
verifications read only the versions and re-hash the seals whose versions differ.

The versions digest is computed here too, from the raw ``xmin`` and ``ctid`` the server sends,
so no SQL function decides whether a seal is re-hashed. Format 1 checks (010), whose digest the
database computed, are ignored. What the versions cannot show is bounded by age: recording runs
re-hash each seal at least every ``RECHECK_AFTER``, readers stop trusting a check after
``TRUST_CHECKS_FOR``. Format details: docs/audit-seal-format.md, "Row-version checks".
"""

from __future__ import annotations

import bisect
import hashlib
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import psycopg
from psycopg import sql

from hardening_pipeline.backup.crypto import Keyring
from hardening_pipeline.backup.store import BackupStore
from hardening_pipeline.hardening.seals.format import (
    Seal,
    _Authenticated,
    canonical_json,
    has_format_2,
    iso,
)
from hardening_pipeline.hardening.seals.rows import (
    COLUMNS,
    check_types,
    int8,
    raw_cursor,
    row_hash_v2,
)

CHECK_FORMAT = "hardening-audit-seal-check/2"
CHECK_VERSION = 2
CHECKS_TABLE = "hardening.audit_seal_checks"
VERSIONS_DOMAIN = b"hardening-pipeline audit row versions v2\x00"
# In recording runs, a check older than this is not trusted, so every seal is re-hashed in full
# at least this often even if its row versions never change (a change below SQL, written
# straight into the data files, keeps them).
RECHECK_AFTER = timedelta(days=1)
# Readers (the status line) stop trusting a check this old, so a stopped recording job cannot
# leave the line vouching for rows nobody has re-hashed in a long time.
TRUST_CHECKS_FOR = 2 * RECHECK_AFTER
# A row whose columns take this many stored bytes may keep a value out of line, in the table's
# TOAST relation, where a change does not give the row a new version. Postgres moves a value
# out of line only when the row, compressed, is still over ~2 kB, so any such row is well above
# this; for those rows the versions digest includes the row hash itself.
OUT_OF_LINE_BYTES = 1000


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
        return canonical_json(
            {
                "format": CHECK_FORMAT,
                "seq": self.seq,
                "seal_digest": self.seal_digest.hex(),
                "versions_digest": self.versions_digest.hex(),
                "checked_at": iso(self.checked_at),
                "checked_by": self.checked_by,
                "key_id": self.key_id,
            }
        )


_CHECK_COLUMNS = tuple(SealCheck.__dataclass_fields__)
_SELECT_CHECKS = sql.SQL(
    "SELECT {} FROM hardening.audit_seal_checks WHERE version = %s ORDER BY seq, checked_at"
).format(sql.SQL(", ").join(map(sql.Identifier, _CHECK_COLUMNS)))
_INSERT_CHECK = sql.SQL(
    "INSERT INTO hardening.audit_seal_checks ({}, version) VALUES ({}, {})"
).format(
    sql.SQL(", ").join(map(sql.Identifier, _CHECK_COLUMNS)),
    sql.SQL(", ").join(sql.Placeholder(c) for c in _CHECK_COLUMNS),
    sql.Literal(CHECK_VERSION),
)
# What a row reads as depends on the table's columns too: renaming or swapping two, dropping
# one and adding it back with a default, or changing a type without a rewrite changes every
# sealed row's text and no row's version. So the table's shape is part of every digest.
_SHAPE = """
    SELECT c.oid AS reloid, c.relkind, a.attnum, a.attname, a.atttypid, a.atttypmod,
           a.attcollation, a.attisdropped, a.atthasmissing, a.attmissingval, a.attgenerated,
           a.attidentity
    FROM pg_catalog.pg_class c
    JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0
    WHERE c.oid = pg_catalog.to_regclass('public.audit_events')
"""
# One pass over the sealed range: each row's id, xmin and ctid as the server stores them, and
# the row's values only when it is large enough to keep one out of line.
_STORED_SIZE = sql.SQL(" + ").join(
    sql.SQL("coalesce(pg_catalog.pg_column_size(e.{}), 0)").format(sql.Identifier(name))
    for name, _ in COLUMNS
)
_ROW_VERSIONS = sql.SQL(
    """
    SELECT e.id, e.xmin, e.ctid, {columns}
    FROM public.audit_events e
    LEFT JOIN LATERAL (SELECT true AS yes WHERE {size} >= %(out_of_line)s) big ON true
    WHERE e.id <= %(last)s
    ORDER BY e.id
    """
).format(
    columns=sql.SQL(", ").join(
        sql.SQL("CASE WHEN big.yes THEN e.{} END").format(sql.Identifier(name))
        for name, _ in COLUMNS
    ),
    size=_STORED_SIZE,
)


def table_shape(conn: psycopg.Connection) -> bytes:
    rows = conn.execute(_SHAPE).fetchall()
    if not rows:
        return b"missing"
    rows.sort(key=lambda r: r["attnum"])
    head = f"{rows[0]['reloid']}:{rows[0]['relkind']};"
    return (
        head
        + ",".join(
            ":".join(
                str(r[c])
                for c in (
                    "attnum",
                    "attname",
                    "atttypid",
                    "atttypmod",
                    "attcollation",
                    "attisdropped",
                    "atthasmissing",
                    "attmissingval",
                    "attgenerated",
                    "attidentity",
                )
            )
            for r in rows
        )
    ).encode("utf-8")


def row_versions(conn: psycopg.Connection, chain: Sequence[Seal]) -> tuple[dict[int, bytes], bool]:
    """Each seal's versions digest, and whether any row lies below the first seal.

    ``versions = SHA-256(VERSIONS_DOMAIN || shape || 0x00 || per row in the seal's range, in id
    order: int8(id) || xmin (4 bytes) || ctid (6 bytes) || (0x01 || row hash, or 0x00))``.
    """
    shape = table_shape(conn)
    starts = [s.from_id for s in chain]
    hashers = [hashlib.sha256(VERSIONS_DOMAIN + shape + b"\x00") for _ in chain]
    below_first = False
    with raw_cursor(conn, "audit_seal_versions") as cur:
        cur.execute(_ROW_VERSIONS, {"last": chain[-1].to_id, "out_of_line": OUT_OF_LINE_BYTES})
        checked = False
        for row in cur:
            if not checked:
                check_types(cur.description, offset=3)
                checked = True
            row_id = int8(row[0])
            bucket = bisect.bisect_right(starts, row_id) - 1
            if bucket < 0:
                below_first = True
                continue
            values = row[3:]
            tail = b"\x00" if values[0] is None else b"\x01" + row_hash_v2(values)
            hashers[bucket].update(struct.pack(">q", row_id) + row[1] + row[2] + tail)
    return {s.seq: h.digest() for s, h in zip(chain, hashers, strict=True)}, below_first


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
    if (store is not None and keyring is None) or not has_format_2(conn):
        return {}  # before 014 every check is format 1, digested by the database
    digests = {s.seq: s.digest for s in chain}
    now = datetime.now(UTC)
    trusted: dict[int, SealCheck] = {}
    for row in conn.execute(_SELECT_CHECKS, (CHECK_VERSION,)).fetchall():
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


def record_checks(
    conn: psycopg.Connection,
    seals: Sequence[Seal],
    versions: dict[int, bytes],
    keyring: Keyring | None,
    checked_by: str,
) -> None:
    if not has_format_2(conn):
        return
    now = datetime.now(UTC)
    for seal in seals:
        check = SealCheck(seal.seq, seal.digest, versions[seal.seq], now, checked_by)
        if keyring is not None:
            check = check.signed(keyring)
        conn.execute(_INSERT_CHECK, check.__dict__)


__all__ = [
    "CHECKS_TABLE",
    "RECHECK_AFTER",
    "TRUST_CHECKS_FOR",
    "SealCheck",
    "record_checks",
    "row_versions",
    "trusted_checks",
]
