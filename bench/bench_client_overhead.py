"""What TenantScopedClient costs a single-row write, against the same write in raw psycopg.

Both sides borrow from one ``ConnectionPool`` and do the same database work per write: one
transaction that becomes ``authenticated``, sets ``app.tenant_id`` and ``app.actor``
transaction-locally, inserts one message and returns it as a dict, then commits. The raw side
is the leanest correct way to do that by hand (``set_config('role', ...)`` and the two settings
in one statement), so the ratio is the price of the client's checks, SQL building and round
trips, not of the audit triggers or RLS both sides pay. Batches alternate (ABBA), and the
figure is the median per-write time of each side and their ratio.

Measured twice: with durable commits (what production runs; the WAL flush dominates) and with
``synchronous_commit=off`` on both sides, which leaves the CPU cost the client adds.

    python bench/bench_client_overhead.py                 # throwaway Postgres, ~1 minute
    python bench/bench_client_overhead.py --writes 2000 --rounds 8

Goal: client at most 1.3x raw.

Baseline (shared 2-core VM, embedded PG 16, 10 x 1000 writes per side; noisy, so read ratios):
durable commits raw 980 us, client 875 us per write (0.89x: the WAL flush dominates and varies
by +-40% between batches); synchronous_commit=off raw 660 us, client 681 us (1.03x). Before the
client sent role and context in one statement and reused its rendered INSERT, the same
synchronous_commit=off comparison gave 1.18x-1.40x.

PostgreSQL 18.6 (the embedded default), defaults, same VM with a test suite running beside it:
durable commits raw 734 us, client 755 us (1.03x); synchronous_commit=off raw 305 us, client
333 us (1.09x).
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid
from collections.abc import Callable

from common import add_pg_major_argument, bench_postgres, seed_one_unit
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from hardening_pipeline.db.migrations import apply_migrations
from hardening_pipeline.db.tenant_scoped_client import TenantScopedClient

RAW_CONTEXT = (
    "SELECT set_config('role', 'authenticated', true), set_config('app.tenant_id', %s, true), "
    "set_config('app.actor', %s, true)"
)
RAW_INSERT = (
    "INSERT INTO messages (development_id, unit_id, sender, body, tenant_id) "
    "VALUES (%s, %s, %s, %s, %s) RETURNING *"
)


def fixture_ids(url: str) -> tuple[uuid.UUID, uuid.UUID, uuid.UUID]:
    ids = seed_one_unit(url, random_seed=3)
    return uuid.UUID(ids["tenant"]), uuid.UUID(ids["development"]), uuid.UUID(ids["unit"])


def measure(
    url: str, ids: tuple[uuid.UUID, uuid.UUID, uuid.UUID], options: str, writes: int, rounds: int
) -> dict[str, float]:
    """Median microseconds per write of each side, on one pool opened with ``options``."""
    tenant, development, unit = ids
    with ConnectionPool(
        url, min_size=1, max_size=1, open=True, kwargs={"options": options} if options else {}
    ) as pool:
        client = TenantScopedClient(pool, actor="bench:client")
        row = {"development_id": development, "unit_id": unit, "sender": "resident"}

        def raw_write(n: int) -> None:
            with pool.connection() as conn, conn.transaction():
                conn.execute(RAW_CONTEXT, (str(tenant), "bench:raw"))
                conn.cursor(row_factory=dict_row).execute(
                    RAW_INSERT, (development, unit, "resident", f"raw {n}", tenant)
                ).fetchone()

        def client_write(n: int) -> None:
            with client.transaction(tenant) as tx:
                tx.insert("messages", {**row, "body": f"client {n}"})

        sides: dict[str, Callable[[int], None]] = {"raw": raw_write, "client": client_write}
        for fn in sides.values():  # warm up: catalog, prepared statements, caches
            for n in range(200):
                fn(n)
        per_write: dict[str, list[float]] = {name: [] for name in sides}
        for r in range(rounds):
            for name in ["raw", "client"] if r % 2 == 0 else ["client", "raw"]:
                started = time.perf_counter()
                for n in range(writes):
                    sides[name](n)
                per_write[name].append((time.perf_counter() - started) / writes)
    return {name: statistics.median(values) * 1e6 for name, values in per_write.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--writes", type=int, default=1000, help="writes per batch")
    parser.add_argument("--rounds", type=int, default=10, help="batches per side")
    add_pg_major_argument(parser)
    args = parser.parse_args()

    # Durable commits are what production does, but their WAL flush (about a millisecond on
    # this disk) dwarfs everything else; without it the client's own cost is what remains.
    settings = {
        "synchronous_commit=on (durable)": "",
        "synchronous_commit=off (CPU only)": "-c synchronous_commit=off",
    }
    results = {}
    with bench_postgres(args.pg_major) as url:
        apply_migrations(url)
        ids = fixture_ids(url)
        for label, options in settings.items():
            results[label] = measure(url, ids, options, args.writes, args.rounds)

    print(f"single-row insert, one transaction each, {args.rounds} x {args.writes} per side")
    print(f"{'':36} {'raw us':>8} {'client us':>10} {'ratio':>6}")
    for label, sides in results.items():
        raw, ours = sides["raw"], sides["client"]
        print(f"{label:36} {raw:8.1f} {ours:10.1f} {ours / raw:6.2f}")
    print("goal: client at most 1.3x raw")


if __name__ == "__main__":
    main()
