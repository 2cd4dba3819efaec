"""What the audit capture costs writers: the same table with its capture triggers on and off.

``messages`` is measured as it really is (RLS, four foreign keys, five indexes); between runs its
audit triggers (the write guard and the four statement-level capture triggers) are switched
off with ``ALTER TABLE ... DISABLE TRIGGER`` and back to ``ENABLE ALWAYS``, so "unaudited" is
the identical table with only the capture missing. A third arm replays the capture functions as
an older migration defined them (``--compare``, default 002) with ``CREATE OR REPLACE``, so a
rewrite of the capture is measured against its predecessor in the same run. Arms rotate round
by round (forwards, then backwards), so drift from autovacuum, a growing ``audit_events`` or
other load on the machine is spread over all of them; figures are medians and ratios to the
unaudited arm:

* bulk: 100,000 rows in one statement, as ``COPY FROM STDIN`` from this process and as a
  server-side ``INSERT ... SELECT generate_series``; committed, then removed (with the triggers
  off) and vacuumed outside the timing, so every run starts from the same table;
* single-row: the bundled ``pgbench`` with custom scripts (``-M prepared -c 4 -j 2``): one
  ``INSERT`` per transaction, and one ``UPDATE`` by primary key of a random row among 100,000;
* single-row inside the server: the same statements 5,000 times in a ``DO`` loop (rolled
  back), timed per statement. No client, network or commit: what the triggers add to one
  statement, but blind to anything paid once per transaction;
* single-row server CPU: the same statements as 3,000 transactions with durable commits from
  one connection, measured as the CPU time (utime + stime in ``/proc``) of the server process
  serving it. Waiting for the disk or for other tenants of the VM does not count, so it is the
  steadiest figure here, and per-transaction costs are in it. Needs the server on this machine.

Writes run as the superuser with ``app.actor`` set for the session (``PGOPTIONS``), which is
what the capture records; the service-role guard is the same single check either way.

    python bench/bench_audit_overhead.py                  # throwaway Postgres, ~9 minutes
    python bench/bench_audit_overhead.py --rounds 8 --seconds 5 --compare 002_audit_events.sql

Goals: bulk at most 1.6x the unaudited time, single-row throughput at least 0.75x. On a shared
2-core VM single pgbench runs swing by 2x, so only medians over many short alternating runs mean
anything, and the server CPU per transaction is the figure to compare versions with.

Baseline (shared 2-core VM, embedded PG 16, defaults; ratios to unaudited, 007 / 002 capture):

    COPY 100k rows             1.92x / 1.96x    (a noisier run: 1.65x / 1.91x)
    INSERT..SELECT 100k rows   1.89x / 1.88x    (a noisier run: 1.99x / 2.22x)
    pgbench insert, tps        0.52x / 0.54x    (a noisier run: 0.90x / 0.82x)
    pgbench update, tps        0.52x / 0.53x    (a noisier run: 0.44x / 0.56x)
    in-server insert           104 us vs 31 us unaudited (3.4x) / 148 us (4.8x)
    in-server update            86 us vs 19 us unaudited (4.6x) / 119 us (6.4x)

Both goals are missed. 007 (actor and role read once per statement) takes about a third off the
capture's own cost per statement (73 vs 117 us on insert, 67 vs 101 us on update), which is
lost in the noise end to end. What remains is mostly the audit row itself: a SECURITY DEFINER
call with its search_path switch, an INSERT with three btrees, a BRIN index, an identity and
two jsonb images, about as much work as the message row it records. For bulk, the
``(table_name, record_id)`` index alone is about 0.2x of the 1.9x (random uuid keys).

After 008 (that btree replaced by a HASH index on record_id; lookups by table and record still
use an index), same VM, ``--bulk-rounds 3 --rounds 3 --seconds 4``, 007 / 002 capture:

    COPY 100k rows             1.57x / 1.82x
    INSERT..SELECT 100k rows   1.57x / 1.80x
    pgbench insert, tps        0.56x / 0.62x
    pgbench update, tps        0.53x / 0.58x
    in-server insert            91 us vs 29 us unaudited (3.1x) / 127 us (4.4x)
    in-server update            84 us vs 17 us unaudited (5.0x) / 117 us (7.0x)

The same options just before 008: COPY 1.72x, INSERT..SELECT 1.74x, pgbench insert 0.55x,
update 0.45x, in-server insert 109 us vs 29 us, update 86 us vs 17 us (007 capture).
In a same-run comparison of the index alone (INSERT..SELECT, 100k rows) the btree cost 1.63-1.78x
and the hash index 1.44-1.65x. The bulk goal is met, narrowly; the single-row goal is still missed.
The pgbench figures are durable commits (synchronous_commit = on, fsync = on, the defaults).
Tried and not kept: the 002 ``(tenant_id, operation, created_at)`` index swapped for
``(tenant_id)`` alone (at most 0.1x on bulk, within the noise, and per-tenant time ranges would
lose their index), and the write guard without its SET search_path clause, calls
schema-qualified instead (no change in the in-server figures).

After 009 (actor and role written out inline, so no SQL is parsed per transaction, and the
redundant operation CHECK dropped), same VM, default options, 009 / 007 capture:

    COPY 100k rows             1.54x / 1.53x
    INSERT..SELECT 100k rows   1.56x / 1.57x
    pgbench insert, tps        0.66x / 0.50x    (a second run: 0.63x / 0.56x)
    pgbench update, tps        0.62x / 0.51x    (a second run: 0.62x / 0.50x)
    server CPU per insert tx   270 us vs 180 us unaudited (1.50x) / 310 us (1.72x)
    server CPU per update tx   242 us vs 133 us unaudited (1.81x) / 295 us (2.21x)

perf on a pgbench run showed where 007's time went: plpgsql evaluates a DECLARE initializer in
a per-transaction executor state, so the two LANGUAGE sql helper functions (not inlinable: they
SET search_path) were parsed, analysed and planned again in every transaction, about a fifth of
the server time of a single-row INSERT. The in-server loop, one long transaction, never saw it.

The single-row goal is still missed, and what is left is the audit row itself: one more INSERT
through SPI (executor start and end, five indexes, a CHECK rebuilt from its stored text per
statement, a jsonb image, WAL), as much work as the write it records. Measured and not kept
(differences within this VM's noise, or not worth the change of meaning): the invoker-rights
guard folded into the capture (the role read from the ``role`` setting), the guard's PERFORM
written as an assignment, and row-level instead of statement-level capture (no better on one
row, and it would run the INSERT once per row of a bulk write). Reaching 0.75x would need
capture off the write path (for example logical decoding into audit_events), which gives up the
guarantee that a committed write and its audit row commit together.

After 015 (role from the session's ``role`` setting instead of a custom setting the guard wrote,
actor pattern-checked with two regular expressions per statement, the guard's set_config gone),
two runs of ``--bulk-rounds 2 --rounds 3 --seconds 3`` with
``--compare 011_tenant_resolver_and_adoption.sql`` on the shared 2-core VM, 015 / 011 capture:

    server CPU per insert tx   163 / 157 us, then 173 / 170 us   (1.75x / 1.68x, 1.68x / 1.65x)
    server CPU per update tx   150 / 150 us, then 167 / 153 us   (2.05x / 2.05x, 2.00x / 1.84x)
    in-server insert           110 / 56 us, then 80 / 77 us      (first run's 015 arm an outlier)
    in-server update            41 / 41 us, then 56 / 55 us
    COPY 100k rows             1.38x / 1.25x, then 1.62x / 1.47x
    pgbench insert, tps        0.49x / 0.61x, then 0.26x / 0.41x (the VM was busier; 2x swings)

Within this VM's noise of 011 on the steadiest figure (server CPU); no query per row was added.

With 016 and 017 applied (event triggers on DDL only; the per-row capture is 015's), default
options, ``--compare 009_audit_capture_inline_actor.sql``, nothing else running, 015 / 009:

    COPY 100k rows             1.54x / 1.51x
    INSERT..SELECT 100k rows   1.59x / 1.54x
    pgbench insert, tps        0.66x / 0.68x
    pgbench update, tps        0.57x / 0.58x
    server CPU per insert tx   180 us vs 107 us unaudited (1.69x) / 180 us (1.69x)
    server CPU per update tx   168 us vs 80 us unaudited (2.10x) / 160 us (2.00x)

The same as after 009 (COPY 1.54x, pgbench insert 0.66x): the DDL recording costs writers nothing.

PostgreSQL 18.6 (the embedded default; the figures above are PG 16.2), defaults (``--compare``
002), one run on the same VM with a test suite running beside it, 015 / 002 capture:

    COPY 100k rows             1.86x / 2.46x
    INSERT..SELECT 100k rows   1.73x / 2.55x
    pgbench insert, tps        0.96x / 0.86x
    pgbench update, tps        0.49x / 0.56x
    in-server insert           119 us vs 43 us unaudited (2.81x) / 103 us (2.41x)
    in-server update           133 us vs 32 us unaudited (4.12x) / 131 us (4.07x)
    server CPU per insert tx   337 us vs 180 us unaudited (1.87x) / 322 us (1.79x)
    server CPU per update tx   260 us vs 108 us unaudited (2.40x) / 278 us (2.57x)

Bulk misses its goal (COPY by 0.26x, INSERT..SELECT by 0.13x), and so does pgbench update; the
pgbench insert arm's 0.96x is within this VM's 2x swings. The steadiest figure, server CPU per
transaction, is 1.87x / 2.40x against PG 16.2's 1.69x / 2.10x: a little higher, from one run
on a busy machine.

The capture as ``sql/definitions`` has it today (the arm "capture today": who wrote comes from
one call of ``hardening.statement_identity()`` per statement instead of inline expressions, and
the id-keyed and composite-keyed paths are one statement, ``hardening.record_key()`` only for
composite keys) against 018's inline capture, PG 18.6, nothing else running, ``--compare
018_capture_keys_and_claims.sql --bulk-rounds 4 --rounds 4 --seconds 4``, today / 018:

    COPY 100k rows             1.59x / 1.53x
    INSERT..SELECT 100k rows   1.68x / 1.69x
    pgbench insert, tps        0.54x / 0.56x
    pgbench update, tps        0.45x / 0.46x
    in-server insert            75.9 us vs 24.4 us unaudited (3.11x) / 71.7 us (2.94x)
    in-server update            79.7 us vs 17.4 us unaudited (4.58x) / 77.3 us (4.44x)
    server CPU per insert tx   313 us vs 160 us unaudited (1.96x) / 303 us (1.90x)
    server CPU per update tx   250 us vs 103 us unaudited (2.42x) / 245 us (2.37x)

One definition of who wrote costs 2-4 us a statement (3% of the server CPU of a one-row insert
transaction, 2% of an update); bulk is unchanged within noise. Both arms run today's guard,
which makes the same call once a statement. A first version that kept a subquery for composite
keys in the one statement cost another 4 us a statement (a subplan set up every time); the
function called only for composite keys removed it.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from common import add_pg_major_argument, bench_postgres, client_bin_dir, seed_one_unit
from psycopg import sql

from hardening_pipeline.db.connection import connect
from hardening_pipeline.db.migrations import MIGRATIONS_DIR, apply_migrations
from hardening_pipeline.sql_files import DEFINITIONS_DIR

BULK_ROWS = 100_000
UPDATE_ROWS = 100_000
BULK_SENDER = "bench-bulk"
# Deterministic ids for the update targets, so a pgbench script can name one from an integer.
ID_PREFIX = "00000000-0000-4000-8000-"

INSERT_SCRIPT = """\
INSERT INTO public.messages (tenant_id, development_id, unit_id, sender, body)
VALUES (:tenant, :development, :unit, 'bench-single', 'The heating is off again.');
"""
# :rows and the id prefix come in with pgbench -D; the id is rebuilt from k as prepare() made it.
UPDATE_SCRIPT = """\
\\set k random(1, :rows)
UPDATE public.messages SET body = 'Edited: the heating is back.', sender = 'bench-update'
WHERE id = (:prefix || lpad(to_hex(cast(:k AS int)), 12, '0'))::uuid;
"""


def audit_triggers(url: str) -> list[str]:
    """The guard and capture triggers of messages, found by name rather than listed."""
    with connect(url) as conn:
        rows = conn.execute(
            "SELECT tgname FROM pg_catalog.pg_trigger "
            "WHERE tgrelid = 'public.messages'::regclass AND NOT tgisinternal "
            "AND tgname LIKE 'messages\\_audit\\_%' ORDER BY tgname"
        ).fetchall()
    names = [r["tgname"] for r in rows]
    if not names:
        raise SystemExit("messages has no audit triggers: is the database migrated?")
    return names


def set_audit(url: str, triggers: list[str], on: bool) -> None:
    action = "ENABLE ALWAYS" if on else "DISABLE"
    with connect(url) as conn:
        for name in triggers:
            conn.execute(
                sql.SQL("ALTER TABLE public.messages {} TRIGGER {}").format(
                    sql.SQL(action), sql.Identifier(name)
                )
            )
        conn.commit()


def prepare(url: str) -> dict[str, str]:
    """One tenant with one unit, and the rows the update benchmark picks from."""
    ids = seed_one_unit(url, random_seed=1)
    with connect(url) as conn:
        conn.execute("SELECT set_config('app.actor', 'bench:setup', true)")
        conn.execute(
            "INSERT INTO public.messages (id, tenant_id, development_id, unit_id, sender, body) "
            "SELECT (%s || lpad(to_hex(g), 12, '0'))::uuid, %s, %s, %s, 'bench-update', 'x' "
            "FROM generate_series(1, %s) g",
            (ID_PREFIX, ids["tenant"], ids["development"], ids["unit"], UPDATE_ROWS),
        )
        conn.commit()
    with connect(url, autocommit=True) as conn:
        conn.execute("VACUUM (ANALYZE) public.messages, public.audit_events")
    return ids


def copy_payload(ids: dict[str, str]) -> bytes:
    line = f"{ids['tenant']}\t{ids['development']}\t{ids['unit']}\t{BULK_SENDER}\t"
    return "".join(
        f"{line}Bulk message number {n}, about the lift.\n" for n in range(BULK_ROWS)
    ).encode()


def bulk_copy(url: str, ids: dict[str, str], payload: bytes) -> float:
    with connect(url) as conn:
        conn.execute("SELECT set_config('app.actor', 'bench:bulk', true)")
        started = time.perf_counter()
        query = "COPY public.messages (tenant_id, development_id, unit_id, sender, body) FROM STDIN"
        with conn.cursor() as cur, cur.copy(query) as copy:
            copy.write(payload)
        conn.commit()
        return time.perf_counter() - started


def bulk_insert_select(url: str, ids: dict[str, str], payload: bytes) -> float:
    with connect(url) as conn:
        conn.execute("SELECT set_config('app.actor', 'bench:bulk', true)")
        started = time.perf_counter()
        conn.execute(
            "INSERT INTO public.messages (tenant_id, development_id, unit_id, sender, body) "
            "SELECT %s, %s, %s, %s, 'Bulk message number ' || g || ', about the lift.' "
            "FROM generate_series(1, %s) g",
            (ids["tenant"], ids["development"], ids["unit"], BULK_SENDER, BULK_ROWS),
        )
        conn.commit()
        return time.perf_counter() - started


def clean_bulk(url: str, triggers: list[str]) -> None:
    """Remove the bulk rows with the capture off (their deletion is not what is measured)."""
    set_audit(url, triggers, on=False)
    with connect(url) as conn:
        conn.execute("DELETE FROM public.messages WHERE sender = %s", (BULK_SENDER,))
        conn.commit()
    with connect(url, autocommit=True) as conn:
        conn.execute("VACUUM public.messages")


SERVER_STATEMENTS = 5000
# The same single-row statements as the pgbench scripts, run back to back inside the server:
# no client, no network, no commit, so what is left is the statement and its triggers. Far
# steadier than tps on a shared machine, and it is where the capture's cost actually is.
_SERVER_LOOPS = {
    "insert": """
DO $loop$ BEGIN FOR i IN 1..{n} LOOP
    INSERT INTO public.messages (tenant_id, development_id, unit_id, sender, body)
    VALUES ('{tenant}', '{development}', '{unit}', 'bench-single', 'The heating is off again.');
END LOOP; END $loop$""",
    "update": """
DO $loop$ BEGIN FOR i IN 1..{n} LOOP
    UPDATE public.messages SET body = 'Edited: the heating is back.', sender = 'bench-update'
    WHERE id = ('{prefix}' || lpad(to_hex(1 + (i * 7919) % {rows}), 12, '0'))::uuid;
END LOOP; END $loop$""",
}


def server_microseconds(url: str, kind: str, ids: dict[str, str]) -> float:
    """Microseconds per single-row statement, inside one transaction that is rolled back."""
    loop = _SERVER_LOOPS[kind].format(
        n=SERVER_STATEMENTS, rows=UPDATE_ROWS, prefix=ID_PREFIX, **ids
    )
    with connect(url) as conn:
        conn.execute("SELECT set_config('app.actor', 'bench:server', true)")
        started = time.perf_counter()
        conn.execute(loop.encode())
        seconds = time.perf_counter() - started
        conn.rollback()
    return seconds / SERVER_STATEMENTS * 1e6


CPU_TRANSACTIONS = 3000
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
# The pgbench statements again, one transaction each with a durable commit, from one
# connection; what is measured is the CPU time the server process serving it used (utime +
# stime from /proc), so waiting for the disk or for another tenant of the VM does not count.
_CPU_STATEMENTS = {
    "insert": "INSERT INTO public.messages (tenant_id, development_id, unit_id, sender, body) "
    "VALUES (%(tenant)s, %(development)s, %(unit)s, 'bench-single', 'The heating is off again.')",
    "update": "UPDATE public.messages SET body = 'Edited: the heating is back.', "
    "sender = 'bench-update' "
    "WHERE id = (%(prefix)s || lpad(to_hex(%(k)s::int), 12, '0'))::uuid",
}


def _process_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def server_cpu_per_transaction(url: str, kind: str, ids: dict[str, str]) -> float:
    """Microseconds of server CPU per single-row transaction (Linux, server on this machine)."""
    statement = _CPU_STATEMENTS[kind]
    with connect(url, autocommit=True) as conn:
        conn.execute("SELECT set_config('app.actor', 'bench:cpu', false)")
        pid = conn.execute("SELECT pg_backend_pid() AS pid").fetchone()["pid"]
        params = {**ids, "prefix": ID_PREFIX, "k": 1}
        conn.execute(statement, params, prepare=True)
        before = _process_cpu_seconds(pid)
        for i in range(CPU_TRANSACTIONS):
            conn.execute(statement, {**params, "k": 1 + (i * 7919) % UPDATE_ROWS}, prepare=True)
        return (_process_cpu_seconds(pid) - before) / CPU_TRANSACTIONS * 1e6


def pgbench_tps(url: str, script: Path, ids: dict[str, str], seconds: int) -> float:
    argv = [
        str(client_bin_dir(url) / "pgbench"),
        "-n",
        "-M",
        "prepared",
        "-c",
        "4",
        "-j",
        "2",
        "-T",
        str(seconds),
        "-f",
        str(script),
    ]
    for name, value in {**ids, "rows": str(UPDATE_ROWS), "prefix": ID_PREFIX}.items():
        argv += ["-D", f"{name}={value}"]
    env = dict(os.environ, PGOPTIONS="-c app.actor=bench:pgbench")
    proc = subprocess.run(argv + [url], env=env, capture_output=True, text=True, check=False)
    match = re.search(r"tps = ([0-9.]+) \(without initial connection time\)", proc.stdout)
    if proc.returncode != 0 or not match:
        raise SystemExit(f"pgbench failed:\n{proc.stdout}\n{proc.stderr}")
    failed = re.search(r"number of failed transactions: (\d+)", proc.stdout)
    if failed and int(failed.group(1)):
        raise SystemExit(f"pgbench reported failed transactions:\n{proc.stdout}")
    return float(match.group(1))


_CAPTURE_FUNCTION = re.compile(
    r"CREATE (?:OR REPLACE )?FUNCTION hardening\.audit_capture_(?:insert|update|delete)\(\)"
    r".*?\$fn\$;",
    re.DOTALL,
)


def capture_definitions(filename: str) -> str:
    """The insert/update/delete capture functions exactly as ``filename`` defines them: a
    migration (``018_capture_keys_and_claims.sql``) or ``definitions`` (what the kit runs today).

    Replayed with CREATE OR REPLACE, which keeps each function's oid, owner and grants, so the
    installed triggers run that version's bodies: two versions compared on one table.
    """
    if filename == "definitions":
        text = "\n".join(
            (DEFINITIONS_DIR / f"audit_capture_{op}.sql").read_text()
            for op in ("insert", "update", "delete")
        )
    else:
        text = (MIGRATIONS_DIR / filename).read_text()
    found = _CAPTURE_FUNCTION.findall(text)
    if len(found) != 3:
        raise SystemExit(f"{filename} does not define the three capture functions")
    return "\n".join(f.replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION", 1) for f in found)


def arm_setup(url: str, triggers: list[str], definitions: str | None) -> None:
    """None = capture off; otherwise capture on, running the given function definitions."""
    if definitions is not None:
        with connect(url) as conn:
            conn.execute(definitions.encode())
            conn.commit()
    set_audit(url, triggers, on=definitions is not None)


def rotations(arms: list[str], rounds: int) -> list[str]:
    """Each round visits every arm, forwards then backwards (ABBA), so a trend over time (the
    machine's other load, a growing audit log) is spread over the arms instead of hitting one.
    """
    order: list[str] = []
    for r in range(rounds):
        order += arms if r % 2 == 0 else arms[::-1]
    return order


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bulk-rounds", type=int, default=4, help="bulk runs per arm")
    parser.add_argument("--rounds", type=int, default=6, help="pgbench runs per arm")
    parser.add_argument("--seconds", type=int, default=4, help="pgbench -T of each run")
    parser.add_argument(
        "--compare",
        metavar="FILE",
        default="002_audit_events.sql",
        help="also measure the capture functions as this migration defined them",
    )
    add_pg_major_argument(parser)
    args = parser.parse_args()

    current = "definitions"
    arms: dict[str, str | None] = {"unaudited": None, "capture today": None}
    arms["capture today"] = capture_definitions(current)
    if args.compare and args.compare != current:
        arms[f"capture {args.compare[:3]}"] = capture_definitions(args.compare)
    names = list(arms)
    with bench_postgres(args.pg_major) as url, tempfile.TemporaryDirectory() as tmp:
        apply_migrations(url)
        ids = prepare(url)
        triggers = audit_triggers(url)
        payload = copy_payload(ids)
        scripts = {"insert": Path(tmp) / "insert.sql", "update": Path(tmp) / "update.sql"}
        scripts["insert"].write_text(INSERT_SCRIPT)
        scripts["update"].write_text(UPDATE_SCRIPT)

        bulk: dict[str, Callable[[str, dict[str, str], bytes], float]] = {
            "COPY 100k rows": bulk_copy,
            "INSERT..SELECT 100k rows": bulk_insert_select,
        }
        seconds: dict[tuple[str, str], list[float]] = {}
        for kind, fn in bulk.items():
            for arm in rotations(names, args.bulk_rounds):
                arm_setup(url, triggers, arms[arm])
                seconds.setdefault((kind, arm), []).append(fn(url, ids, payload))
                clean_bulk(url, triggers)
        tps: dict[tuple[str, str], list[float]] = {}
        for kind, script in scripts.items():
            for arm in rotations(names, args.rounds):
                arm_setup(url, triggers, arms[arm])
                tps.setdefault((kind, arm), []).append(pgbench_tps(url, script, ids, args.seconds))
        server: dict[tuple[str, str], list[float]] = {}
        for kind in _SERVER_LOOPS:
            for arm in rotations(names, args.rounds):
                arm_setup(url, triggers, arms[arm])
                server.setdefault((kind, arm), []).append(server_microseconds(url, kind, ids))
        cpu: dict[tuple[str, str], list[float]] = {}
        for kind in _CPU_STATEMENTS:
            for arm in rotations(names, args.rounds):
                arm_setup(url, triggers, arms[arm])
                cpu.setdefault((kind, arm), []).append(server_cpu_per_transaction(url, kind, ids))
        arm_setup(url, triggers, arms[names[1]])

    audited = names[1:]
    report(
        f"bulk: median seconds of {args.bulk_rounds} runs per arm, ratio to unaudited",
        seconds,
        list(bulk),
        audited,
        "",
        ".3f",
    )
    print("goal: audited at most 1.6x unaudited")
    report(
        f"single-row: pgbench -M prepared -c 4 -j 2 -T {args.seconds}, median tps of "
        f"{args.rounds} runs per arm, ratio to unaudited",
        tps,
        list(scripts),
        audited,
        " (1 row/tx)",
        ".0f",
    )
    print("goal: audited at least 0.75x unaudited throughput")
    report(
        f"single-row, inside the server: {SERVER_STATEMENTS} statements in a DO loop, median "
        f"microseconds per statement of {args.rounds} runs per arm, ratio to unaudited",
        server,
        list(_SERVER_LOOPS),
        audited,
        " (us/statement)",
        ".1f",
    )
    report(
        f"single-row, server CPU: {CPU_TRANSACTIONS} transactions (durable commits) from one "
        f"connection, median microseconds of server CPU per transaction of {args.rounds} runs "
        "per arm, ratio to unaudited",
        cpu,
        list(_CPU_STATEMENTS),
        audited,
        " (us CPU/tx)",
        ".1f",
    )
    print("throughput a CPU-bound server can reach is about 1/ratio of the unaudited one")


def report(
    title: str,
    samples: dict[tuple[str, str], list[float]],
    kinds: list[str],
    audited: list[str],
    suffix: str,
    fmt: str,
) -> None:
    """One table: the median per kind and arm, and each audited arm's ratio to unaudited."""
    print(f"\n{title}")
    print(f"{'':26} {'unaudited':>10}" + "".join(f" {a:>12} {'ratio':>6}" for a in audited))
    for kind in kinds:
        base = statistics.median(samples[(kind, "unaudited")])
        cells = ""
        for arm in audited:
            value = statistics.median(samples[(kind, arm)])
            cells += f" {value:12{fmt}} {value / base:6.2f}"
        print(f"{kind + suffix:26} {base:10{fmt}}{cells}")


if __name__ == "__main__":
    main()
