"""Every fix SQL ``hardening status`` prints, pasted into the adopted Supabase app as ``postgres``,
closes what its line names and nothing the app legitimately does.

The app (tests/supabase/app.sql, its blocker fixes and app_tenant_helper.sql: messages policies
calling a SECURITY DEFINER helper) is migrated, its behaviour captured (tests/support/behaviour.py),
then each red line's printed statements are applied, in report order, until status prints no new
ones. Fixes written as instructions (with ``<placeholders>``) and the CLI step of
``service_role_rule_enforced`` are not SQL to paste and are left out. The capture afterwards may
differ only where a fix closed a leak the line named. Every test runs on each major in
``SUPABASE_MAJORS`` (ids ``pg15``, ``pg17``).
"""

from __future__ import annotations

import re

import psycopg
import pytest

from hardening_pipeline.db.migrations import apply_migrations
from hardening_pipeline.hardening.status import run_status_check
from tests.support.behaviour import Capture, capture, diff
from tests.support.supabase_app import APP_TABLES, CONTEXTS, PROBE_ROWS, QUERIES, TENANT_A
from tests.support.supabase_db import (
    apply_blocker_fixes,
    apply_tenant_helper,
    supabase_server_each_major,  # noqa: F401  (fixture: this module runs on every major)
)

_STATEMENT = re.compile(r"\b(?:REVOKE|GRANT|ALTER|CREATE|DROP)\b[^;]*;")
SIGNED_IN = ("viewer_a", "admin_a")

# (capture keys, outcome after, why): the leaks the fixes close. Nothing else may change.
EXPECTED_CHANGES = (
    (["anon view message_counts"], "error:42501",
     "api_roles_reach_no_tenant_data: anon loses the view over every tenant's messages"),
    ([f"{c} view message_counts" for c in SIGNED_IN], [[TENANT_A, "3"]],
     "tenant_views_security_invoker: the view runs as the caller, so their tenant policies apply"),
    ([f"{c} function tenant_stats(A)" for c in ("anon", *SIGNED_IN)], "error:42501",
     "0028/0029: the SECURITY DEFINER function that trusts its argument is revoked"),
)  # fmt: skip


def printed_statements(fix: str) -> list[str]:
    """The SQL statements a fix prints for pasting (not instructions with placeholders)."""
    return [s for s in _STATEMENT.findall(fix) if "<" not in s]


def _capture(url: str) -> Capture:
    return capture(url, CONTEXTS, tables=APP_TABLES, queries=QUERIES, probe_rows=PROBE_ROWS)


def apply_every_printed_fix(url: str) -> list[str]:
    """Paste each red line's statements as postgres, report by report, until none are new."""
    applied: list[str] = []
    for _ in range(4):
        statements = [s for line in run_status_check(url).red for s in printed_statements(line.fix)]
        if not statements:
            return applied
        with psycopg.connect(url) as conn:
            for statement in statements:
                conn.execute(statement)
        applied += statements
    raise AssertionError(f"status still prints new fixes after four rounds: {statements}")


@pytest.fixture
def helper_app(supabase_app_url: str) -> str:
    apply_blocker_fixes(supabase_app_url)
    apply_tenant_helper(supabase_app_url)
    apply_migrations(supabase_app_url, applied_by="test-status-fixes")
    return supabase_app_url


def test_every_printed_fix_keeps_the_apps_legitimate_behaviour(helper_app: str) -> None:
    before = _capture(helper_app)
    assert before["viewer_a messages select"]  # the helper-based policy lets members read
    applied = apply_every_printed_fix(helper_app)
    assert applied
    after = _capture(helper_app)
    expected = dict(before)
    for keys, outcome, _why in EXPECTED_CHANGES:
        expected.update(dict.fromkeys(keys, outcome))
    assert diff(expected, after) == []
    # What is left red has no SQL to paste: the rollout step and the policy rewrites.
    assert {line.name for line in run_status_check(helper_app).red} <= {
        "service_role_rule_enforced",
        "auth_rls_initplan",
        "multiple_permissive_policies",
    }


def test_a_helper_the_policies_call_is_moved_not_revoked(helper_app: str) -> None:
    red = {line.name: line for line in run_status_check(helper_app).red}
    anon = red["anon_security_definer_function_executable"]
    signed_in = red["authenticated_security_definer_function_executable"]
    helper = '"public"."user_tenant_ids"()'
    # Only authenticated's policies call it: anon loses it, authenticated keeps it explicitly.
    assert (
        f"REVOKE EXECUTE ON FUNCTION {helper} FROM PUBLIC, anon; "
        f"GRANT EXECUTE ON FUNCTION {helper} TO authenticated, service_role;"
    ) in anon.fix
    # authenticated needs it for its policies: no REVOKE, a move out of the API's reach.
    assert f"REVOKE EXECUTE ON FUNCTION {helper}" not in signed_in.fix
    assert f'ALTER FUNCTION {helper} SET SCHEMA "private";' in signed_in.fix
    assert 'policy "members read messages" on messages (to authenticated)' in signed_in.detail
    assert "revoking it would break them" in signed_in.detail, signed_in.detail
