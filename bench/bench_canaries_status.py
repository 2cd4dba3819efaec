"""Benchmark: canaries and the status check on a database with >= 1,000,000 messages.

Each canary and the whole status check must finish well under a second, answered from indexes
(no sequential scan of messages or audit_events). The baseline is a plain
``SELECT count(*) FROM messages`` on the same database (the cheapest way to touch every message);
each timing is reported as a ratio against it, with the plan's scan nodes as evidence.

    python bench/bench_canaries_status.py                  # throwaway Postgres, seeds ~1M rows
    python bench/bench_canaries_status.py --url postgresql://...   # an already seeded database

Seeding 100 tenants x 10 units x 1000 messages takes a minute or two. Exit 1 when a limit fails.

PostgreSQL 18.6 (the embedded default), defaults, shared 2-core VM with a test suite running
beside it: the baseline count 23.5 ms; canaries 4.2-12.0 ms (0.18x-0.51x of it, orphaned_messages
the slowest), the whole status check (31 lines) 43.5 ms (1.85x); every big-table scan an index
scan, the planted orphan found in 14 ms.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from common import add_pg_major_argument, bench_postgres, describe_server
from psycopg import sql

from hardening_pipeline.canaries import CANARIES, CanaryThresholds, run_canaries
from hardening_pipeline.canaries.runner import load_canary_sql
from hardening_pipeline.db.connection import connect
from hardening_pipeline.db.migrations import apply_migrations
from hardening_pipeline.hardening.status import run_status_check
from hardening_pipeline.seed import seed_demo_data

LIMIT_SECONDS = 1.0
BIG_TABLES = {"messages", "audit_events"}


def median_seconds(fn, repeat: int) -> float:
    fn()  # warm the cache: the schedule runs every 15 minutes against a warm database
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def scans(plan: dict) -> list[tuple[str, str, str]]:
    """(node type, relation, index) for every scan node in an EXPLAIN JSON plan."""
    found = []
    if "Relation Name" in plan:
        found.append((plan["Node Type"], plan["Relation Name"], plan.get("Index Name", "")))
    for child in plan.get("Plans", []):
        found.extend(scans(child))
    return found


def explain(url: str, query: str) -> tuple[list[tuple[str, str, str]], float]:
    with connect(url) as conn:
        conn.read_only = True
        row = conn.execute(("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + query).encode()).fetchone()
        plan = row["QUERY PLAN"][0]
        conn.rollback()
    return scans(plan["Plan"]), plan["Execution Time"] / 1000


def count_rows(url: str) -> dict[str, int]:
    with connect(url) as conn:
        return {
            t: conn.execute(
                sql.SQL("SELECT count(*) AS n FROM {}").format(sql.Identifier("public", t))
            ).fetchone()["n"]
            for t in ("tenants", "units", "messages", "audit_events")
        }


@contextlib.contextmanager
def database(args: argparse.Namespace) -> Iterator[str]:
    if args.url:
        print(describe_server(args.url), flush=True)
        apply_migrations(args.url)
        yield args.url
        return
    with bench_postgres(args.pg_major) as url:
        apply_migrations(url)
        started = time.perf_counter()
        seed_demo_data(url, tenants=args.tenants, messages_per_unit=args.messages_per_unit)
        print(f"seeded in {time.perf_counter() - started:.0f}s", flush=True)
        yield url


def plant_orphan(url: str) -> str:
    """One message whose unit vanishes, with FK triggers skipped: the canary must still see it."""
    with connect(url) as conn:
        unit = conn.execute("SELECT id, tenant_id, development_id FROM units LIMIT 1").fetchone()
        message = uuid.uuid4()
        conn.execute("SET LOCAL session_replication_role = replica")
        conn.execute("SELECT set_config('app.actor', 'bench:plant', true)")
        new_unit = uuid.uuid4()
        conn.execute(
            "INSERT INTO messages (id, tenant_id, development_id, unit_id, sender, body) "
            "VALUES (%s, %s, %s, %s, 'bench', 'orphan')",
            (message, unit["tenant_id"], unit["development_id"], new_unit),
        )
    return str(message)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="use this (already seeded) database instead of seeding")
    parser.add_argument("--tenants", type=int, default=100)
    parser.add_argument("--messages-per-unit", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    add_pg_major_argument(parser)
    args = parser.parse_args()

    failures: list[str] = []
    figures: dict = {}
    with database(args) as url:
        rows = count_rows(url)
        figures["rows"] = rows
        print("rows:", ", ".join(f"{t}={n:,}" for t, n in rows.items()))
        if rows["messages"] < 1_000_000 and not args.url:
            failures.append(f"only {rows['messages']:,} messages seeded (need 1,000,000)")
        with connect(url, autocommit=True) as conn:
            conn.execute("VACUUM ANALYZE")

        def baseline() -> None:
            with connect(url) as conn:
                conn.execute("SELECT count(*) FROM public.messages").fetchone()

        base = median_seconds(baseline, args.repeat)
        figures["baseline_count_messages_s"] = base
        print(f"\nbaseline (count of every message): {base * 1000:.1f} ms")
        print(f"\n{'what':<28}{'median ms':>10}{'x baseline':>12}  scans on big tables")

        queries = load_canary_sql()
        thresholds = CanaryThresholds()
        for name in CANARIES:
            seconds = median_seconds(lambda n=name: run_canaries(url, thresholds, [n]), args.repeat)
            # EXPLAIN with the file's own defaults (identical to CanaryThresholds()).
            plan_scans, exec_s = explain(url, queries[name])
            big = [s for s in plan_scans if s[1] in BIG_TABLES]
            seq = [s for s in big if s[0] == "Seq Scan"]
            shown = sorted({f"{t} {r}{' via ' + i if i else ''}" for t, r, i in big})
            print(f"{name:<28}{seconds * 1000:>10.1f}{seconds / base:>12.3f}  {'; '.join(shown)}")
            figures[name] = {
                "median_s": seconds,
                "ratio_to_baseline": seconds / base,
                "explain_execution_s": exec_s,
                "scans": big,
            }
            if seconds >= LIMIT_SECONDS:
                failures.append(f"{name} took {seconds:.2f}s")
            if seq:
                failures.append(f"{name} sequentially scans {', '.join(s[1] for s in seq)}")

        status_s = median_seconds(lambda: run_status_check(url), args.repeat)
        report = run_status_check(url)
        figures["status_check"] = {
            "median_s": status_s,
            "ratio_to_baseline": status_s / base,
            "green": report.passed,
            "lines": len(report.lines),
        }
        print(
            f"{'status check (all lines)':<28}{status_s * 1000:>10.1f}{status_s / base:>12.3f}"
            f"  {len(report.lines)} lines, {'all green' if report.passed else 'RED'}"
        )
        if status_s >= LIMIT_SECONDS:
            failures.append(f"status check took {status_s:.2f}s")
        if not report.passed:
            failures.append(f"status check is red: {[x.name for x in report.red]}")

        # The integrity canaries must scan the data, not trust "validated" constraints.
        orphan = plant_orphan(url)
        started = time.perf_counter()
        (found,) = run_canaries(url, names=["orphaned_messages"])
        seconds = time.perf_counter() - started
        print(
            f"\nplanted orphan (replica mode) found: {orphan in found.samples} "
            f"in {seconds * 1000:.1f} ms"
        )
        figures["planted_orphan_found"] = orphan in found.samples
        if orphan not in found.samples:
            failures.append("the planted orphan was not found")

    if args.json:
        args.json.write_text(json.dumps(figures, indent=2, default=str) + "\n")
    if failures:
        print("\nFAILED: " + "; ".join(failures))
        return 1
    print(f"\nOK: every canary and the status check under {LIMIT_SECONDS:.0f}s, index-backed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
