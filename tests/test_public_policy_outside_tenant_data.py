"""A public read policy on a table without tenant data does not block 004 and stays the app's.

Supabase's own template gives ``profiles`` the policy "Public profiles are viewable by
everyone." (``FOR SELECT USING (true)``, no ``TO``: PUBLIC, anon included). ``profiles`` has no
tenant column, so 004 has nothing to lock down there: the plan is clean, ``migrate`` applies as
the non-superuser ``postgres``, anon still reads profiles afterwards, the policy is exactly as it
was, and the status line on anon/PUBLIC policies stays green. A PUBLIC policy on tenant data still
blocks, and the fix SQL names only that one.
"""

from __future__ import annotations

import psycopg

from hardening_pipeline.db.connection import connect
from hardening_pipeline.db.migration_plan import plan_migrations
from hardening_pipeline.db.migrations import apply_migrations
from hardening_pipeline.hardening.status import run_checks, run_status_check
from tests.support.cli import run_hardening
from tests.support.supabase_db import apply_blocker_fixes

PUBLIC_PROFILES = (
    'CREATE POLICY "Public profiles are viewable by everyone." ON public.profiles '
    "FOR SELECT USING (true)"
)
_POLICY_ROW = (
    "SELECT roles::text[], cmd, qual, permissive FROM pg_policies "
    "WHERE tablename = 'profiles' AND policyname = 'Public profiles are viewable by everyone.'"
)


def _anon_reads_profiles(url: str) -> int:
    with psycopg.connect(url) as conn:
        conn.execute("SET ROLE anon")
        return conn.execute("SELECT count(*) FROM public.profiles").fetchone()[0]


def test_a_public_profiles_policy_does_not_block_004_and_anon_keeps_its_reads(
    supabase_app_url,
) -> None:
    apply_blocker_fixes(supabase_app_url)
    with psycopg.connect(supabase_app_url) as conn:
        conn.execute(PUBLIC_PROFILES)
        policy_before = conn.execute(_POLICY_ROW).fetchone()
    assert _anon_reads_profiles(supabase_app_url) == 3

    plan = plan_migrations(supabase_app_url)
    assert plan.ok, [b.failure.message for b in plan.blockers]
    assert not [c for c in plan.changes if "profiles" in c.subject and "polic" in c.group]

    result = run_hardening("migrate", url=supabase_app_url)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    with psycopg.connect(supabase_app_url) as conn:
        assert conn.execute(_POLICY_ROW).fetchone() == policy_before
        assert conn.execute(
            "SELECT count(*) FROM hardening.schema_migrations WHERE filename = %s",
            ("004_rls_lockdown.sql",),
        ).fetchone() == (1,)
    assert _anon_reads_profiles(supabase_app_url) == 3

    with connect(supabase_app_url) as conn:
        [line] = run_checks(conn, names=["no_anon_or_public_policies"])
    assert line.passed, line.detail
    # No status line at all turns red for it: the red lines are the same without the policy.
    red_with = {x.name: x.detail for x in run_status_check(supabase_app_url).red}
    with psycopg.connect(supabase_app_url) as conn:
        conn.execute('DROP POLICY "Public profiles are viewable by everyone." ON public.profiles')
    assert {x.name: x.detail for x in run_status_check(supabase_app_url).red} == red_with


def test_a_public_policy_on_tenant_data_still_blocks_and_only_it_is_named(
    supabase_app_url,
) -> None:
    apply_blocker_fixes(supabase_app_url)
    with psycopg.connect(supabase_app_url) as conn:
        conn.execute(PUBLIC_PROFILES)
        conn.execute('ALTER POLICY "members read developments" ON public.developments TO public')
    plan = plan_migrations(supabase_app_url)
    assert [b.failure.filename for b in plan.blockers] == ["004_rls_lockdown.sql"]
    message = plan.blockers[0].failure.message
    assert "members read developments" in message and "profiles" not in message
    assert plan.blockers[0].fix_sql == [
        'ALTER POLICY "members read developments" ON public.developments TO authenticated;'
    ]
    with psycopg.connect(supabase_app_url) as conn:
        conn.execute(plan.blockers[0].fix_sql[0])
    assert plan_migrations(supabase_app_url).ok


def test_as_a_superuser_on_a_plain_database_the_policy_survives_too(empty_db_url) -> None:
    with psycopg.connect(empty_db_url) as conn:
        conn.execute(
            "CREATE TABLE public.profiles (id uuid PRIMARY KEY, display_name text NOT NULL);"
            "ALTER TABLE public.profiles ENABLE ROW LEVEL SECURITY"
        )
        conn.execute(PUBLIC_PROFILES)
    apply_migrations(empty_db_url)
    with psycopg.connect(empty_db_url) as conn:
        assert conn.execute(_POLICY_ROW).fetchone() == (["public"], "SELECT", "true", "PERMISSIVE")


def test_a_busy_public_table_is_a_blocker_with_its_fix_not_a_crash(supabase_app_url) -> None:
    apply_blocker_fixes(supabase_app_url)
    with psycopg.connect(supabase_app_url) as conn:
        conn.execute(PUBLIC_PROFILES)
    with psycopg.connect(supabase_app_url) as reader:
        reader.execute("SELECT count(*) FROM public.profiles").fetchone()  # holds ACCESS SHARE
        plan = plan_migrations(supabase_app_url, lock_timeout="200ms")
        [blocker] = plan.blockers
        assert blocker.failure.sqlstate == "55P03", blocker.failure
        assert blocker.failure.filename == "004_rls_lockdown.sql", blocker.failure
    with psycopg.connect(supabase_app_url) as conn:
        assert conn.execute(_POLICY_ROW).fetchone()[0] == ["public"]
