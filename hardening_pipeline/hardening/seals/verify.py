"""Verification: recompute the chain from the rows, in Python, and check the unsealed window.

Every call checks each seal's structure, MAC and store copy, and the sequence against the
high-water marks. A seal's rows are re-hashed (fetched as raw values and hashed here, never by
the database) unless a trusted row-version check saw exactly the row versions that are there
now; ``full`` re-hashes everything. Rows above the last seal are checked against the window
the seals recorded. Format 1 seals are re-hashed by reproducing their row text in Python.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import psycopg

from hardening_pipeline.backup.crypto import Keyring
from hardening_pipeline.backup.store import BackupStore, ObjectNotFoundError
from hardening_pipeline.db.connection import connect
from hardening_pipeline.hardening.seals import checks as _checks
from hardening_pipeline.hardening.seals.anchor import Anchor, anchor_problem, read_anchor
from hardening_pipeline.hardening.seals.checks import record_checks, row_versions, trusted_checks
from hardening_pipeline.hardening.seals.format import (
    FINGERPRINT_BYTES,
    GENESIS_DIGEST,
    STORE_PREFIX,
    Accumulator,
    Seal,
    SealError,
    decode_fingerprints,
    iso,
)
from hardening_pipeline.hardening.seals.horizon import (
    ENV_MAX_SEAL_LAG,
    describe_holders,
    max_seal_lag,
    open_transaction_ids,
)
from hardening_pipeline.hardening.seals.row_hashes import erased_present, with_erased
from hardening_pipeline.hardening.seals.rows import (
    MIN_BIGINT,
    ROW_HASHES,
    audit_rows,
    row_hash_v2,
)
from hardening_pipeline.hardening.seals.sealing import read_seals
from hardening_pipeline.hardening.seals.window import WindowWatch, read_high_water, rewound


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
    conn: psycopg.Connection,
    chain: Sequence[Seal],
    problems: _Problems,
    after: int,
    watch: WindowWatch,
    previous: Seal | None,
    erased: Mapping[int, bytes],
) -> tuple[int, int | None]:
    """Recompute consecutive seals from the rows with ids above ``after``; returns (rows read,
    first bad id found here). ``after`` is the id before the first seal's range, or the lowest
    bigint for the chain's first seal, so that rows forged below it are read too. ``previous``
    is the seal before the run (where ``created_at`` continues from). ``erased``: recorded
    hashes of erased tenants' rows, used where such a row is missing (``row_hashes``)."""
    rows_read = 0
    index = 0
    seal = chain[0]
    acc = Accumulator(seal.from_id, seal.previous_digest, seal.version)
    row_hash = ROW_HASHES[seal.version]
    expected = decode_fingerprints(seal.fingerprints, seal.from_id)
    pending = next(expected, None)
    watch.start(previous)

    def finish() -> int | None:
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

    def next_seal() -> None:
        nonlocal index, seal, acc, row_hash, expected, pending
        index += 1
        seal = chain[index]
        acc = Accumulator(seal.from_id, seal.previous_digest, seal.version)
        row_hash = ROW_HASHES[seal.version]
        expected = decode_fingerprints(seal.fingerprints, seal.from_id)
        pending = next(expected, None)

    try:
        upto = chain[-1].to_id
        for row_id, fields, recorded in with_erased(
            audit_rows(conn, after, upto), erased, after, upto
        ):
            rows_read += 1
            while row_id > seal.to_id:
                if (bad := finish()) is not None:
                    return fail(bad, "was deleted" if pending else "does not match its seal")
                next_seal()
            if pending is not None and pending[0] < row_id:
                return fail(pending[0], "was deleted")
            if pending is None or pending[0] > row_id or row_id < seal.from_id:
                return fail(row_id, "was inserted after it was sealed")
            h = row_hash(fields) if fields is not None else recorded
            assert h is not None
            if h[:FINGERPRINT_BYTES] != pending[1]:
                return fail(row_id, "was changed after it was sealed")
            if seal.version >= 2:  # format 1 rows were sealed before the window was watched
                watch.row(row_id, fields, row_hash_v2, recorded)
            acc.add(row_id, h)
            pending = next(expected, None)
        while True:
            if (bad := finish()) is not None:
                return fail(bad, "was deleted" if pending else "does not match its seal")
            if index + 1 >= len(chain):
                break
            next_seal()
    except SealError as exc:
        problems.add(seal.from_id, f"seal {seal.seq}: {exc}")
        return rows_read, seal.from_id
    watch.missing(max(after, chain[0].from_id - 1), chain[-1].to_id)
    return rows_read, None


def _check_tail(
    conn: psycopg.Connection,
    chain: Sequence[Seal],
    problems: _Problems,
    watch: WindowWatch,
    erased: Mapping[int, bytes],
) -> int:
    """Check the rows above the last seal against the window the seals recorded."""
    last = chain[-1]
    watch.start(last)
    read = 0
    try:
        rows = audit_rows(conn, last.to_id)
        for row_id, fields, recorded in with_erased(rows, erased, last.to_id, MAX_ID):
            read += 1
            watch.row(row_id, fields, row_hash_v2, recorded)
    except SealError as exc:
        problems.add(last.to_id + 1, f"the rows after seal {last.seq}: {exc}")
    watch.missing(last.to_id, MAX_ID)
    return read


MAX_ID = 2**63 - 1

# The oldest row above the last seal, and how much newer the newest row is. Both times come
# from the rows, so a restored copy of an old backup is not "late"; rows that keep coming while
# the oldest waits are what a held-back seal looks like.
_OLDEST_UNSEALED = """
    SELECT o.id, o.created_at, n.created_at AS newest, n.created_at - o.created_at AS waited
    FROM (SELECT id, created_at FROM public.audit_events WHERE id > %s ORDER BY id LIMIT 1) o
    CROSS JOIN (SELECT created_at FROM public.audit_events ORDER BY id DESC LIMIT 1) n
"""


def _check_lag(
    conn: psycopg.Connection, last: Seal | None, bound: timedelta, problems: _Problems
) -> None:
    """Red when rows were still written more than ``bound`` after the oldest row above the last
    seal: whoever holds a transaction open holds sealing back, and rows deleted meanwhile would
    be sealed as if they had never been there."""
    row = conn.execute(_OLDEST_UNSEALED, (last.to_id if last else MIN_BIGINT,)).fetchone()
    if row is None or row["waited"] <= bound:
        return
    holders = describe_holders(conn, open_transaction_ids(conn), started_before=row["created_at"])
    why = (
        f"held back by {'; '.join(holders[:5])}"
        if holders
        else "no open transaction holds it back: is the seal job running?"
    )
    problems.add(
        None,
        f"sealing is stalled: id {row['id']} (written {iso(row['created_at'])[:19]}Z) is "
        f"unsealed while rows kept coming for {_minutes(row['waited'])} (the newest written "
        f"{iso(row['newest'])[:19]}Z), more than the {_minutes(bound)} {ENV_MAX_SEAL_LAG} "
        f"allows; {why}",
    )


def _minutes(value: timedelta) -> str:
    return f"{value.total_seconds() / 60:.1f} min"


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


_COMPARED = (
    "from_id",
    "to_id",
    "row_count",
    "digest",
    "previous_digest",
    "version",
    "high_water",
    "pending",
    "last_created_at",
)


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
            fields = [f for f in _COMPARED if getattr(mine, f) != getattr(copy, f)] or [
                "fingerprints/MAC"
            ]
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
    anchor: Anchor | None = None,
    max_lag: timedelta | None = None,
    erased_rows: Mapping[int, bytes] | None = None,
) -> SealVerification:
    """Check the chain on an open connection (the status check runs it in its transaction).

    With a store, the MAC'd store copies are the reference and the database's seals must equal
    them; without one, the database's own seals are the reference (a full rewrite of seals and
    rows together then goes unseen). With a keyring, every seal's MAC is checked too.

    ``record_as`` (a writable connection) records a check for each seal re-hashed when the
    whole chain is intact, and re-hashes seals whose last check is older than
    ``RECHECK_AFTER``; without it, checks older than ``TRUST_CHECKS_FOR`` are not trusted.

    The newest seals are the chain's weak end: deleting them (and their store copies) leaves a
    shorter chain that is intact. ``anchor`` (kept outside the database, see ``anchor``) is
    what the chain must reach. With a keyring but neither a store nor an anchor the tail cannot
    be verified, and the result says so (red) rather than vouch for it.

    Rows above the last seal that have waited longer than ``max_lag`` (default: from
    ``HARDENING_SEAL_MAX_LAG_MINUTES``) are red too, naming who holds sealing back.

    ``erased_rows`` (for a restored copy: id -> recorded hash of each audit row of a tenant the
    signed key ledger lists as erased, ``backup/erased_audit.py``): such a row, when missing, is
    checked by its recorded hash instead (``row_hashes``); the seal digests still decide.
    """
    problems = _Problems()
    db = read_seals(conn)
    chain = db
    if store is not None:
        chain = _compare_with_store(db, _store_copies(store, problems), keyring, problems)
    if anchor is not None and (behind := anchor_problem(chain, anchor, keyring)):
        problems.add(*behind)
    elif keyring is not None and store is None and anchor is None and chain:
        problems.add(
            chain[-1].to_id + 1,
            f"cannot verify the tail: the chain ends at seal {chain[-1].seq}, and with neither "
            "the backup store nor a seal anchor nothing shows whether newer seals were deleted",
        )
    if not chain:
        _check_lag(conn, None, max_seal_lag() if max_lag is None else max_lag, problems)
        if problems.items:
            return _red(problems, 0, 0, store is not None)
        return SealVerification(True, "no seals yet", store_checked=store is not None)
    _check_structure(chain, keyring, problems)
    # A recorded hash stands in only for an id a seal saw handed out; hashes of rows written
    # after this copy's seals (recorded later, for later backups) are not this copy's.
    seen = max(s.high_water or s.to_id for s in chain)
    erased = {i: h for i, h in (erased_rows or {}).items() if i <= seen}
    high_water = read_high_water(conn)
    if (turned := rewound(chain, high_water)) is not None:
        problems.add(*turned, row=True)
    # Versions are read before any row is re-hashed: a row changed in between then differs
    # from what a recorded check says, and the next verification re-hashes it.
    versions, below_first = row_versions(conn, chain) if record_as or not full else ({}, True)
    trusted = (
        {}
        if full
        else trusted_checks(
            conn,
            chain,
            store,
            keyring,
            max_age=_checks.RECHECK_AFTER if record_as else _checks.TRUST_CHECKS_FOR,
        )
    )
    stale = [
        i
        for i, seal in enumerate(chain)
        if seal.seq not in trusted or trusted[seal.seq].versions_digest != versions[seal.seq]
    ]
    if below_first and stale[:1] != [0]:
        stale.insert(0, 0)  # the first seal's re-hash reads from the lowest id, so it finds them
    watch = WindowWatch(chain)
    rows_read = 0
    for run in _consecutive(stale):
        first = chain[run[0]]
        after = MIN_BIGINT if run[0] == 0 else first.from_id - 1
        previous = chain[run[0] - 1] if run[0] else None
        run_seals = [chain[i] for i in run]
        read, bad = _check_rows(conn, run_seals, problems, after, watch, previous, erased)
        rows_read += read
        if bad is not None:
            break
    tail = _check_tail(conn, chain, problems, watch, erased)
    _check_lag(conn, chain[-1], max_seal_lag() if max_lag is None else max_lag, problems)
    for bad_id, text in watch.problems:
        problems.add(bad_id, text, row=True)
    if problems.items:
        return _red(problems, len(chain), rows_read, store is not None)
    # With a store but no key, checks are never trusted (trusted_checks), so none are written.
    if record_as is not None and stale and (store is None or keyring is not None):
        record_checks(conn, [chain[i] for i in stale], versions, keyring, record_as)
    covered = sum(s.row_count for s in chain)
    checks = ["store copies match" if store is not None else "database copy only"]
    if anchor is not None:
        checks.append(f"reaches the anchored seal {anchor.seq}")
    if keyring is not None:
        checks.append("MACs valid")
    if missing := len(erased) - erased_present(conn, erased):
        checks.append(f"{missing} erased tenants' row(s) checked by their recorded hashes")
    if len(stale) == len(chain):
        rehashed = "every row re-hashed"
    else:
        spared = set(range(len(chain))) - set(stale)
        oldest = min(trusted[chain[i].seq].checked_at for i in spared)
        rehashed = (
            f"re-hashed {len(stale)} seal(s) ({rows_read} rows); {len(chain) - len(stale)} "
            f"unchanged since re-hashed (oldest {iso(oldest)[:19]}Z)"
        )
    legacy = sum(1 for s in chain if s.version == 1)
    window = f"{tail} unsealed row(s) above id {chain[-1].to_id} consistent with the window"
    if legacy:
        window += f"; {legacy} format-1 seal(s) carry no high-water mark"
    detail = (
        f"{len(chain)} seal(s) cover ids 1..{chain[-1].to_id} ({covered} rows), chain intact; "
        + ", ".join([rehashed, *checks])
        + f"; {window}; last sealed {iso(chain[-1].sealed_at)[:19]}Z"
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
    anchor_path: Path | None = None,
    max_lag: timedelta | None = None,
    erased_rows: Mapping[int, bytes] | None = None,
) -> SealVerification:
    """Check the chain against ``url`` in one transaction (see ``verify_seal_chain``), and
    against the anchor at ``anchor_path`` when that file exists.

    Read-only unless ``record_as`` asks for checks to be recorded. Repeatable read, so the row
    versions and the re-hashed rows come from one snapshot.
    """
    with connect(url) as conn:
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        conn.read_only = record_as is None
        with conn.transaction():
            return verify_seal_chain(
                conn,
                store,
                keyring,
                full=full,
                record_as=record_as,
                anchor=read_anchor(anchor_path),
                max_lag=max_lag,
                erased_rows=erased_rows,
            )
