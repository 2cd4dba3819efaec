"""Names for the rows and callers of ``tests/supabase/app.sql``, and how to capture them."""

from __future__ import annotations

from typing import Any

from tests.support.behaviour import Context

TENANT_A = "aaaaaaaa-0000-4000-8000-000000000000"
TENANT_B = "bbbbbbbb-0000-4000-8000-000000000000"
ALICE = "a11ce000-0000-4000-8000-000000000000"  # admin of tenant A
VICTOR = "a2000000-0000-4000-8000-000000000000"  # viewer of tenant A
BOB = "b0b00000-0000-4000-8000-000000000000"  # admin of tenant B
DEV_A = "aaaaaaaa-0000-4000-8000-0000000000d1"
DEV_B = "bbbbbbbb-0000-4000-8000-0000000000d1"
UNIT_A = "aaaaaaaa-0000-4000-8000-0000000000c1"
UNIT_B = "bbbbbbbb-0000-4000-8000-0000000000c1"
UNIT_MISPLACED = "aaaaaaaa-0000-4000-8000-0000000000c9"
MSG_A_BY_ALICE = "aaaaaaaa-0000-4000-8000-0000000000e1"
MSG_A_BY_VICTOR = "aaaaaaaa-0000-4000-8000-0000000000e2"
MSG_B = "bbbbbbbb-0000-4000-8000-0000000000e1"
MSG_ORPHANED = "aaaaaaaa-0000-4000-8000-0000000000e8"
MSG_MISPLACED = "aaaaaaaa-0000-4000-8000-0000000000e9"
ONBOARDING_A = "aaaaaaaa-0000-4000-8000-0000000000f1"
ONBOARDING_B = "bbbbbbbb-0000-4000-8000-0000000000f1"

APP_TABLES = (
    "developments",
    "feature_flags",
    "invoices",
    "legacy_accounts",
    "memberships",
    "messages",
    "onboarding_attempts",
    "profiles",
    "tenants",
    "units",
)


def _claims(user: str, tenant: str, legacy: str | None = None) -> dict[str, Any]:
    app_metadata: dict[str, Any] = {"tenant_id": tenant}
    if legacy:
        app_metadata["legacy_account"] = legacy
    return {"sub": user, "role": "authenticated", "aud": "authenticated",
            "app_metadata": app_metadata}  # fmt: skip


CONTEXTS = (
    Context("anon", "anon", {"role": "anon"}),
    Context("viewer_a", "authenticated", _claims(VICTOR, TENANT_A, "acme-legacy-42"), VICTOR),
    Context("admin_a", "authenticated", _claims(ALICE, TENANT_A, "acme-legacy-42"), ALICE),
    Context("service_role", "service_role", {"role": "service_role"}),
    Context("postgres", None, None),
)

QUERIES = {
    "view message_counts": "SELECT * FROM public.message_counts ORDER BY 1",
    "function tenant_stats(A)": f"SELECT * FROM public.tenant_stats('{TENANT_A}')",  # noqa: S608
}


def _as_author(ctx: Context, row: dict[str, Any]) -> dict[str, Any]:
    # A member posts as themself; callers without a user post as nobody.
    return {**row, "author_id": ctx.user_id}


def _new_membership(ctx: Context, row: dict[str, Any]) -> dict[str, Any]:
    return {**row, "user_id": BOB, "tenant_id": TENANT_A}


PROBE_ROWS = {"messages": _as_author, "memberships": _new_membership}
