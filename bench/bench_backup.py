"""Our backup against ``pg_dump -Fc`` on the same database: wall time, output size, peak memory.

Each side runs as its own child process (``hardening backup`` through the CLI, and the pg_dump
of the server's own major), and the peak resident memory is
that child's own ``ru_maxrss`` from ``os.wait4``, so neither side is charged for the other or
for this script. Then the data is doubled and the backup measured again: streaming means its
peak memory should stay flat while the database grows. Run:

    python bench/bench_backup.py              # throwaway Postgres, seeds 1,000,000 messages
    python bench/bench_backup.py --pg-major 17 --no-double   # on PostgreSQL 17, 1M messages only
    python bench/bench_backup.py --url URL    # an existing, migrated and seeded database
    python bench/bench_backup.py --baseline main --rounds 5 --no-double
                                              # this checkout's backup against main's, alternating

``--tenants`` x 10 units x ``--messages-per-unit`` is the size (default 100 x 10 x 1000).

Seeding takes a minute or two per million messages on a shared 2-core VM; the whole run about
five minutes. Ratios (ours / pg_dump) are what compare across machines.

Figures (shared 2-core VM, embedded PG 16, 100 tenants, 1 worker; noisy, so read ratios):
1,000,000 messages: backup to a folder 5.0 s (0.66x pg_dump's 7.6 s), output 75.3 MiB (0.96x),
peak RSS 59.7 MiB. With zstd level 3 (before) and the same data: 6.5 s (0.82x), 81.5 MiB (1.04x).
2,000,000 messages (level 3): backup 12.1 s (0.78x), 163.1 MiB (1.04x); peak RSS 62.2 MiB ->
62.0 MiB when the data doubled (1.00x: flat), pg_dump 56.2 -> 56.2 MiB.
With the schema object (two pg_dump --schema-only runs on the backup's snapshot, beside the row
export), on the same VM under load from other jobs: 7.1 s (0.75x pg_dump's 9.5 s) and 10.1 s
(0.83x of 12.1 s) from a throwaway; against one seeded database (--url), alternating with the
code from before the schema object: 7.7 s (0.72x) and 6.7 s (1.04x) vs 8.9 s (0.87x) and
7.7 s (1.01x) before. Measured directly on 300,000 messages, the schema adds about 0.1 s.
On the same VM with nothing else running, schema object included, two runs: 3.8 s (0.66x
pg_dump's 5.7 s) and 3.6 s (0.63x), output 75.0 MiB (0.96x), peak RSS 60 MiB.
The figures above are PG 16.2. With each server's own pg_dump, same VM with a test suite running
beside it, one run each: PostgreSQL 17.11 (``--pg-major 17 --no-double``), 1,000,000 messages:
4.8 s (0.49x pg_dump's 9.8 s), output 75.0 MiB (0.96x), peak RSS 63 MiB. PostgreSQL 18.6 (the
embedded default, defaults): 8.6 s (0.71x of 12.1 s); doubled to 2,000,000: 13.0 s (0.82x of
15.8 s), output 0.96x; peak RSS 63.1 -> 63.2 MiB (flat), pg_dump 47.2 -> 47.2 MiB.
Per-tenant keys (each tenant's object under its own key from the key ledger, both ledger copies
compared and written) against the commit before them, ``--baseline 9b8e9f8 --rounds 5``,
alternating, PG 18.6, same VM with other test suites running beside it (so very noisy):
100 tenants, 300,000 messages: medians 3.14 s vs 3.67 s (0.86x); 1,000 tenants, 200,000
messages: medians 6.53 s vs 7.03 s (0.93x). Per-tenant keys add no time the noise can show.
Keyed digests (a tenant object's digests HMAC-SHA256 under its tenant key instead of SHA-256),
``--baseline main --rounds 3 --no-double --tenants 100 --messages-per-unit 300``, same VM:
medians 2.94 s vs 3.15 s (0.93x; 0.99x in a run beside other test suites). The HMAC replaces
the SHA-256, it is not a second pass over the rows.
Tenants' audit rows in their own objects (the audit log split like a tenant table, with keyed
digests too), ``--baseline e5f4e08 --rounds 3 --no-double --tenants 20 --messages-per-unit
500``, PG 18.6, nothing else running: medians 1.13 s vs 1.14 s (0.99x), output 7.5 MiB against
7.6 MiB. Nothing extra is written until a tenant is erased.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from statistics import median

from common import add_pg_major_argument, bench_postgres, client_bin_dir, describe_server

from hardening_pipeline.db.migrations import apply_migrations
from hardening_pipeline.seed import seed_demo_data

REPO = Path(__file__).resolve().parents[1]
MIB = 1024 * 1024
# One master key for every run: the tenant key ledger a run leaves in the database is signed
# with it, and a later run under another key would rightly refuse to read it.
MASTER_KEY = base64.b64encode(os.urandom(32)).decode()


@dataclass
class Measurement:
    label: str
    seconds: float
    peak_rss_mib: float
    output_bytes: int


def run_child(label: str, argv: list[str], env: dict[str, str], output: Path) -> Measurement:
    """Run one child to completion and read its own peak RSS (Linux reports KiB)."""
    started = time.perf_counter()
    proc = subprocess.Popen(
        argv, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{label} failed with exit code {proc.returncode}")
    if output.is_file():
        size = output.stat().st_size
    elif output.is_dir():
        size = sum(p.stat().st_size for p in output.rglob("*") if p.is_file())
    else:
        size = 0
    return Measurement(label, seconds, usage.ru_maxrss / 1024, size)


def measure(url: str, workdir: Path, tag: str) -> list[Measurement]:
    env = dict(os.environ)
    env.update(
        HARDENING_DATABASE_URL=url,
        BACKUP_ENCRYPTION_KEY=MASTER_KEY,
        BACKUP_STORE_URL=(workdir / f"store-{tag}").as_uri(),
        HARDENING_STATE_DIR=str(workdir / "state"),
    )
    cli = [sys.executable, "-m", "hardening_pipeline.cli", "backup"]
    dump = workdir / f"pg_dump-{tag}.dump"
    return [
        run_child("backup --dry-run", [*cli, "--dry-run"], env, workdir / "nothing"),
        run_child("backup (FileStore)", cli, env, workdir / f"store-{tag}"),
        run_child(
            "pg_dump -Fc",
            [str(client_bin_dir(url) / "pg_dump"), "-Fc", "-f", str(dump), "-d", url],
            env,
            dump,
        ),
    ]


def export_ref(ref: str, target: Path) -> Path:
    """The tree of git ``ref`` (code only) in ``target``, to run its backup beside this one."""
    target.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "archive", ref], cwd=REPO, check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
    return target


def side_by_side(url: str, workdir: Path, baseline: Path, ref: str, rounds: int) -> None:
    """Both backups on the same database, alternating, ``rounds`` times each; medians compared.

    Alternating spreads the VM's noise over both sides instead of charging one of them with it.
    """
    times: dict[str, list[float]] = {ref: [], "this checkout": []}
    for n in range(rounds):
        for label, code in ((ref, baseline), ("this checkout", REPO)):
            env = dict(os.environ)
            env.update(
                PYTHONPATH=str(code),
                HARDENING_DATABASE_URL=url,
                BACKUP_ENCRYPTION_KEY=MASTER_KEY,
                BACKUP_STORE_URL=(workdir / f"side-{n}-{label.replace(' ', '-')}").as_uri(),
                HARDENING_STATE_DIR=str(workdir / "state"),
            )
            cli = [sys.executable, "-m", "hardening_pipeline.cli", "backup"]
            out = workdir / f"side-{n}-{label.replace(' ', '-')}"
            times[label].append(run_child(label, cli, env, out).seconds)
    print(f"\nside by side, {rounds} alternating rounds (wall s):")
    for label, values in times.items():
        print(f"  {label:14} {' '.join(f'{v:6.2f}' for v in values)}   median {median(values):.2f}")
    ratio = median(times["this checkout"]) / median(times[ref])
    print(f"  this checkout / {ref}: {ratio:.3f}x")


def count_messages(url: str) -> int:
    import psycopg

    with psycopg.connect(url) as conn:
        return conn.execute("SELECT count(*) FROM messages").fetchone()[0]


def print_table(title: str, rows: list[Measurement]) -> None:
    base = next(r for r in rows if r.label == "pg_dump -Fc")
    print(f"\n{title}")
    print(
        f"{'':20} {'wall s':>8} {'x pg_dump':>9} {'peak RSS MiB':>13} {'x pg_dump':>9} "
        f"{'output MiB':>11} {'x pg_dump':>9}"
    )
    for r in rows:
        size = f"{r.output_bytes / MIB:11.1f} {r.output_bytes / base.output_bytes:9.2f}"
        if r.output_bytes == 0:
            size = f"{'-':>11} {'-':>9}"
        print(
            f"{r.label:20} {r.seconds:8.1f} {r.seconds / base.seconds:9.2f} "
            f"{r.peak_rss_mib:13.1f} {r.peak_rss_mib / base.peak_rss_mib:9.2f} {size}"
        )


@contextlib.contextmanager
def database(url: str | None, major: int | None) -> Iterator[tuple[str, bool]]:
    if url:
        print(describe_server(url), flush=True)
        yield url, False
        return
    with bench_postgres(major) as server_url:
        yield server_url, True


def seed(url: str, tenants: int, messages_per_unit: int) -> None:
    started = time.perf_counter()
    result = seed_demo_data(url, tenants=tenants, messages_per_unit=messages_per_unit)
    print(
        f"seeded {result.messages:,} messages ({result.rows:,} rows) in "
        f"{time.perf_counter() - started:.0f}s",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", help="existing database (not seeded or doubled by this script)")
    parser.add_argument("--tenants", type=int, default=100)
    parser.add_argument("--messages-per-unit", type=int, default=1000)
    parser.add_argument("--no-double", action="store_true", help="skip the doubled-data pass")
    parser.add_argument(
        "--baseline", help="git ref whose backup is timed beside this checkout's (e.g. main)"
    )
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds for --baseline")
    add_pg_major_argument(parser)
    args = parser.parse_args()

    with (
        database(args.url, args.pg_major) as (url, throwaway),
        tempfile.TemporaryDirectory() as tmp,
    ):
        workdir = Path(tmp)
        if throwaway:
            apply_migrations(url)
            seed(url, args.tenants, args.messages_per_unit)
        first_count = count_messages(url)
        if args.baseline:
            baseline = export_ref(args.baseline, workdir / "baseline")
            side_by_side(url, workdir, baseline, args.baseline, args.rounds)
        first = measure(url, workdir, "1x")
        print_table(f"{first_count:,} messages", first)
        if throwaway and not args.no_double:
            seed(url, args.tenants, args.messages_per_unit)
            second_count = count_messages(url)
            second = measure(url, workdir, "2x")
            print_table(f"{second_count:,} messages (doubled)", second)
            ours = [
                (a.label, a.peak_rss_mib, b.peak_rss_mib)
                for a, b in zip(first, second, strict=True)
            ]
            print("\npeak RSS when the data doubles (MiB):")
            for label, before, after in ours:
                print(f"  {label:20} {before:7.1f} -> {after:7.1f} ({after / before:.2f}x)")


if __name__ == "__main__":
    main()
