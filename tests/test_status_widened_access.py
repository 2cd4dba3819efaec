"""Access widened by the table owner turns status red, on the adopted Supabase app.

The owner (``postgres``, the role the app's migrations run as) widens what tenant A may read in
three ways: ``ALTER POLICY ... USING (true)``, a policy dropped and recreated as ``USING (true)``,
and a ``CREATE RULE`` that copies every insert into a table in an open schema. Each is shown
leaking first, as tenant A's admin with PostgREST's claims, then named by status:
``tenant_policies_constrain_rows`` (the stored expression trees), ``no_rules_on_tenant_tables``
(pg_rewrite) and ``tenant_isolation_probe`` (a rolled-back read as a caller of tenant A). The app's
own policies leave all three green. Every test runs on each major in ``SUPABASE_MAJORS``.
"""

from __future__ import annotations

import json

import psycopg
import pytest

from hardening_pipeline.db.migrations import apply_migrations
from hardening_pipeline.db.tenant_resolver import set_membership_resolver
from hardening_pipeline.hardening.status import run_status_check
from tests.support.supabase_app import ALICE, TENANT_A, TENANT_B
from tests.support.supabase_db import (
    apply_blocker_fixes,
    apply_status_fixes,
    apply_tenant_helper,
    supabase_server_each_major,  # noqa: F401  (fixture: this module runs on every major)
)

LINES = {"tenant_policies_constrain_rows", "no_rules_on_tenant_tables", "tenant_isolation_probe"}
ALICE_CLAIMS = json.dumps(
    {"sub": ALICE, "role": "authenticated", "aud": "authenticated",
     "app_metadata": {"tenant_id": TENANT_A}}
)  # fmt: skip


HUNDRED_B_INVOICES = (
    "INSERT INTO public.invoices (tenant_id, amount_cents) "  # noqa: S608
    f"SELECT '{TENANT_B}', g FROM generate_series(1, 100) g"
)


def red(url: str) -> dict[str, object]:
    return {line.name: line for line in run_status_check(url).red}


def as_alice(url: str, query: str) -> int:
    """How many rows of tenant B tenant A's admin reads through ``query`` (a tenant_id column)."""
    with psycopg.connect(url) as conn, conn.transaction(force_rollback=True):
        conn.execute("SELECT set_config('request.jwt.claims', %s, true)", (ALICE_CLAIMS,))
        conn.execute("SET LOCAL ROLE authenticated")
        rows = conn.execute(f"SELECT tenant_id::text FROM ({query}) q").fetchall()  # noqa: S608
    return sum(1 for (tenant,) in rows if tenant == TENANT_B)


def owner(url: str, statements: str) -> None:
    with psycopg.connect(url) as conn:
        assert (
            conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()[0]
            is False
        )
        conn.execute(statements)


@pytest.fixture
def adopted(supabase_app_url: str) -> str:
    """The app, blockers fixed, migrated, with 100 invoices of tenant B; baseline all green here."""
    apply_blocker_fixes(supabase_app_url)
    apply_migrations(supabase_app_url, applied_by="test-widened-access")
    owner(supabase_app_url, HUNDRED_B_INVOICES)
    assert not LINES & set(red(supabase_app_url))
    assert as_alice(supabase_app_url, "SELECT tenant_id FROM public.invoices") == 0
    return supabase_app_url


def test_the_apps_own_policies_are_green_in_every_fixture_state(supabase_app_url: str) -> None:
    apply_blocker_fixes(supabase_app_url)
    apply_tenant_helper(supabase_app_url)
    apply_migrations(supabase_app_url, applied_by="test-widened-access")
    assert not LINES & set(red(supabase_app_url))
    apply_status_fixes(supabase_app_url)  # the policies rewritten and split as status asked
    assert not LINES & set(red(supabase_app_url))


def test_alter_policy_using_true_turns_policies_and_probe_red(adopted: str) -> None:
    owner(adopted, 'ALTER POLICY "admins read invoices" ON public.invoices USING (true)')
    assert as_alice(adopted, "SELECT tenant_id FROM public.invoices") == 101
    lines = red(adopted)
    assert LINES - {"no_rules_on_tenant_tables"} <= set(lines)
    assert 'policy "admins read invoices" on invoices (USING (true)): SELECT by authenticated' in (
        lines["tenant_policies_constrain_rows"].detail
    )
    assert "reads 101 row(s) of other tenants in invoices" in lines["tenant_isolation_probe"].detail


def test_drop_and_recreate_as_using_true_turns_red(adopted: str) -> None:
    owner(
        adopted,
        'DROP POLICY "admins read invoices" ON public.invoices; '
        'CREATE POLICY "admins read invoices" ON public.invoices FOR SELECT TO authenticated '
        "USING (true)",
    )
    assert as_alice(adopted, "SELECT tenant_id FROM public.invoices") == 101
    lines = red(adopted)
    assert {"tenant_policies_constrain_rows", "tenant_isolation_probe"} <= set(lines)


def test_the_kits_own_policy_widened_is_named_and_its_fix_restores_it(adopted: str) -> None:
    owner(
        adopted,
        "ALTER POLICY messages_tenant_isolation ON public.messages USING (true) "
        "WITH CHECK (true); "
        'ALTER POLICY "members read messages" ON public.messages USING (true)',
    )
    assert as_alice(adopted, "SELECT tenant_id FROM public.messages") == 1
    lines = red(adopted)
    policies = lines["tenant_policies_constrain_rows"]
    assert "the kit's messages_tenant_isolation on messages: USING (true), WITH CHECK (true)" in (
        policies.detail
    )
    assert "in messages" in lines["tenant_isolation_probe"].detail
    owner(adopted, policies.fix.split(";")[0])  # SELECT hardening.use_tenant_policies(false)
    # The app's own policy stays as its owner left it; the kit's narrows it to the tenant again.
    assert as_alice(adopted, "SELECT tenant_id FROM public.messages") == 0
    assert not LINES & set(red(adopted))


def test_a_rule_copying_inserts_into_an_open_table_turns_red(adopted: str) -> None:
    owner(
        adopted,
        "CREATE SCHEMA open; "
        "CREATE TABLE open.invoice_copies (tenant_id uuid, amount_cents integer); "
        "GRANT USAGE ON SCHEMA open TO authenticated; "
        "GRANT SELECT ON open.invoice_copies TO authenticated; "
        "CREATE RULE copy_invoices AS ON INSERT TO public.invoices DO ALSO "
        "INSERT INTO open.invoice_copies VALUES (NEW.tenant_id, NEW.amount_cents)",
    )
    owner(adopted, HUNDRED_B_INVOICES)
    assert as_alice(adopted, "SELECT tenant_id FROM open.invoice_copies") == 100
    line = red(adopted)["no_rules_on_tenant_tables"]
    assert "copy_invoices ON INSERT TO public.invoices DO ALSO" in line.detail
    assert line.fix == "DROP RULE copy_invoices ON public.invoices;"
    owner(adopted, line.fix)
    assert "no_rules_on_tenant_tables" not in red(adopted)


def test_under_a_membership_resolver_the_probe_reads_as_a_real_member(adopted: str) -> None:
    set_membership_resolver(adopted, "public.memberships", "user_id", "tenant_id")
    assert not LINES & set(red(adopted))  # the first member reads their own tenant only
    owner(
        adopted,
        "ALTER POLICY messages_tenant_isolation ON public.messages USING (true); "
        'ALTER POLICY "admins read invoices" ON public.invoices USING (true)',
    )
    lines = red(adopted)
    probe = lines["tenant_isolation_probe"].detail
    assert f"authenticated of tenant {TENANT_A} reads 101 row(s) of other tenants in invoices" in (
        probe
    )
    fix = lines["tenant_policies_constrain_rows"].fix
    assert fix.startswith("SELECT hardening.use_tenant_policies(true);")
