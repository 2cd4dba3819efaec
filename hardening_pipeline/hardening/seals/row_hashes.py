"""Row hashes without rows: verifying the seal chain over a log whose erased tenants' rows are gone.

Backups keep each tenant's audit rows in that tenant's object, so erasing the tenant's key
erases them too, and a restored copy lacks rows its seals cover. Their row hashes, recorded
when the tenant was erased (``backup/erased_audit.py``), stand in for them: the verifier feeds
a missing row's recorded hash to its seal's digest as if it had hashed the row. A recorded hash
is not trusted: a wrong one gives a digest its MAC'd seal does not have.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator, Mapping, Sequence

import psycopg
from psycopg.rows import tuple_row

from hardening_pipeline.hardening.seals.format import Seal
from hardening_pipeline.hardening.seals.rows import (
    MIN_BIGINT,
    Fields,
    audit_rows,
    row_hash_v1,
    row_hash_v2,
)


def _last_format_1_id(chain: Sequence[Seal]) -> int:
    return max((s.to_id for s in chain if s.version == 1), default=0)


def tenant_row_hashes(
    conn: psycopg.Connection, tenant: str, skip: Iterable[int] = ()
) -> Iterator[tuple[int, bytes]]:
    """(id, hash) of every audit row of ``tenant``, in id order, hashed as its seal hashes it.

    Format 1 up to the last format 1 seal, format 2 above it (every seal made from now on is
    format 2). Ids in ``skip`` (already recorded) are left out.
    """
    from hardening_pipeline.hardening.seals.sealing import read_seals

    v1_upto = _last_format_1_id(read_seals(conn))
    done = set(skip)
    for row_id, fields in audit_rows(conn, MIN_BIGINT, tenant=tenant):
        if row_id not in done:
            yield row_id, row_hash_v1(fields) if row_id <= v1_upto else row_hash_v2(fields)


def erased_present(conn: psycopg.Connection, erased: Mapping[int, bytes]) -> int:
    """How many of the erased rows are present after all (hashed as read, not as recorded)."""
    if not erased:
        return 0
    cur = conn.cursor(row_factory=tuple_row)
    query = "SELECT count(*) FROM public.audit_events WHERE id = ANY(%s)"
    return int(cur.execute(query, (list(erased),)).fetchone()[0])


def with_erased(
    rows: Iterable[tuple[int, Fields]], erased: Mapping[int, bytes], after: int, upto: int
) -> Iterator[tuple[int, Fields | None, bytes | None]]:
    """Merge streamed rows with the erased rows' hashes in ``after < id <= upto``, in id order.

    A row that is present wins over a recorded hash: it is hashed as read.
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


__all__ = ["erased_present", "tenant_row_hashes", "with_erased"]
