"""The unsealed window: what each seal records about it, and what a later run checks.

Rows newer than the last seal are protected by nothing but the next seal, so each format 2
seal records where the window stood: the sequence's high-water mark, the rows already
committed above its range (``pending``), and the newest ``created_at`` it covered. A later
seal or verification is red, naming the ids, when

* the sequence was rewound below a recorded high-water mark (those ids will be handed out
  again);
* a row has an id at or below a high-water mark but was written after that seal (an id was
  reused: handed out before the seal, yet the row is newer);
* a pending row is missing or changed;
* ``created_at`` goes backwards by more than ``CREATED_AT_TOLERANCE`` in id order (ids and
  ``created_at`` are both taken when the audit row is inserted, so they rise together; a
  back-dated row inserted later breaks that).

What none of this can see is a consistent rewrite of rows written since the last seal that
leaves the sequence where it was: that is the window, and sealing every minute keeps it short.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta

import psycopg
from psycopg import sql

from hardening_pipeline.hardening.seals.format import Seal, SealError, decode_fingerprints
from hardening_pipeline.hardening.seals.rows import Fields, created_us

# Rows of concurrent transactions take their id and created_at a moment apart, and the seal's
# sealed_at comes from the sealing host's clock: a minute absorbs both and a modest clock skew.
CREATED_AT_TOLERANCE = timedelta(seconds=60)
_TOLERANCE_US = CREATED_AT_TOLERANCE // timedelta(microseconds=1)
_PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)

_SEQUENCE_NAME = """
    SELECT n.nspname, c.relname
    FROM pg_catalog.pg_class c
    JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
    WHERE c.oid = pg_catalog.pg_get_serial_sequence('public.audit_events', 'id')::regclass
"""


def read_high_water(conn: psycopg.Connection) -> int:
    """The last id the audit sequence handed out, read from the sequence relation itself."""
    row = conn.execute(_SEQUENCE_NAME).fetchone()
    if row is None:
        raise psycopg.ProgrammingError("audit_events.id has no sequence")
    seq = conn.execute(
        sql.SQL("SELECT last_value, is_called FROM {}").format(
            sql.Identifier(row["nspname"], row["relname"])
        )
    ).fetchone()
    return seq["last_value"] if seq["is_called"] else seq["last_value"] - 1


def restore_high_water(conn: psycopg.Connection) -> int | None:
    """After a logical restore, move the audit sequence up to the largest recorded high-water
    mark; returns the mark, or None when no seal records one.

    A restore sets each sequence just past the largest restored id, but ids above it may have
    been handed out (rolled back, or held back from the last seal) before the backup. Handing
    them out again would reuse ids the seals saw, which the window checks rightly call red.
    """
    if not conn.execute(
        "SELECT 1 FROM pg_catalog.pg_attribute WHERE attrelid = "
        "pg_catalog.to_regclass('hardening.audit_seals') AND attname = 'high_water'"
    ).fetchone():
        return None
    mark = conn.execute("SELECT max(high_water) AS m FROM hardening.audit_seals").fetchone()["m"]
    if mark is None or read_high_water(conn) >= mark:
        return mark
    row = conn.execute(_SEQUENCE_NAME).fetchone()
    conn.execute(
        "SELECT pg_catalog.setval(%s::regclass, %s, true)",
        (sql.Identifier(row["nspname"], row["relname"]).as_string(conn), mark),
    )
    return mark


def to_us(value: datetime) -> int:
    return (value - _PG_EPOCH) // timedelta(microseconds=1)


def from_us(us: int) -> datetime:
    """The instant ``us`` microseconds after 2000-01-01 UTC."""
    try:
        return _PG_EPOCH + timedelta(microseconds=us)
    except OverflowError:
        raise SealError(f"created_at {us} microseconds after 2000 is out of range") from None


def _when(us: int) -> str:
    try:
        return (_PG_EPOCH + timedelta(microseconds=us)).isoformat(timespec="seconds")
    except OverflowError:
        return "out of range"


def rewound(chain: Sequence[Seal], high_water: int) -> tuple[int, str] | None:
    """(first id handed out again, why) when the sequence stands below a recorded mark."""
    marks = [s for s in chain if s.high_water is not None]
    if not marks:
        return None
    top = max(marks, key=lambda s: s.high_water or 0)
    if top.high_water is None or high_water >= top.high_water:
        return None
    return high_water + 1, (
        f"the audit id sequence was rewound: it stands at {high_water}, but seal {top.seq} saw "
        f"ids up to {top.high_water} handed out, so ids {high_water + 1}..{top.high_water} "
        "would be handed out again"
    )


class WindowWatch:
    """Checks rows streamed in id order against the window every earlier seal recorded."""

    def __init__(self, chain: Sequence[Seal]) -> None:
        marked = [s for s in chain if s.high_water is not None]
        self._tops: list[int] = []  # running maximum of the high-water marks, in seq order
        self._seals: list[Seal] = []
        for s in marked:
            top = max(self._tops[-1] if self._tops else s.high_water, s.high_water or 0)
            self._tops.append(top)
            self._seals.append(s)
        self.pending: dict[int, tuple[bytes, Seal]] = {}
        for s in marked:
            for row_id, fp in decode_fingerprints(s.pending or b"", s.to_id + 1):
                self.pending[row_id] = (fp, s)
        self._seen: set[int] = set()
        self.problems: list[tuple[int, str]] = []
        self._newest: int | None = None

    def start(self, previous: Seal | None) -> None:
        """Continue ``created_at`` from the seal before the rows about to stream."""
        last = previous.last_created_at if previous is not None else None
        self._newest = to_us(last) if last is not None else None

    def row(
        self,
        row_id: int,
        fields: Fields | None,
        hash_v2: Callable[[Fields], bytes],
        recorded: bytes | None = None,
    ) -> None:
        """Check one row; ``fields`` None for an erased tenant's missing row, whose ``recorded``
        hash still meets a pending fingerprint (its times are gone with it)."""
        if fields is None:
            self._pending_matches(row_id, lambda: recorded or b"")
            return
        created = created_us(fields)
        if self._newest is not None and created < self._newest - _TOLERANCE_US:
            self.problems.append(
                (
                    row_id,
                    f"id {row_id} has created_at {_when(created)}, "
                    f"{timedelta(microseconds=self._newest - created)} before a row with a "
                    f"lower id ({_when(self._newest)}): more than the "
                    f"{CREATED_AT_TOLERANCE.seconds} s tolerance, so it was back-dated or "
                    "inserted later",
                )
            )
        self._newest = created if self._newest is None else max(self._newest, created)
        i = bisect.bisect_left(self._tops, row_id)
        if i < len(self._seals):
            seal = self._seals[i]
            if seal.to_id < row_id and created > to_us(seal.sealed_at) + _TOLERANCE_US:
                self.problems.append(
                    (
                        row_id,
                        f"id {row_id} was written at {_when(created)}, after seal {seal.seq} "
                        f"had seen that id handed out (high-water mark {seal.high_water}): "
                        "the id was reused",
                    )
                )
        self._pending_matches(row_id, lambda: hash_v2(fields))

    def _pending_matches(self, row_id: int, row_hash: Callable[[], bytes]) -> None:
        expected = self.pending.get(row_id)
        if expected is not None:
            self._seen.add(row_id)
            fp, seal = expected
            if row_hash()[: len(fp)] != fp:
                self.problems.append(
                    (
                        row_id,
                        f"id {row_id} changed after seal {seal.seq} saw it committed below its "
                        f"high-water mark {seal.high_water}",
                    )
                )

    def missing(self, after: int, upto: int) -> None:
        """Pending rows with ids in ``after < id <= upto`` that never streamed past."""
        for row_id in sorted(self.pending):
            if after < row_id <= upto and row_id not in self._seen:
                seal = self.pending[row_id][1]
                self.problems.append(
                    (
                        row_id,
                        f"id {row_id} is missing: seal {seal.seq} saw it committed below its "
                        f"high-water mark {seal.high_water}",
                    )
                )
