"""Benchmark: sealing and verifying a 1,000,000-row audit log.

Sealing is off the write path, so its cost is the time of one sealing run (every minute) and of
the verification that follows it: in full (every row fetched and re-hashed in Python, the
baseline), and after a recorded check, when only the row versions are read and only new or
changed seals are re-hashed. Every digest is computed in Python from fetched values, so these
figures include moving the rows to the client; ``peak_rss_mb`` shows memory stays flat.
The audit rows are generated in bulk (realistic jsonb images, inserted as the superuser straight
into audit_events) so the benchmark measures sealing, not seeding. ``SELECT count(*)`` is
printed as the floor of reading the table at all.

    python bench/bench_seals.py                 # throwaway Postgres, 1M rows
    python bench/bench_seals.py --rows 200000   # quicker
    python bench/bench_seals.py --url postgresql://...   # a migrated database you own

Prints one JSON object. Nothing is asserted: the numbers are the result.

PostgreSQL 18.6 (the embedded default), 1,000,000 rows, shared 2-core VM with a test suite
running beside it: sealing 9.1 s (110,000 rows/s, 10 seals), full verification 11.9 s (about
10 s per million on PG 16.2), after recorded checks 2.4 s (0.20x of full; 0.12x on PG 16.2),
a minute's seal of 10,000 new rows 0.15 s, count(*) 0.04 s, peak RSS 107 MB.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import time
from collections.abc import Iterator

from common import add_pg_major_argument, bench_postgres, describe_server

from hardening_pipeline.db.connection import connect
from hardening_pipeline.db.migrations import apply_migrations
from hardening_pipeline.hardening.seals import seal_audit_log, verify_audit_seals

GENERATE = """
    INSERT INTO public.audit_events (actor, tenant_id, table_name, operation, record_id, after,
                                     db_role)
    SELECT 'service_role:bench', t.tenant, 'messages', 'INSERT', gen_random_uuid()::text,
           jsonb_build_object('id', gen_random_uuid(), 'tenant_id', t.tenant,
                              'sender', 'resident', 'body', repeat('heating is off ', 6),
                              'created_at', now()),
           'service_role'
    FROM generate_series(1, %s) AS g
    CROSS JOIN LATERAL (SELECT gen_random_uuid() AS tenant) AS t
"""


# Rows added after the checks were recorded: what the next sealing run seals and re-hashes.
NEW_ROWS = 10_000


@contextlib.contextmanager
def database(url: str | None, major: int | None) -> Iterator[str]:
    if url:
        print(describe_server(url), flush=True)
        yield url
        return
    with bench_postgres(major) as server_url:
        apply_migrations(server_url, applied_by="bench")
        yield server_url


def timed(fn) -> tuple[float, object]:
    started = time.perf_counter()
    result = fn()
    return time.perf_counter() - started, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="a migrated database (default: a throwaway Postgres)")
    parser.add_argument("--rows", type=int, default=1_000_000)
    add_pg_major_argument(parser)
    args = parser.parse_args()
    with database(args.url, args.pg_major) as url:
        with connect(url, autocommit=True) as conn:
            generate_s, _ = timed(lambda: conn.execute(GENERATE, (args.rows,)))
            conn.execute("VACUUM ANALYZE public.audit_events")
            count_s, _ = timed(
                lambda: conn.execute("SELECT count(*) FROM public.audit_events").fetchone()
            )
        seal_s, run = timed(lambda: seal_audit_log(url, actor="bench"))
        verify_s, result = timed(lambda: verify_audit_seals(url))
        incremental_s, again = timed(lambda: seal_audit_log(url, actor="bench"))
        record_s, _ = timed(lambda: verify_audit_seals(url, record_as="bench"))
        checked_s, checked = timed(lambda: verify_audit_seals(url))
        with connect(url, autocommit=True) as conn:
            conn.execute(GENERATE, (NEW_ROWS,))
        seal_new_s, _ = timed(lambda: seal_audit_log(url, actor="bench"))
        checked_new_s, checked_new = timed(lambda: verify_audit_seals(url))
        with connect(url) as conn:
            size = conn.execute(
                "SELECT pg_total_relation_size('hardening.audit_seals') AS b"
            ).fetchone()["b"]
    print(
        json.dumps(
            {
                "rows": args.rows,
                "generate_seconds": round(generate_s, 2),
                "count_star_seconds": round(count_s, 3),
                "seal_seconds": round(seal_s, 2),
                "seal_rows_per_second": round(args.rows / seal_s),
                "seals_written": len(run.seals),
                "verify_seconds": round(verify_s, 2),
                "verify_passed": result.passed,
                "verify_and_record_checks_seconds": round(record_s, 2),
                "verify_after_checks_seconds": round(checked_s, 2),
                "verify_after_checks_rehashed_rows": checked.rehashed_rows,
                "verify_after_checks_ratio_to_full": round(checked_s / verify_s, 3),
                f"seal_{NEW_ROWS}_new_rows_seconds": round(seal_new_s, 2),
                f"verify_after_{NEW_ROWS}_new_rows_seconds": round(checked_new_s, 2),
                f"verify_after_{NEW_ROWS}_new_rows_rehashed_rows": checked_new.rehashed_rows,
                "reseal_nothing_new_seconds": round(incremental_s, 3),
                "reseal_new_seals": len(again.seals),
                "seal_table_bytes": size,
                "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
