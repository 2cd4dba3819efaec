"""003's blocker prints SQL that lists exactly the rows its report counts and names.

On the Supabase-faithful app the report names an orphaned message, a misplaced unit (tenant A's
unit in tenant B's development) and the message in that unit. The fix SQL, run as ``postgres``,
must return those rows and no others, under the report's own words, with the report's counts.
"""

from __future__ import annotations

import re
from collections import Counter

import psycopg

from hardening_pipeline.db.migration_plan import plan_migrations
from tests.support.cli import run_hardening
from tests.support.supabase_app import MSG_MISPLACED, MSG_ORPHANED, UNIT_MISPLACED

_REPORT_LINE = re.compile(r"^\s*(\d+) (.+) \(e\.g\. ([^)]*)\)$")


def _run_fix_sql(url: str, fix_sql: list[str]) -> list[tuple]:
    with psycopg.connect(url) as conn:
        return conn.execute("\n".join(fix_sql)).fetchall()


def test_the_fix_sql_returns_exactly_the_rows_003_reports(supabase_app_url) -> None:
    plan = plan_migrations(supabase_app_url)
    [blocker] = plan.blockers
    assert blocker.failure.filename == "003_message_safety.sql"
    reported = {}
    for line in blocker.failure.message.splitlines()[1:]:
        count, problem, sample = _REPORT_LINE.match(line).groups()
        reported[problem] = (int(count), set(sample.split(", ")))
    assert reported, blocker.failure.message

    rows = _run_fix_sql(supabase_app_url, blocker.fix_sql)
    assert Counter(problem for problem, *_ in rows) == {p: n for p, (n, _) in reported.items()}
    for problem, (_, sample) in reported.items():
        assert sample <= {row[2] for row in rows if row[0] == problem}, (problem, rows)
    assert {(row[1], row[2]) for row in rows} == {
        ("messages", MSG_ORPHANED),
        ("units", UNIT_MISPLACED),
        ("messages", MSG_MISPLACED),
    }


def test_the_printed_fix_sql_runs_as_printed_and_changes_nothing(supabase_app_url) -> None:
    result = run_hardening("migrate", "--plan", url=supabase_app_url)
    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    start = lines.index("  fix SQL:") + 1
    printed = []
    for line in lines[start:]:
        if not line.startswith("    "):
            break
        printed.append(line[4:])
    rows = _run_fix_sql(supabase_app_url, printed)
    assert {row[2] for row in rows} == {MSG_ORPHANED, UNIT_MISPLACED, MSG_MISPLACED}
    assert plan_migrations(supabase_app_url).blockers[0].failure.filename == (
        "003_message_safety.sql"
    )
