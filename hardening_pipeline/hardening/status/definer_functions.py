"""Status lines for splinter 0028/0029: SECURITY DEFINER functions anon or authenticated can
call, each with a fix that keeps the function's users working.
"""

from __future__ import annotations

import psycopg
from psycopg import sql

from hardening_pipeline.db.tenant_tables import SYSTEM_SCHEMAS
from hardening_pipeline.hardening.status.catalog import (
    API_ROLES,
    listed,
    query_rows,
    require_api_roles,
)
from hardening_pipeline.hardening.status.model import CheckContext, check

# Roles a REVOKE ... FROM PUBLIC could take EXECUTE from besides the one the line is about.
_FIX_KEEPS = ("service_role",)
# A schema the API roles cannot use: PostgREST only calls functions in schemas they may use, while
# policies, views and defaults call functions by OID, so moving one there keeps them working.
_PRIVATE_SCHEMA_NAMES = ("private", "app_private", "private_functions")


def _private_schema(conn: psycopg.Connection) -> tuple[str, bool]:
    """The first candidate schema the API roles cannot use, and whether it exists already."""
    rows = query_rows(
        conn,
        "private_schema_candidates",
        {"names": list(_PRIVATE_SCHEMA_NAMES), "roles": list(API_ROLES)},
    )
    usable = [r for r in rows if not r["api_usable"]]
    chosen = usable[0] if usable else rows[-1]
    return chosen["name"], chosen["present"]


def _definer_function_fix(
    conn: psycopg.Connection, role: str, fn: dict, users: list[dict], private: tuple[str, bool]
) -> tuple[str, str]:
    """The fix for one function and what the detail must add: never one that breaks its users."""
    name = f"{sql.Identifier(fn['nspname'], fn['proname']).as_string(conn)}({fn['args']})"
    needed_by = sorted({r for u in users for r in u["needed_by"]})
    if role not in needed_by:
        # Revoking from PUBLIC also takes EXECUTE from roles holding it only through PUBLIC:
        # the ones its users need, and the server side's, get it back explicitly.
        keep = [
            r
            for r in dict.fromkeys([*needed_by, *_FIX_KEEPS])
            if r != role and query_rows(conn, "role_may_execute_function", (r, fn["oid"]))
        ]
        fix = f"REVOKE EXECUTE ON FUNCTION {name} FROM PUBLIC, {role};"
        if keep:
            fix += f" GRANT EXECUTE ON FUNCTION {name} TO {', '.join(keep)};"
        note = (
            f"{fn['nspname']}.{fn['proname']} is used by {listed([u['used_by'] for u in users], 3)}"
            f", run as {', '.join(needed_by)}, which keep EXECUTE"
            if needed_by
            else ""
        )
        return fix, note
    by_name = [u["used_by"] for u in users if u["by_name"]]
    if by_name:
        # Moving it would break those calls, revoking it would break the role's: no SQL is safe.
        return (
            f"{fn['nspname']}.{fn['proname']} is called by name from {listed(by_name, 3)} and "
            f"{role} needs it: make it SECURITY INVOKER if it needs no owner rights, or move it "
            "to a schema the API cannot use and make those bodies name the new schema.",
            f"{fn['nspname']}.{fn['proname']} is used by "
            f"{listed([u['used_by'] for u in users if role in u['needed_by']], 3)}, which need "
            f"{role} to keep EXECUTE: no REVOKE is printed",
        )
    schema, present = private
    target = sql.Identifier(schema).as_string(conn)
    # IF NOT EXISTS: the other API role's line may print a move for the same report.
    create = "" if present else f"CREATE SCHEMA IF NOT EXISTS {target}; "
    fix = f"{create}ALTER FUNCTION {name} SET SCHEMA {target};"
    note = (
        f"{fn['nspname']}.{fn['proname']} is used by "
        f"{listed([u['used_by'] for u in users if role in u['needed_by']], 3)}, which need "
        f"{role} to keep EXECUTE: revoking it would break them, so the fix moves the function "
        f"to schema {schema}, which {role} cannot use (they call it by OID and keep working; "
        "calls by name elsewhere must name the new schema)"
    )
    return fix, note


def _definer_functions_for(conn: psycopg.Connection, role: str) -> tuple[bool, str, str]:
    require_api_roles(conn)
    rows = query_rows(
        conn,
        "security_definer_functions_callable_by_role",
        {"role": role, "system": list(SYSTEM_SCHEMAS)},
    )
    if not rows:
        return True, f"no SECURITY DEFINER function is callable by {role}", ""
    names = [f"{r['nspname']}.{r['proname']}({r['args']})" for r in rows]
    users = query_rows(
        conn,
        "function_users",
        {
            "fns": [r["oid"] for r in rows[:5]],
            "roles": [*API_ROLES, *_FIX_KEEPS],
            "system": list(SYSTEM_SCHEMAS),
        },
    )
    private = _private_schema(conn)
    fixes, notes = [], []
    for r in rows[:5]:
        fix, note = _definer_function_fix(
            conn, role, r, [u for u in users if u["fn"] == r["oid"]], private
        )
        fixes.append(fix)
        notes.append(note)
    # Exact SQL only; the runbook says when to go INVOKER instead.
    detail = (
        f"{role} can call {listed(names, 5)} with its owner's rights (RLS bypassed), e.g. "
        "through /rest/v1/rpc"
    )
    detail += "".join(f"; {note}" for note in notes if note)
    return False, detail, " ".join(fixes)


@check(
    "anon_security_definer_function_executable",
    "splinter 0028: no SECURITY DEFINER function is executable by anon",
)
def check_anon_definer(conn: psycopg.Connection, ctx: CheckContext) -> tuple[bool, str, str]:
    return _definer_functions_for(conn, "anon")


@check(
    "authenticated_security_definer_function_executable",
    "splinter 0029: no SECURITY DEFINER function is executable by authenticated",
)
def check_authenticated_definer(
    conn: psycopg.Connection, ctx: CheckContext
) -> tuple[bool, str, str]:
    return _definer_functions_for(conn, "authenticated")
