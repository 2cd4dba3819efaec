"""Recorded row hashes: verifying the seal chain over a log whose erased tenants' rows are gone.

A backup keeps each tenant's audit rows in that tenant's object, so erasing the tenant's key
erases them too. Restored, such a log lacks rows its seals cover. ``hardening.audit_row_hashes``
(migration 022) keeps each row's seal hash (format 1 or 2, as the seal covering it hashes it),
and the backup carries the table in its shared object. A verifier told which tenants were
erased uses the recorded hash for each of their missing rows and recomputes every digest as
before. A recorded hash is not trusted: a wrong one gives a digest its MAC'd seal does not have.

Hashes are recorded for sealed rows only (their ids and contents are final), by the backup just
before its snapshot; inside the snapshot the backup hashes the few rows above them itself
(``unrecorded_copy_text``), so every row a backup holds has its hash in the same backup.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import psycopg
from psycopg import sql
from psycopg.rows import tuple_row

from hardening_pipeline.db.connection import connect
from hardening_pipeline.hardening.seals.format import Seal, has_format_2
from hardening_pipeline.hardening.seals.rows import (
    COLUMNS,
    Fields,
    audit_rows,
    row_hash_v1,
    row_hash_v2,
)

HASHES_TABLE = ("hardening", "audit_row_hashes")
_TENANT = next(i for i, (name, _) in enumerate(COLUMNS) if name == "tenant_id")
_LAST_RECORDED = "SELECT coalesce(max(id), 0) FROM hardening.audit_row_hashes"
_RECORD_SLICE = 50_000
_COPY_IN = "COPY hardening.audit_row_hashes (id, tenant_id, row_hash) FROM STDIN"


def has_row_hashes(conn: psycopg.Connection) -> bool:
    """Migration 022 is applied: tenants' audit rows can go into their objects."""
    cur = conn.cursor(row_factory=tuple_row)
    row = cur.execute(
        "SELECT pg_catalog.to_regclass('hardening.audit_row_hashes') IS NOT NULL"
    ).fetchone()
    return bool(row and row[0])


@dataclass(frozen=True)
class _Formats:
    """Which row-hash format covers an id: format 1 up to the last format 1 seal, else 2."""

    v1_upto: int

    @classmethod
    def of(cls, chain: Sequence[Seal]) -> _Formats:
        return cls(max((s.to_id for s in chain if s.version == 1), default=0))

    def hash(self, row_id: int, fields: Fields) -> bytes:
        return row_hash_v1(fields) if row_id <= self.v1_upto else row_hash_v2(fields)


def _chain(conn: psycopg.Connection) -> list[Seal]:
    from hardening_pipeline.hardening.seals.sealing import read_seals

    return read_seals(conn)


def _uuid_text(raw: bytes | None) -> str | None:
    if raw is None:
        return None
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _hashed(
    conn: psycopg.Connection, after: int, upto: int, formats: _Formats
) -> Iterator[tuple[int, str | None, bytes]]:
    for row_id, fields in audit_rows(conn, after, upto):
        yield row_id, _uuid_text(fields[_TENANT]), formats.hash(row_id, fields)


def record_row_hashes(url: str) -> int:
    """Record the hashes of sealed rows not recorded yet; returns how many were added.

    Only sealed rows (up to the last seal's ``to_id``): an id below the sealing horizon is
    never handed out again and its row is final, so the recorded ids stay dense. A role that
    may not write the table records nothing; the backup then hashes those rows itself.
    """
    with connect(url) as conn:
        if not has_format_2(conn) or not has_row_hashes(conn):
            return 0
        chain = _chain(conn)
        if not chain:
            return 0
        cur = conn.cursor(row_factory=tuple_row)
        try:
            after = cur.execute(_LAST_RECORDED).fetchone()[0]
        except psycopg.errors.InsufficientPrivilege:
            return 0
        formats, upto, added = _Formats.of(chain), chain[-1].to_id, 0
        # In slices: COPY FROM cannot run while the row cursor is open on the connection.
        try:
            while after < upto:
                until = min(after + _RECORD_SLICE, upto)
                hashed = list(_hashed(conn, after, until, formats))
                with cur.copy(_COPY_IN) as copy:
                    for row in hashed:
                        copy.write_row(row)
                added += len(hashed)
                after = until
        except psycopg.errors.InsufficientPrivilege:
            return 0
        conn.commit()
        return added


def unrecorded_copy_text(conn: psycopg.Connection) -> Iterator[bytes]:
    """The table's COPY text for the rows above the recorded ones, as COPY would write it.

    Read in the backup's snapshot, after the table's own COPY: together they are the text the
    restored table gives back, ordered by id, so the backup's digest of it still reproduces.
    """
    after = conn.cursor(row_factory=tuple_row).execute(_LAST_RECORDED).fetchone()[0]
    formats = _Formats.of(_chain(conn))
    batch: list[str] = []
    for row_id, tenant, row_hash in _hashed(conn, after, 2**63 - 1, formats):
        batch.append(f"{row_id}\t{tenant if tenant else chr(92) + 'N'}\t\\\\x{row_hash.hex()}\n")
        if len(batch) >= 1000:
            yield "".join(batch).encode()
            batch.clear()
    if batch:
        yield "".join(batch).encode()


_ERASED = sql.SQL(
    """
    SELECT h.id, h.row_hash FROM hardening.audit_row_hashes h
    WHERE h.tenant_id = ANY(%s::uuid[])
      AND NOT EXISTS (SELECT 1 FROM public.audit_events a WHERE a.id = h.id)
    ORDER BY h.id
    """
)


def erased_row_hashes(conn: psycopg.Connection, tenants: Iterable[str]) -> dict[int, bytes]:
    """id -> recorded hash of each missing audit row of an erased tenant."""
    wanted = sorted(set(tenants))
    if not wanted or not has_row_hashes(conn):
        return {}
    cur = conn.cursor(row_factory=tuple_row)
    return {int(i): bytes(h) for i, h in cur.execute(_ERASED, (wanted,)).fetchall()}


def with_erased(
    rows: Iterable[tuple[int, Fields]], erased: dict[int, bytes], after: int, upto: int
) -> Iterator[tuple[int, Fields | None, bytes | None]]:
    """Merge streamed rows with the erased rows' hashes in ``after < id <= upto``, in id order.

    A row that is present wins over a recorded hash (it is hashed as read).
    """
    ids = sorted(erased)
    i = bisect.bisect_right(ids, after)
    for row_id, fields in rows:
        while i < len(ids) and ids[i] < row_id:
            if ids[i] <= upto:
                yield ids[i], None, erased[ids[i]]
            i += 1
        if i < len(ids) and ids[i] == row_id:
            i += 1
        yield row_id, fields, None
    while i < len(ids) and ids[i] <= upto:
        yield ids[i], None, erased[ids[i]]
        i += 1


__all__ = [
    "HASHES_TABLE",
    "erased_row_hashes",
    "has_row_hashes",
    "record_row_hashes",
    "unrecorded_copy_text",
    "with_erased",
]
