"""Sealing: hash the audit rows added since the last seal, up to the safe horizon, in Python.

Each run reads the sequence's high-water mark, streams every committed row above the last seal
up to it, and checks them against the window earlier seals recorded (``window``). If anything
there was rewritten it seals nothing and raises, naming the ids: sealing over it would make a
forged row look genuine. Otherwise the rows up to the horizon become seals (format 2), and
the rows above it are recorded as pending.

The store copy of each seal is written before the database transaction commits, so a seal that
exists in the database always has its copy; a copy whose commit failed is picked up by the next
run (``_adopt_store_copies``). Runs are serialised with the seal's job lock.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import psycopg
from psycopg import sql

from hardening_pipeline.backup.crypto import Keyring
from hardening_pipeline.backup.store import BackupStore, ObjectNotFoundError
from hardening_pipeline.db.connection import connect
from hardening_pipeline.db.job_locks import job_locks_available, take_job_lock
from hardening_pipeline.errors import ConfigError
from hardening_pipeline.hardening.seals.anchor import anchor_problem, read_anchor, write_anchor
from hardening_pipeline.hardening.seals.format import (
    CURRENT_VERSION,
    GENESIS_DIGEST,
    Accumulator,
    Fingerprints,
    Seal,
    SealError,
    has_format_2,
    store_key,
)
from hardening_pipeline.hardening.seals.horizon import DEFAULT_WAIT_SECONDS, Horizon, safe_horizon
from hardening_pipeline.hardening.seals.rows import (
    ROW_HASHES,
    audit_rows,
    created_us,
    row_hash_v2,
)
from hardening_pipeline.hardening.seals.window import (
    WindowWatch,
    from_us,
    read_high_water,
    rewound,
)

# One seal covers at most this many rows, so a first seal over a large log is split into
# several, each a small database row and store object (about 0.9 MB of fingerprints at most).
MAX_ROWS_PER_SEAL = 100_000
# Serialises sealing runs on a database migrated before 013 (two at once would both try to
# write seal n + 1); from 013 on the job lock does.
_LOCK_KEY = 0x5EA1_A0D1
# A second sealer waits this long for the first, then says who holds the lock instead of hanging.
SEAL_LOCK_TIMEOUT_MS = 60_000


@dataclass(frozen=True)
class SealRun:
    """What one sealing run did."""

    seals: list[Seal]
    horizon: Horizon
    adopted: list[Seal] = field(default_factory=list)
    high_water: int | None = None

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
                + (f": {'; '.join(self.horizon.holders[:5])}" if self.horizon.holders else "")
                + "; rows above it are not sealed until it ends"
            )
        return "; ".join(parts)


_SEAL_COLUMNS = tuple(Seal.__dataclass_fields__)
_SELECT_SEALS = sql.SQL("SELECT {} FROM hardening.audit_seals ORDER BY seq").format(
    sql.SQL(", ").join(map(sql.Identifier, _SEAL_COLUMNS))
)
_INSERT_SEAL = sql.SQL("INSERT INTO hardening.audit_seals ({}) VALUES ({})").format(
    sql.SQL(", ").join(map(sql.Identifier, _SEAL_COLUMNS)),
    sql.SQL(", ").join(sql.Placeholder(c) for c in _SEAL_COLUMNS),
)


def _seal_from_row(row: dict) -> Seal:
    values = {c: row[c] for c in _SEAL_COLUMNS}
    for c in ("digest", "previous_digest", "fingerprints", "mac", "pending"):
        if values[c] is not None:
            values[c] = bytes(values[c])
    return Seal(**values)


_V1_COLUMNS = _SEAL_COLUMNS[: _SEAL_COLUMNS.index("version")]
_SELECT_V1_SEALS = sql.SQL("SELECT {} FROM hardening.audit_seals ORDER BY seq").format(
    sql.SQL(", ").join(map(sql.Identifier, _V1_COLUMNS))
)


def read_seals(conn: psycopg.Connection) -> list[Seal]:
    """Every seal in the database, in seq order (all format 1 before migration 014)."""
    if not has_format_2(conn):
        rows = conn.execute(_SELECT_V1_SEALS).fetchall()
        return [
            _seal_from_row(
                {**r, "version": 1, "high_water": None, "pending": None, "last_created_at": None}
            )
            for r in rows
        ]
    return [_seal_from_row(r) for r in conn.execute(_SELECT_SEALS).fetchall()]


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
    acc = Accumulator(seal.from_id, seal.previous_digest, seal.version)
    row_hash = ROW_HASHES[seal.version]
    for row_id, fields in audit_rows(conn, seal.from_id - 1, seal.to_id):
        acc.add(row_id, row_hash(fields))
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


def _refuse(problems: list[tuple[int, str]]) -> SealError:
    problems = sorted(problems)
    shown = "; ".join(text for _, text in problems[:4])
    more = f" (+{len(problems) - 4} more)" if len(problems) > 4 else ""
    return SealError(
        f"sealing refused: the rows since the last seal were rewritten (first bad id "
        f"{problems[0][0]}): {shown}{more}. Sealing over them would make them look genuine; "
        "see docs/runbook.md#status-audit-seal-chain."
    )


def seal_audit_log(
    url: str,
    store: BackupStore | None = None,
    keyring: Keyring | None = None,
    actor: str = "hardening seal",
    *,
    max_rows: int = MAX_ROWS_PER_SEAL,
    wait_seconds: float = DEFAULT_WAIT_SECONDS,
    anchor_path: Path | None = None,
) -> SealRun:
    """Seal the audit rows added since the last seal, up to the safe horizon (see module doc).

    With ``anchor_path``, a chain that does not reach the seal anchored there is refused, and
    the newest seal is anchored there once the run has committed (``anchor``).
    """
    if max_rows < 1:
        raise ValueError("max_rows must be at least 1")
    anchor = read_anchor(anchor_path)
    with connect(url, autocommit=True) as conn, conn.transaction():
        if job_locks_available(conn):
            take_job_lock(conn, "seal", lock_timeout_ms=SEAL_LOCK_TIMEOUT_MS)
        else:  # a database migrated before 013
            conn.execute("SELECT pg_catalog.pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
        if not has_format_2(conn):
            raise ConfigError(
                "the database lacks migration 014_audit_seal_v2, which new seals need; run "
                "`hardening migrate` first."
            )
        chain = read_seals(conn)
        head = chain[-1] if chain else None
        adopted = _adopt_store_copies(conn, store, keyring, head) if store else []
        chain += adopted
        head = chain[-1] if chain else None
        if anchor is not None and (behind := anchor_problem(chain, anchor, keyring)):
            raise SealError(
                f"sealing refused: {behind[1]}. Sealing on top would make the rows that seal "
                "covered look genuine, changed or not; see docs/runbook.md#status-audit-seal-chain."
            )
        floor = head.to_id if head else 0
        horizon = safe_horizon(conn, floor, wait_seconds=wait_seconds)
        # Read after the horizon: every id up to it was handed out before this value was read.
        sequence_at = read_high_water(conn)
        if (turned := rewound(chain, sequence_at)) is not None:
            raise _refuse([turned])
        high_water = max(sequence_at, horizon.to_id)
        watch = WindowWatch(chain)
        watch.start(head)
        seals: list[Seal] = []
        seq = head.seq if head else 0
        previous = head.digest if head else GENESIS_DIGEST
        newest = head.last_created_at if head else None

        def close(acc: Accumulator, to_id: int, pending: bytes = b"") -> None:
            nonlocal seq, previous
            if watch.problems:
                raise _refuse(watch.problems)
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
                version=CURRENT_VERSION,
                high_water=max(high_water, to_id),
                pending=pending,
                last_created_at=newest,
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

        acc = Accumulator(floor + 1, previous) if horizon.to_id > floor else None
        pending = Fingerprints(horizon.to_id + 1)
        for row_id, fields in audit_rows(conn, floor, high_water):
            row_hash = row_hash_v2(fields)
            watch.row(row_id, fields, lambda _f, h=row_hash: h)
            if acc is None or row_id > horizon.to_id:
                pending.add(row_id, row_hash)
                continue
            created = from_us(created_us(fields))
            newest = created if newest is None or created > newest else newest
            acc.add(row_id, row_hash)
            if acc.count >= max_rows and row_id < horizon.to_id:
                close(acc, row_id)
                acc = Accumulator(row_id + 1, previous)
        watch.missing(floor, high_water)
        if watch.problems:
            raise _refuse(watch.problems)
        if acc is not None:
            close(acc, horizon.to_id, bytes(pending.blob))
    # After the commit: an anchor ahead of the database would stop every later run.
    tail = seals[-1] if seals else head
    if anchor_path is not None and tail is not None and (anchor is None or anchor.seq < tail.seq):
        write_anchor(anchor_path, tail, keyring)
    return SealRun(seals, horizon, adopted, high_water)


__all__ = ["SealRun", "read_seals", "read_store_copy", "seal_audit_log"]
