"""An erased tenant's audit rows: out of every later backup, their seal hashes kept in the store.

A tenant's audit rows (before and after images of its data) are in the tenant's own object, so
``erase-tenant`` makes them unreadable in every retained backup with the rest of its rows, and
later backups leave them out. The seals cover those rows, though, so before the key is
destroyed the erasure records each row's seal hash in the store, and each later backup records
the hashes of any of the tenant's rows it leaves out that are not recorded yet. A drill then
verifies the restored copy's seal chain with those hashes standing in for the missing rows
(``hardening/seals/row_hashes.py``); no backup carries any extra bytes for it.

Store layout (``docs/backup-format.md``, section 9): ``tenant-keys/erased-audit/<tenant>/
<first id>-<last id>-<count>.hashes``, 20-digit zero-padded ids, written once, never replaced.
Content: the line ``hardening-pipeline erased audit hashes v1`` then, per row in id order, the
id as 8 bytes big-endian and the 32-byte row hash. The hashes need no MAC: a wrong one gives a
seal digest that the MAC'd seal does not have.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import psycopg
from psycopg.rows import tuple_row

from hardening_pipeline.backup.store import BackupStore
from hardening_pipeline.errors import CheckFailed
from hardening_pipeline.hardening.seals.row_hashes import tenant_row_hashes

PREFIX = "tenant-keys/erased-audit/"
MAGIC = b"hardening-pipeline erased audit hashes v1\n"
_RECORD = struct.Struct(">q32s")
_NAME = re.compile(r"^(?P<first>\d{20})-(?P<last>\d{20})-(?P<count>\d+)\.hashes$")


@dataclass(frozen=True)
class HashFile:
    """One stored file of recorded hashes, as its name describes it."""

    tenant: str
    key: str
    first: int
    last: int
    count: int


def list_hash_files(store: BackupStore, tenants: Iterable[str] | None = None) -> list[HashFile]:
    """The recorded hash files of ``tenants`` (every tenant's when None), in key order."""
    wanted = None if tenants is None else set(tenants)
    found = []
    for obj in store.list(PREFIX):
        tenant, _, name = obj.key[len(PREFIX) :].partition("/")
        match = _NAME.match(name)
        if match and (wanted is None or tenant in wanted):
            found.append(
                HashFile(
                    tenant, obj.key, int(match["first"]), int(match["last"]), int(match["count"])
                )
            )
    return found


def read_hash_file(store: BackupStore, file: HashFile) -> dict[int, bytes]:
    data = b"".join(store.get(file.key))
    body = data[len(MAGIC) :]
    if not data.startswith(MAGIC) or len(body) % _RECORD.size:
        raise CheckFailed(
            f"{file.key} is not a file of recorded audit row hashes (wrong header or length); "
            "see docs/runbook.md#drill-erased-audit-hashes."
        )
    rows = dict(_RECORD.iter_unpack(body))
    if len(rows) != file.count:
        raise CheckFailed(
            f"{file.key} holds {len(rows)} row hashes but its name says {file.count}; see "
            "docs/runbook.md#drill-erased-audit-hashes."
        )
    return rows


def recorded_hashes(store: BackupStore, tenants: Iterable[str]) -> dict[int, bytes]:
    """id -> recorded row hash of every audit row of the erased ``tenants``."""
    wanted = set(tenants)
    if not wanted:
        return {}
    hashes: dict[int, bytes] = {}
    for file in list_hash_files(store, wanted):
        hashes.update(read_hash_file(store, file))
    return hashes


def _write(store: BackupStore, tenant: str, rows: Sequence[tuple[int, bytes]]) -> HashFile:
    first, last = rows[0][0], rows[-1][0]
    key = f"{PREFIX}{tenant}/{first:020d}-{last:020d}-{len(rows)}.hashes"
    store.put(key, [MAGIC, b"".join(_RECORD.pack(i, h) for i, h in rows)])
    return HashFile(tenant, key, first, last, len(rows))


_COUNTS = """
SELECT tenant_id::text, count(*) FROM public.audit_events
WHERE tenant_id = ANY(%s::uuid[]) GROUP BY tenant_id
"""


def record_erased_audit(
    store: BackupStore, conn: psycopg.Connection, tenants: Sequence[str]
) -> dict[str, int]:
    """Record the hashes of ``tenants``' audit rows that no stored file holds yet.

    Reads the rows on ``conn`` (a backup's snapshot: exactly the rows it leaves out; or the
    erasure's connection: every row the tenant has). Cheap when nothing is new: one listing and
    one count per call; the stored files are read only for a tenant with rows they lack.
    Returns tenant -> rows recorded now.
    """
    if not tenants:
        return {}
    files = list_hash_files(store, tenants)
    counts = dict(conn.cursor(row_factory=tuple_row).execute(_COUNTS, (list(tenants),)).fetchall())
    added: dict[str, int] = {}
    for tenant in tenants:
        mine = [f for f in files if f.tenant == tenant]
        if counts.get(tenant, 0) <= sum(f.count for f in mine):
            continue  # fewer rows than recorded is the seals' business, not a gap
        known: set[int] = set()
        for file in mine:
            known.update(read_hash_file(store, file))
        rows = list(tenant_row_hashes(conn, tenant, skip=known))
        if rows:
            _write(store, tenant, rows)
            added[tenant] = len(rows)
    return added


__all__ = [
    "MAGIC",
    "PREFIX",
    "HashFile",
    "list_hash_files",
    "read_hash_file",
    "record_erased_audit",
    "recorded_hashes",
]
