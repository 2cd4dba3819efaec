"""``hardening migrate --plan`` on the Supabase database with the app: blockers, changes, no trace.

The plan rehearses the pending migrations in a transaction it always rolls back. It must name
each blocker with its fix, list every change to the app's existing objects, exit 1 / 0
accordingly, and leave the database exactly as it found it.
"""

from __future__ import annotations

import re

import psycopg

from hardening_pipeline.db.catalog import catalog_snapshot
from hardening_pipeline.db.migration_plan import plan_migrations
from hardening_pipeline.db.migrations import apply_migrations
from hardening_pipeline.sql_files import BASELINE_DIR
from tests.support.cli import run_hardening
from tests.support.supabase_app import APP_TABLES, MSG_ORPHANED
from tests.support.supabase_db import apply_blocker_fixes


def _state(url: str) -> tuple[dict, dict[str, int], bool]:
    """Catalog, row counts and whether the kit's schema exists: what a plan must not change."""
    with psycopg.connect(url) as conn:
        counts = {
            t: conn.execute(f"SELECT count(*) FROM public.{t}").fetchone()[0]  # noqa: S608
            for t in APP_TABLES
        }
        has_kit = conn.execute("SELECT to_regnamespace('hardening') IS NOT NULL").fetchone()[0]
        return catalog_snapshot(conn), counts, has_kit


def test_plan_names_the_legacy_rows_as_a_blocker_and_changes_nothing(supabase_app_url) -> None:
    before = _state(supabase_app_url)
    result = run_hardening("migrate", "--plan", url=supabase_app_url)
    assert result.returncode == 1, result.stdout + result.stderr
    out = result.stdout
    # A new database is planned from the baseline: the line is the baseline's, and it is right.
    where = re.search(
        r"BLOCKER 003_message_safety.sql line (\d+) of (baseline/021_baseline.sql) "
        r"\(DO \$preflight\$\):",
        out,
    )
    assert where, out
    baseline = (BASELINE_DIR.parent / where.group(2)).read_text().splitlines()
    assert baseline[int(where.group(1)) - 1].startswith("DO $preflight$")
    assert (
        f"1 orphaned message(s) whose unit, development or tenant is missing (e.g. {MSG_ORPHANED})"
        in out
    )
    assert "fix: Fix or remove these rows" in out
    assert "not planned (they run after it): 004_rls_lockdown.sql" in out
    # What the files before the blocker would do is still shown.
    assert "public.messages messages_tenant_isolation" in out
    assert result.stderr.strip().startswith("failed: 1 blocker(s) stop hardening migrate")
    assert "Traceback" not in result.stderr
    assert _state(supabase_app_url) == before
    assert before[2] is False  # the kit's own schema was never created


def test_plan_gives_fix_sql_that_clears_a_policy_blocker(supabase_app_url) -> None:
    apply_blocker_fixes(supabase_app_url)
    with psycopg.connect(supabase_app_url) as conn:
        conn.execute('ALTER POLICY "members read developments" ON public.developments TO public')
    plan = plan_migrations(supabase_app_url)
    assert [b.failure.filename for b in plan.blockers] == ["004_rls_lockdown.sql"]
    assert plan.blockers[0].fix_sql == [
        'ALTER POLICY "members read developments" ON public.developments TO authenticated;'
    ]
    with psycopg.connect(supabase_app_url) as conn:
        for statement in plan.blockers[0].fix_sql:
            conn.execute(statement)
    assert plan_migrations(supabase_app_url).ok


def test_plan_after_the_fixes_lists_every_kind_of_change(supabase_app_url) -> None:
    apply_blocker_fixes(supabase_app_url)
    before = _state(supabase_app_url)
    result = run_hardening("migrate", "--plan", url=supabase_app_url)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    for expected in (
        # On tables the app already had, the kit's tenant policies only narrow.
        "public.messages messages_tenant_isolation: RESTRICTIVE FOR ALL TO authenticated",
        # 003 replaces the app's CASCADE key (whatever its name) and says what that refuses.
        "public.messages messages_tenant_id_fkey: msg_tenant_fk (FOREIGN KEY (tenant_id) "
        "REFERENCES public.tenants(id) ON DELETE CASCADE) -> FOREIGN KEY (tenant_id) REFERENCES "
        "public.tenants(id) ON DELETE RESTRICT",
        # 011 rebuilds the keys above messages under the app's own names.
        "public.units unit_owner_fk: FOREIGN KEY (tenant_id) REFERENCES public.tenants(id) ON "
        "DELETE CASCADE -> FOREIGN KEY (tenant_id) REFERENCES public.tenants(id) ON DELETE "
        "RESTRICT",
        "DELETE on public.units: a public.units row still referenced by public.messages (unit_id) "
        "can no longer be "
        "deleted (messages_unit_id_fkey, ON DELETE RESTRICT)",
        "public.messages.unit_id: SET NOT NULL",
        "public.messages messages_audit_guard: BEFORE INSERT OR DELETE OR UPDATE OR TRUNCATE -> "
        "hardening.audit_write_guard() (ENABLE ALWAYS",
        # The app's rows predate the kit, so 012 starts in report mode and says so.
        "service_role writes on public.invoices: allowed while the database is in report mode",
        "public.invoices: FORCE ROW LEVEL SECURITY",
        "public.legacy_accounts: DELETE, INSERT, REFERENCES, SELECT, TRIGGER, TRUNCATE, UPDATE "
        "from anon",
        "anon on public.memberships: DELETE, INSERT, REFERENCES, SELECT, TRIGGER, TRUNCATE, "
        "UPDATE now raise permission denied",
        "no blockers: hardening migrate would apply cleanly",
    ):
        assert expected in out, expected
    assert "may widen access" not in out
    # Tables the kit has no business with are not touched.
    assert "feature_flags" not in out and "profiles" not in out
    assert _state(supabase_app_url) == before


def test_the_rehearsal_builds_exactly_what_migrate_builds(supabase_app_url) -> None:
    apply_blocker_fixes(supabase_app_url)
    plan = plan_migrations(supabase_app_url)
    assert plan.ok and plan.planned == plan.pending
    apply_migrations(supabase_app_url)
    with psycopg.connect(supabase_app_url) as conn:
        assert catalog_snapshot(conn) == plan.rehearsed


def test_nothing_to_plan_once_migrated(supabase_db_url) -> None:
    apply_migrations(supabase_db_url)
    result = run_hardening("migrate", "--plan", url=supabase_db_url)
    assert (result.returncode, result.stdout.strip()) == (
        0,
        "nothing to plan: every migration is applied",
    )


def test_migrate_refuses_with_the_same_blocker_report(supabase_app_url) -> None:
    result = run_hardening("migrate", url=supabase_app_url)
    assert result.returncode == 1
    assert re.search(
        r"BLOCKER 003_message_safety.sql line \d+ of baseline/021_baseline.sql "
        r"\(DO \$preflight\$\):",
        result.stdout,
    )
    assert "fix SQL:" in result.stdout
    assert result.stderr.strip().startswith(
        "failed: nothing was applied: 003_message_safety.sql would fail (messages hold legacy rows"
    )
    assert "Traceback" not in result.stderr
    # Refused before any change: 001 and 002 are not left in force on the live app.
    with psycopg.connect(supabase_app_url) as conn:
        assert conn.execute("SELECT to_regnamespace('hardening')").fetchone() == (None,)


def test_plan_on_a_new_database_as_superuser(empty_db_url) -> None:
    plan = plan_migrations(empty_db_url)
    assert plan.ok and len(plan.planned) == len(plan.pending) > 0
    # Nothing existed before 001, so 001 only creates; later files change what 001 made.
    assert {c.group for c in plan.changes if c.filename == "001_core_schema.sql"} == {
        "objects created"
    }
    assert any(c.group == "triggers attached" for c in plan.changes)
    with psycopg.connect(empty_db_url) as conn:
        assert conn.execute("SELECT to_regnamespace('hardening')").fetchone() == (None,)


def test_a_busy_table_makes_the_plan_fail_fast_with_a_retry_fix(supabase_app_url) -> None:
    apply_blocker_fixes(supabase_app_url)
    with psycopg.connect(supabase_app_url) as reader:
        # An open transaction that read messages holds a lock 001's policy changes must wait for.
        reader.execute("SELECT count(*) FROM public.messages")
        plan = plan_migrations(supabase_app_url, lock_timeout="100ms")
        reader.rollback()
    assert [b.failure.filename for b in plan.blockers] == ["001_core_schema.sql"]
    failure = plan.blockers[0].failure
    assert failure.sqlstate == "55P03"
    assert "retry off-peak" in failure.fix
    assert plan_migrations(supabase_app_url).ok


def test_plan_shows_a_replaced_foreign_key_and_the_deletes_it_refuses(empty_db_url, tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "001_app.sql").write_text(
        "CREATE TABLE public.parent (id int PRIMARY KEY);\n"
        "CREATE TABLE public.child (id int PRIMARY KEY, parent_id int CONSTRAINT child_parent_fk"
        " REFERENCES public.parent (id) ON DELETE CASCADE);\n"
    )
    apply_migrations(empty_db_url, folder)
    (folder / "002_restrict.sql").write_text(
        "ALTER TABLE public.child DROP CONSTRAINT child_parent_fk,\n"
        "    ADD CONSTRAINT child_parent_id_fkey FOREIGN KEY (parent_id)\n"
        "        REFERENCES public.parent (id) ON DELETE RESTRICT;\n"
    )
    plan = plan_migrations(empty_db_url, folder)
    found = {(c.group, c.subject, c.detail) for c in plan.changes}
    assert (
        "foreign keys replaced",
        "public.child child_parent_id_fkey",
        "child_parent_fk (FOREIGN KEY (parent_id) REFERENCES public.parent(id) ON DELETE CASCADE)"
        " -> FOREIGN KEY (parent_id) REFERENCES public.parent(id) ON DELETE RESTRICT",
    ) in found
    assert (
        "writes that will start being refused",
        "DELETE on public.parent",
        "a public.parent row still referenced by public.child (parent_id) can no longer be "
        "deleted (child_parent_id_fkey, ON DELETE RESTRICT)",
    ) in found
    with psycopg.connect(empty_db_url) as conn:  # and the rehearsal left the old key in place
        assert conn.execute(
            "SELECT conname FROM pg_constraint WHERE conrelid = 'public.child'::regclass "
            "AND contype = 'f'"
        ).fetchall() == [("child_parent_fk",)]
