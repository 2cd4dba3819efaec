"""What the app's callers can do, before and after ``hardening migrate``, on the Supabase database.

The capture (tests/support/behaviour.py) records, for anon, a viewer and an admin of tenant A
(PostgREST claims), service_role and postgres, which rows each can read, insert, update and
delete in every app table, and what the app's view and SECURITY DEFINER function return. The kit
may only narrow that, and only where it says so; the expected difference is written below as data.
Every test runs on each major in ``SUPABASE_MAJORS`` (ids ``pg15``, ``pg17``).
"""

from __future__ import annotations

import psycopg
import pytest

from hardening_pipeline.db.migration_plan import MigrationPlan, plan_migrations
from hardening_pipeline.db.migrations import apply_migrations
from tests.support.behaviour import Capture, Change, capture, diff
from tests.support.supabase_app import (
    APP_TABLES,
    CONTEXTS,
    MSG_A_BY_ALICE,
    MSG_A_BY_VICTOR,
    MSG_B,
    PROBE_ROWS,
    QUERIES,
    TENANT_A,
    TENANT_B,
    UNIT_A,
    UNIT_B,
    UNIT_MISPLACED,
)
from tests.support.supabase_db import (
    apply_blocker_fixes,
    supabase_server_each_major,  # noqa: F401  (fixture: this module runs on every major)
)

# Tables the kit treats as tenant-scoped: they have a tenant_id column, or are the tenants.
TENANT_TABLES = {
    "developments", "invoices", "legacy_accounts", "memberships", "messages",
    "onboarding_attempts", "tenants", "units",
}  # fmt: skip
WRITES = ("insert", "update", "delete")
UNITS_WITH_MESSAGES = {UNIT_A, UNIT_B, UNIT_MISPLACED}


# The expected difference, as data: (contexts, tables, actions, rows, outcome after, why).
# "*" means any; rows None means every row (and the table-wide probes). A probe matching no line
# must come out of the kit exactly as it went in: no caller gains a row or a write, and every
# other write keeps working. service_role keeps writing: 012 starts a database whose rows predate
# the kit in report mode (audited as service_role:unattributed), until the team switches to enforce.
EXPECTED_CHANGES = (
    ("anon", TENANT_TABLES, ("select", *WRITES), None, "error:42501",
     "004 revokes every privilege anon had on tenant tables"),
    ("*", {"units"}, ("delete",), UNITS_WITH_MESSAGES, "error:23503",
     "003's ON DELETE RESTRICT key from messages.unit_id (the app had none): a unit that still "
     "has messages can no longer be deleted by whoever could delete it before"),
)  # fmt: skip


def expected_after(before: Capture) -> Capture:
    """The capture ``before`` with EXPECTED_CHANGES applied."""
    after = dict(before)
    for key, outcome in before.items():
        parts = key.split(" ")
        if len(parts) < 3:
            continue
        ctx, table, action = parts[:3]
        row = parts[3] if len(parts) > 3 else None
        for contexts, tables, actions, rows, result, _why in EXPECTED_CHANGES:
            if contexts not in ("*", ctx) or table not in tables or action not in actions:
                continue
            if rows is not None and (row not in rows or outcome != "ok"):
                continue  # a row-specific refusal only changes a write that used to succeed
            after[key] = result
            break
    return after


def _capture(url: str) -> Capture:
    return capture(url, CONTEXTS, tables=APP_TABLES, queries=QUERIES, probe_rows=PROBE_ROWS)


@pytest.fixture
def adopted(supabase_app_url: str) -> tuple[Capture, Capture]:
    """The app with its blockers fixed, captured before and after ``hardening migrate``."""
    apply_blocker_fixes(supabase_app_url)
    before = _capture(supabase_app_url)
    apply_migrations(supabase_app_url, applied_by="test-behaviour")
    return before, _capture(supabase_app_url)


def _announced(change: Change, plan: MigrationPlan) -> bool:
    """Whether the plan's "writes that will start being refused" names this refusal."""
    ctx, table = change.key.split(" ")[:2]
    subjects = {
        c.subject for c in plan.changes if c.group == "writes that will start being refused"
    }
    if change.after == "error:42501" and ctx == "anon":
        return f"anon on public.{table}" in subjects
    if change.after == "error:42501" and ctx == "service_role":
        return f"service_role writes on public.{table}" in subjects
    if change.after == "error:23503":
        return f"DELETE on public.{table}" in subjects
    return False


def test_every_refusal_the_capture_sees_is_announced_by_the_plan(supabase_app_url: str) -> None:
    apply_blocker_fixes(supabase_app_url)
    plan = plan_migrations(supabase_app_url)
    before = _capture(supabase_app_url)
    apply_migrations(supabase_app_url, applied_by="test-behaviour")
    refusals = [
        c
        for c in diff(before, _capture(supabase_app_url))
        if str(c.after).startswith("error:") and not str(c.before).startswith("error:")
    ]
    assert refusals  # the kit does refuse things; each must be on the plan
    assert [c for c in refusals if not _announced(c, plan)] == []


def _counts(url: str) -> dict[str, int]:
    with psycopg.connect(url) as conn:
        return {
            t: conn.execute(f"SELECT count(*) FROM public.{t}").fetchone()[0]  # noqa: S608
            for t in APP_TABLES
        }


def test_capture_changes_nothing_and_repeats_exactly(supabase_app_url: str) -> None:
    counts = _counts(supabase_app_url)
    first = _capture(supabase_app_url)
    assert _counts(supabase_app_url) == counts
    assert _capture(supabase_app_url) == first
    assert diff(first, first) == []


def test_the_app_behaves_as_its_policies_say(supabase_app_url: str) -> None:
    apply_blocker_fixes(supabase_app_url)
    c = _capture(supabase_app_url)
    tenant_a_messages = sorted(m for m in c["postgres messages select"] if m.startswith("aaaa"))
    # A viewer reads the tenant's messages, edits their own, not a colleague's or another tenant's.
    assert c["viewer_a messages select"] == tenant_a_messages
    assert c[f"viewer_a messages update {MSG_A_BY_VICTOR}"] == "ok"
    assert c[f"viewer_a messages update {MSG_A_BY_ALICE}"] == "none"
    assert c[f"viewer_a messages delete {MSG_A_BY_ALICE}"] == "none"
    assert c[f"viewer_a messages update {MSG_B}"] == "none"
    # An admin edits any message of the tenant, none of tenant B's.
    assert c[f"admin_a messages delete {MSG_A_BY_VICTOR}"] == "ok"
    assert c[f"admin_a messages delete {MSG_B}"] == "none"
    assert c["viewer_a invoices select"] == [] and c["admin_a invoices select"] == ["1"]
    assert c["viewer_a legacy_accounts select"] == ["1"]  # by the JWT's legacy_account claim
    assert c["anon messages select"] == []
    assert c[f"service_role messages update {MSG_B}"] == "ok"
    # The app's own leaks, which the kit's status check must name but not silently change:
    # the view runs as its owner and the SECURITY DEFINER function trusts its argument.
    assert c["anon view message_counts"] == [[TENANT_A, "3"], [TENANT_B, "1"]]
    assert c["anon function tenant_stats(A)"] == [["1", "2", "3"]]


def test_capture_catches_a_widening(supabase_app_url: str) -> None:
    apply_blocker_fixes(supabase_app_url)
    before = _capture(supabase_app_url)
    with psycopg.connect(supabase_app_url) as conn:
        conn.execute(
            "CREATE POLICY too_wide ON public.messages FOR UPDATE TO authenticated USING (true)"
        )
    changes = diff(before, _capture(supabase_app_url))
    assert Change(f"viewer_a messages update {MSG_A_BY_ALICE}", "none", "ok") in changes
    # Another tenant's row stays out of reach: UPDATE also needs the row to be readable.
    assert f"viewer_a messages update {MSG_B}" not in {c.key for c in changes}


def _widenings(changes: list[Change]) -> list[Change]:
    def grants_more(c: Change) -> bool:
        if isinstance(c.before, list) and isinstance(c.after, list):
            return not set(map(str, c.after)) <= set(map(str, c.before))
        return c.after == "ok" and c.before != "ok"

    return [c for c in changes if grants_more(c)]


def test_the_kit_never_widens_access(adopted: tuple[Capture, Capture]) -> None:
    before, after = adopted
    assert _widenings(diff(before, after)) == []


def test_writes_keep_working_unless_the_plan_says_so(adopted: tuple[Capture, Capture]) -> None:
    before, after = adopted
    expected = expected_after(before)
    newly_refused = [
        c
        for c in diff(before, after)
        if c.before in ("ok", "none") and str(c.after).startswith("error:")
        and expected.get(c.key) != c.after
    ]  # fmt: skip
    assert newly_refused == []


def test_behaviour_differs_exactly_as_expected(adopted: tuple[Capture, Capture]) -> None:
    before, after = adopted
    assert diff(before, after) == diff(before, expected_after(before))


def test_what_the_kit_narrows_today_is_what_is_expected(adopted: tuple[Capture, Capture]) -> None:
    # The expected narrowings all happen already; what is left over is only the known issues.
    before, after = adopted
    expected = expected_after(before)
    missing = [k for k in expected if expected[k] != before[k] and after[k] != expected[k]]
    assert missing == []
