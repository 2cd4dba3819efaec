"""Status lines on row-level security and Supabase's RLS lints (splinter): RLS on and forced,
policies where RLS is off, per-row auth calls, overlapping permissive policies.
"""

from __future__ import annotations

import re

import psycopg

from hardening_pipeline.hardening.status.catalog import (
    SCHEMA,
    all_policies,
    listed,
    locked_tables,
    oids,
    table_row_security,
)
from hardening_pipeline.hardening.status.model import CheckContext, check


@check(
    "rls_tenant_tables", "RLS enabled and forced on every tenant-scoped table (found, not listed)"
)
def check_rls_tenant(conn: psycopg.Connection, ctx: CheckContext) -> tuple[bool, str, str]:
    locked = {t.oid: t for t in locked_tables(conn)}
    rows = [r | {"table": locked[r["oid"]]} for r in table_row_security(conn) if r["oid"] in locked]
    problems = []
    for r in rows:
        if not r["relrowsecurity"]:
            problems.append(
                f"{r['table'].display}: RLS disabled"
                + (" (its policies are not enforced)" if r["has_policy"] else "")
            )
        elif not r["relforcerowsecurity"]:
            problems.append(f"{r['table'].display}: RLS not forced (the owner bypasses it)")
    if not problems:
        return True, f"{len(rows)} tables: {listed([r['table'].display for r in rows])}", ""
    # Name each table, so the fix can be pasted as it is.
    statements = [
        f"ALTER TABLE {r['table'].quoted} {what} ROW LEVEL SECURITY;"
        for r in rows
        for what, missing in (
            ("ENABLE", not r["relrowsecurity"]),
            ("FORCE", not r["relforcerowsecurity"]),
        )
        if missing
    ]
    fix = " ".join(statements) + " and keep a tenant_isolation policy TO authenticated (see 001)."
    return False, "; ".join(problems), fix


@check("rls_disabled_in_public", "splinter rls_disabled_in_public: other public tables have RLS")
def check_rls_public(conn: psycopg.Connection, ctx: CheckContext) -> tuple[bool, str, str]:
    locked = set(oids(locked_tables(conn)))
    bad = [
        r["relname"]
        for r in table_row_security(conn)
        if r["nspname"] == SCHEMA and r["oid"] not in locked and not r["relrowsecurity"]
    ]
    if not bad:
        return True, "no table in public without RLS", ""
    fix = (
        "public is what PostgREST exposes: "
        + " ".join(f"ALTER TABLE public.{name} ENABLE ROW LEVEL SECURITY;" for name in bad)
        + " and add policies, or move the table to a private schema."
    )
    return False, f"RLS disabled on {listed(bad)}", fix


@check(
    "policy_exists_rls_disabled",
    "splinter policy_exists_rls_disabled: no policies on a table with RLS off (other schemas)",
)
def check_policy_rls_off(conn: psycopg.Connection, ctx: CheckContext) -> tuple[bool, str, str]:
    # Tenant tables and the rest of public are covered by the two lines above, which name this
    # case in their detail.
    locked = set(oids(locked_tables(conn)))
    bad = [
        f"{r['nspname']}.{r['relname']}"
        for r in table_row_security(conn)
        if r["nspname"] != SCHEMA
        and r["oid"] not in locked
        and r["has_policy"]
        and not r["relrowsecurity"]
    ]
    if not bad:
        return True, "every table with policies has RLS on", ""
    fix = (
        " ".join(f"ALTER TABLE {name} ENABLE ROW LEVEL SECURITY;" for name in bad)
        + " (or drop the unused policies)."
    )
    return False, f"policies exist but RLS is off on {listed(bad)}", fix


@check(
    "rls_enabled_no_policy",
    "splinter rls_enabled_no_policy: API-facing tables with RLS on have a policy",
)
def check_rls_no_policy(conn: psycopg.Connection, ctx: CheckContext) -> tuple[bool, str, str]:
    bad = [
        f"{r['nspname']}.{r['relname']}"
        for r in table_row_security(conn)
        if r["relrowsecurity"] and not r["has_policy"] and r["api_facing"]
    ]
    if not bad:
        return True, "every API-facing table with RLS has a policy", ""
    fix = (
        "RLS with no policy denies every row to authenticated: add the intended policy, or "
        "REVOKE the grants if the table is not meant for the API."
    )
    return False, f"RLS on but no policy: {listed(bad)}", fix


@check("no_anon_or_public_policies", "no policy on tenant data applies to anon or PUBLIC")
def check_anon_policies(conn: psycopg.Connection, ctx: CheckContext) -> tuple[bool, str, str]:
    # A public read policy on a table without tenant data (profiles, say) is the app's intent.
    tenant_data = {
        (r["nspname"], r["relname"]) for r in table_row_security(conn) if r["tenant_scoped"]
    }
    tenant_data.add(("public", "tenants"))
    bad = [
        f"{p['polname']} on {p['nspname']}.{p['relname']} (to {', '.join(p['roles'])})"
        for p in all_policies(conn)
        if {"anon", "PUBLIC"} & set(p["roles"]) and (p["nspname"], p["relname"]) in tenant_data
    ]
    if not bad:
        return True, "policies on tenant data name authenticated or internal roles only", ""
    fix = "DROP POLICY <name> ON <table>; recreate it TO authenticated if it is needed."
    return False, listed(bad), fix


_POLICY_CALLS = re.compile(
    r"\b(current_setting|auth\.(?:uid|jwt|role|email)|hardening\.current_tenant_ids?)\s*\(",
    re.IGNORECASE,
)


def _strip_subselects(expr: str) -> str:
    """Remove every ``(SELECT ...)`` subquery, so what is left is evaluated once per row."""
    out, i = [], 0
    while i < len(expr):
        if expr[i] == "(" and re.match(r"\(\s*SELECT\b", expr[i:], re.IGNORECASE):
            depth = 0
            while i < len(expr):
                depth += {"(": 1, ")": -1}.get(expr[i], 0)
                i += 1
                if depth == 0:
                    break
            out.append("(subquery)")
            continue
        out.append(expr[i])
        i += 1
    return "".join(out)


def per_row_calls(expr: str | None) -> list[str]:
    """Function calls in a policy expression that Postgres re-evaluates for every row."""
    if not expr:
        return []
    return sorted({m.group(1) for m in _POLICY_CALLS.finditer(_strip_subselects(expr))})


def per_row_call_texts(expr: str | None) -> list[str]:
    """The per-row calls as written, arguments included: what a fix must wrap unchanged."""
    if not expr:
        return []
    rest = _strip_subselects(expr)
    texts = set()
    for m in _POLICY_CALLS.finditer(rest):
        depth, end = 0, m.end() - 1  # at the call's opening parenthesis
        while end < len(rest):
            depth += {"(": 1, ")": -1}.get(rest[end], 0)
            end += 1
            if depth == 0:
                break
        texts.add(rest[m.start() : end])
    return sorted(texts)


@check(
    "auth_rls_initplan",
    "splinter auth_rls_initplan: policies call current_setting/auth functions via (select ...)",
)
def check_initplan(conn: psycopg.Connection, ctx: CheckContext) -> tuple[bool, str, str]:
    bad, texts = [], set()
    for p in all_policies(conn):
        calls = per_row_calls(p["qual"]) + per_row_calls(p["with_check"])
        if calls:
            bad.append(f"{p['polname']} on {p['relname']} calls {', '.join(sorted(set(calls)))}")
            texts.update(per_row_call_texts(p["qual"]) + per_row_call_texts(p["with_check"]))
    if not bad:
        return True, "tenant lookups run once per statement", ""
    wraps = "; ".join(f"{t} as (SELECT {t})" for t in sorted(texts))
    fix = (
        f"wrap each call in its policy, unchanged, in a subquery: {wraps}; it then runs once per "
        "statement (an initplan), not once per row; recreate the policy in a new migration."
    )
    return False, listed(bad), fix


@check(
    "multiple_permissive_policies",
    "splinter multiple_permissive_policies: one permissive policy per table, role and action",
)
def check_permissive(conn: psycopg.Connection, ctx: CheckContext) -> tuple[bool, str, str]:
    actions = {"r": ["SELECT"], "a": ["INSERT"], "w": ["UPDATE"], "d": ["DELETE"]}
    every = ["SELECT", "INSERT", "UPDATE", "DELETE"]
    seen: dict[tuple[str, str, str], list[str]] = {}
    for p in all_policies(conn):
        if not p["polpermissive"]:
            continue
        for role in p["roles"]:
            for action in actions.get(p["polcmd"], every):
                key = (f"{p['nspname']}.{p['relname']}", role, action)
                seen.setdefault(key, []).append(p["polname"])
    bad = [
        f"{table} {role} {action}: {', '.join(names)}"
        for (table, role, action), names in sorted(seen.items())
        if len(names) > 1
    ]
    if not bad:
        return True, "no overlapping permissive policies", ""
    fix = (
        "merge the policies into one (permissive policies are OR-ed, each evaluated per row), "
        "or make the extra one AS RESTRICTIVE if it is meant to narrow access."
    )
    return False, listed(bad, 5), fix
