"""Restore speed: our restore (fetch + verify + decrypt + COPY) against pg_restore of pg_dump -Fc.

Both sides restore the same database into a fresh database on a second server, as a drill does
(its superuser is the drill's, so the backup's owners are ordinary roles there), in this script:

* ours:     ``hardening backup`` to a folder, then ``restore_backup_into`` (migrations, every
            object's SHA-256 checked, chunked AES-GCM decryption, COPY in FK order, sequences);
* baseline: ``pg_dump -Fc`` of the source, then ``pg_restore`` into an empty database.

Usage: ``python bench/bench_restore.py [--url SOURCE_URL] [--pg-major N] [--tenants 100
--messages-per-unit 1000]``. Without ``--url`` a throwaway Postgres of ``--pg-major`` (default:
the newest installed) is seeded with ``--tenants`` x 10 units x ``--messages-per-unit`` messages
(1,000,000 by default; about 80 s). pg_dump and pg_restore are those of the server's own major.

Figures (shared 2-core VM under load from other jobs, embedded PG 16, 1,000,000 messages and
their audit rows, 2,003,410 rows restored; noisy, so read ratios): ours 11.4 s, single-job
pg_restore 13.8 s (0.82x), pg_restore -j 2 of pg_dump -Fd -j 2 12.2 s (0.94x); a second run
against a seeded database (--url) 12.5 s vs 14.3 s (0.87x) and 12.3 s (1.01x). Before backups
carried the schema (migrations, then COPY on one connection, then keys) it was 1.16x single-job
pg_restore and about 1.6x pg_restore -j 2. On the same VM with nothing else running: ours 6.7 s,
single-job pg_restore 9.9 s (0.67x), pg_restore -j 2 of pg_dump -Fd 6.8 s (0.98x).
The figures above are PG 16.2. With each server's own pg_dump and pg_restore, same VM with a
test suite running beside it, one run each, 1,000,000 messages (2,003,426 rows restored):
PostgreSQL 17.11 (``--pg-major 17``): ours 12.2 s, pg_restore 13.6 s (0.90x), pg_restore -j 2
14.4 s (0.85x). PostgreSQL 18.6 (the embedded default): ours 21.0 s, pg_restore 17.9 s (1.17x),
pg_restore -j 2 18.5 s (1.14x); a second run, sampled by py-spy at 40 Hz: ours 12.2 s, pg_restore
13.1 s (0.93x), pg_restore -j 2 13.5 s (0.90x). In that profile the two restore workers wait on
the server (COPY about 11 s, index builds 7 s, foreign-key validation 3.5 s of worker time) and
spend under 2 s reading, decrypting and decompressing: the server's work dominates, as for
pg_restore.

Into a server of its own, with every schema entry, COPY and key run in a session of its owner
(PostgreSQL 17.11, 1,000,000 messages, a quiet VM): ours 11.4 s, pg_restore 11.3 s (1.01x),
pg_restore -j 2 7.8 s (1.46x). The restore before it ran as owners, measured this same way:
11.4 s, 0.97x and 1.49x. (Restored into the source's own server, as this script did before, that
older restore measured 9.6 s, 0.84x and 1.13x on the same quiet VM.)
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common import (  # noqa: E402
    add_pg_major_argument,
    bench_postgres,
    client_bin_dir,
    describe_server,
)

from hardening_pipeline.backup.catalog import find_backup, list_backups  # noqa: E402
from hardening_pipeline.backup.crypto import Keyring  # noqa: E402
from hardening_pipeline.backup.nightly import run_backup  # noqa: E402
from hardening_pipeline.backup.store import FileStore  # noqa: E402
from hardening_pipeline.db.connection import (  # noqa: E402
    connect,
    drop_database,
    recreate_database,
)
from hardening_pipeline.db.migrations import apply_migrations  # noqa: E402
from hardening_pipeline.restore.drill import (  # noqa: E402
    DRILL_SUPERUSER,
    restore_app_backup_into,
    restore_backup_into,
)
from hardening_pipeline.seed import seed_demo_data  # noqa: E402


@contextlib.contextmanager
def source(args: argparse.Namespace):
    if args.url:
        print(describe_server(args.url), flush=True)
        yield args.url
        return
    with bench_postgres(args.pg_major) as server:
        url = recreate_database(server, "bench_source")
        apply_migrations(url)
        print(f"seeding {args.tenants} tenants x {args.messages_per_unit} messages/unit ...")
        seed_demo_data(url, tenants=args.tenants, messages_per_unit=args.messages_per_unit)
        yield url


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="source database (default: a seeded throwaway)")
    parser.add_argument("--tenants", type=int, default=100)
    parser.add_argument("--messages-per-unit", type=int, default=1000)
    add_pg_major_argument(parser)
    args = parser.parse_args()
    # The restore target is a server of its own, as the drill's is: its superuser is not a
    # role the source's objects are owned by (a restore runs them as their owners).
    with (
        source(args) as url,
        bench_postgres(args.pg_major, superuser=DRILL_SUPERUSER) as target,
        tempfile.TemporaryDirectory(prefix="hp-bench-") as tmp,
    ):
        bin_dir = client_bin_dir(url)
        with connect(url) as conn:
            messages = conn.execute("SELECT count(*) AS n FROM messages").fetchone()["n"]
        store = FileStore(Path(tmp) / "store")
        keyring = Keyring(os.urandom(32))
        run_backup(url, store, keyring)
        backup = find_backup(list_backups(store, keyring), None)
        dump = Path(tmp) / "dump.fc"
        subprocess.run([str(bin_dir / "pg_dump"), "-Fc", "-f", str(dump), "-d", url], check=True)
        dump_dir = Path(tmp) / "dump.dir"
        subprocess.run(
            [str(bin_dir / "pg_dump"), "-Fd", "-j", "2", "-f", str(dump_dir), "-d", url],
            check=True,
        )

        ours_url = recreate_database(target, "bench_restore_ours")
        started = time.perf_counter()
        if backup.manifest.app_schema is not None:
            rows = restore_app_backup_into(ours_url, store, backup, keyring).rows
        else:
            rows = restore_backup_into(ours_url, store, backup, keyring)
        ours = time.perf_counter() - started

        timings = {}
        for label, extra, archive in (
            ("single", [], dump),
            ("parallel", ["-j", "2"], dump_dir),
        ):
            base_url = recreate_database(target, f"bench_restore_pg_{label}")
            started = time.perf_counter()
            subprocess.run(
                [str(bin_dir / "pg_restore"), "--no-owner", *extra, "-d", base_url, str(archive)],
                check=True,
                capture_output=True,
            )
            timings[label] = time.perf_counter() - started
        for name in ("bench_restore_ours", "bench_restore_pg_single", "bench_restore_pg_parallel"):
            drop_database(target, name)
    single, parallel = timings["single"], timings["parallel"]
    print(f"messages in source:               {messages:,}")
    print(f"rows restored (ours):             {rows:,}")
    print(f"ours (verify+decrypt+COPY+keys):  {ours:8.1f} s")
    print(f"pg_restore of pg_dump -Fc:        {single:8.1f} s")
    print(f"pg_restore -j 2 of pg_dump -Fd:   {parallel:8.1f} s")
    print(f"ratio ours / pg_restore:          {ours / single:8.2f}")
    print(f"ratio ours / pg_restore -j 2:     {ours / parallel:8.2f}  (goal <= 1.0)")


if __name__ == "__main__":
    main()
