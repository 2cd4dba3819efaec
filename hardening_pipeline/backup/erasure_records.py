"""Whether each erasure the key ledger records was carried out to the end.

An erasure is complete when both ledger copies record it, the audit log holds its row and an
erasure certificate says so. A crash or a database error part-way (the store copy written, the
database copy and the audit row not) leaves an erasure that the merged ledger already counts as
done: these are the gaps ``erase-tenant`` completes and the ``tenant_key_ledger`` line shows.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import psycopg
from psycopg.rows import tuple_row

from hardening_pipeline.backup.tenant_keys import ErasedKey

if TYPE_CHECKING:
    from hardening_pipeline.backup.tenant_key_copies import LedgerComparison

ERASE_COMMAND = "hardening erase-tenant"
AUDIT_ACTOR = "hardening:erase-tenant"
RECORD_FUNCTION = "hardening.record_tenant_erasure(uuid, jsonb)"

# By (table_name, record_id), the index 002 made: the record id is the erased tenant's.
_AUDIT_ROWS = """
SELECT before->>'key_id' AS key_id, min(id) AS id
FROM public.audit_events
WHERE table_name = 'hardening.tenant_key_ledger' AND record_id = ANY (%s)
  AND operation = 'DELETE' AND actor = %s AND before->>'key_id' = ANY (%s)
GROUP BY 1
"""


def can_record(conn: psycopg.Connection) -> bool:
    """Whether this database can put an erasure on the audit log (migration 021)."""
    with conn.cursor(row_factory=tuple_row) as cur:
        found = cur.execute("SELECT to_regprocedure(%s) IS NOT NULL", (RECORD_FUNCTION,))
        return bool(found.fetchone()[0])  # type: ignore[index]


def audit_rows(conn: psycopg.Connection, erased: Sequence[ErasedKey]) -> dict[str, int]:
    """The audit row of each erased key that has one: key id -> audit_events.id."""
    if not erased:
        return {}
    tenants = sorted({e.tenant_id for e in erased})
    keys = [e.key_id for e in erased]
    with conn.cursor(row_factory=tuple_row) as cur:
        rows = cur.execute(_AUDIT_ROWS, (tenants, AUDIT_ACTOR, keys)).fetchall()
    return {key_id: int(audit_id) for key_id, audit_id in rows}


def erasures_on_record(conn: psycopg.Connection) -> tuple[ErasedKey, ...]:
    """Every erasure the audit log records (``hardening.record_tenant_erasure``, 021).

    The audit log only grows, so an erasure stays on it after both ledger copies are lost or
    rolled back: recovery never writes back a key it names. Empty when the role may not read
    the log or the kit's rows are not there.
    """
    try:
        with conn.transaction():
            rows = conn.execute(
                "SELECT before FROM public.audit_events WHERE actor = %s "
                "AND table_name = 'hardening.tenant_key_ledger' AND operation = 'DELETE' "
                "ORDER BY id",
                (AUDIT_ACTOR,),
            ).fetchall()
    except (psycopg.errors.InsufficientPrivilege, psycopg.errors.UndefinedTable):
        return ()
    erased = []
    for row in rows:
        details = (row["before"] if isinstance(row, dict) else row[0]) or {}
        try:
            erased.append(
                ErasedKey(
                    str(details["tenant_id"]),
                    str(details["key_id"]),
                    datetime.fromisoformat(str(details["erased_at"])).astimezone(UTC),
                    tuple(str(b) for b in details.get("backups", [])),
                )
            )
        except (KeyError, TypeError, ValueError):
            continue  # not a row this kit wrote; it erases nothing
    return tuple(erased)


def certificate_files(evidence_root: Path, tenant_id: str) -> list[Path]:
    return sorted((evidence_root / "erasures").glob(f"*-tenant-{tenant_id}.json"))


def has_final_certificate(evidence_root: Path, erased: ErasedKey) -> bool:
    """A certificate for this key that found no old row version left in the database."""
    for path in certificate_files(evidence_root, erased.tenant_id):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        # Certificates written before the check existed carry no such field.
        if data.get("key_id") == erased.key_id and data.get("old_row_versions_removed", True):
            return True
    return False


@dataclass(frozen=True)
class ErasureGap:
    """An erasure some copy records, with what it still lacks."""

    erased: ErasedKey
    missing: tuple[str, ...]

    def sentence(self) -> str:
        return (
            f"the erasure of tenant {self.erased.tenant_id} (key {self.erased.key_id}, at "
            f"{self.erased.erased_at.isoformat()}) is incomplete: {', '.join(self.missing)}"
        )

    @property
    def command(self) -> str:
        return f"{ERASE_COMMAND} {self.erased.tenant_id}"


def erasure_gaps(
    conn: psycopg.Connection,
    comparison: LedgerComparison,
    *,
    evidence_root: Path | None = None,
) -> list[ErasureGap]:
    """Every erasure the merged ledger records that a copy, the audit log or (with
    ``evidence_root``) a certificate lacks."""
    erased = comparison.agreed.erased
    recorded = audit_rows(conn, erased) if can_record(conn) else None
    gaps = []
    for entry in erased:
        missing = []
        # A copy that is missing altogether is written again by the next backup, and said so.
        for where, copy in (("store", comparison.store), ("database", comparison.database)):
            if copy is not None and copy.erased_key(entry.key_id) is None:
                missing.append(f"the {where} copy does not record it")
        if recorded is not None and entry.key_id not in recorded:
            missing.append("no audit row")
        if evidence_root is not None and not has_final_certificate(evidence_root, entry):
            missing.append(f"no final certificate in {evidence_root / 'erasures'}")
        if missing:
            gaps.append(ErasureGap(entry, tuple(missing)))
    return gaps
