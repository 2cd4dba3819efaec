"""``hardening migrate --tenant-resolver``: no window in which signed-in users see no rows.

011 starts with the claim resolver. On the Supabase-faithful app, whose tokens carry a ``sub``
and whose policies read ``public.memberships``, a signed-in user then sees no tenant rows until
``hardening tenant-resolver`` runs. ``migrate`` takes the resolver with the words that command
takes and sets it in the same run; without it, the plan and ``migrate`` say what the default does.
Bad words are refused (exit 2) before anything is applied. As the non-superuser ``postgres``.
"""

from __future__ import annotations

import json

import psycopg

from tests.support.cli import run_hardening
from tests.support.supabase_app import ALICE, TENANT_A
from tests.support.supabase_db import apply_blocker_fixes

MEMBERSHIP = "membership public.memberships user_id tenant_id"
NO_ROWS_NOTE = "sees no rows in the tenant tables"


def _tenants_alice_sees(url: str) -> set[str]:
    """What a PostgREST request with Alice's token (a sub, no tenant claim) reads of messages."""
    claims = json.dumps({"sub": ALICE, "role": "authenticated", "aud": "authenticated"})
    with psycopg.connect(url) as conn, conn.transaction(force_rollback=True):
        conn.execute("SELECT set_config('request.jwt.claims', %s, true)", (claims,))
        conn.execute("SET LOCAL ROLE authenticated")
        rows = conn.execute("SELECT DISTINCT tenant_id::text FROM public.messages").fetchall()
    return {tenant for (tenant,) in rows}


def _kit_installed(url: str) -> bool:
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT to_regnamespace('hardening') IS NOT NULL").fetchone()[0]


def test_migrate_sets_the_membership_resolver_in_the_same_run(supabase_app_url) -> None:
    apply_blocker_fixes(supabase_app_url)
    planned = run_hardening("migrate", "--plan", "--tenant-resolver", MEMBERSHIP,
                            url=supabase_app_url)  # fmt: skip
    assert planned.returncode == 0, planned.stdout + planned.stderr
    assert f"tenant resolver: set to {MEMBERSHIP} right after the migrations" in planned.stdout

    result = run_hardening("migrate", "--tenant-resolver", MEMBERSHIP, url=supabase_app_url)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "tenant resolver: membership public.memberships (user_id = JWT sub" in result.stdout
    assert NO_ROWS_NOTE not in result.stdout
    assert _tenants_alice_sees(supabase_app_url) == {TENANT_A}


def test_without_it_the_plan_and_migrate_say_a_sub_alone_sees_nothing(supabase_app_url) -> None:
    apply_blocker_fixes(supabase_app_url)
    planned = run_hardening("migrate", "--plan", url=supabase_app_url)
    assert planned.returncode == 0, planned.stdout + planned.stderr
    assert NO_ROWS_NOTE in " ".join(planned.stdout.split())
    assert "--tenant-resolver" in planned.stdout

    result = run_hardening("migrate", url=supabase_app_url)
    assert result.returncode == 0, result.stdout + result.stderr
    assert NO_ROWS_NOTE in " ".join(result.stdout.split())
    assert _tenants_alice_sees(supabase_app_url) == set()


def test_bad_resolver_words_are_refused_before_anything_is_applied(supabase_app_url) -> None:
    apply_blocker_fixes(supabase_app_url)
    for words in ("membership public.memberships user_id", "claims tenant_id", "claim a..b",
                  "claim 'unclosed"):  # fmt: skip
        result = run_hardening("migrate", "--tenant-resolver", words, url=supabase_app_url)
        assert result.returncode == 2, (words, result.stdout, result.stderr)
        assert "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not _kit_installed(supabase_app_url)
