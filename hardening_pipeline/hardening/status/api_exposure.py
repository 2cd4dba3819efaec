"""Status lines on what anon and authenticated reach around RLS: grants on tenant tables,
functions with a mutable search_path, views that run as their owner, materialized views and
sequences of tenant tables.
"""

from __future__ import annotations

import psycopg
from psycopg import sql

from hardening_pipeline.db.tenant_tables import SYSTEM_SCHEMAS
from hardening_pipeline.hardening.status.catalog import (
    API_ROLES,
    SCHEMA,
    listed,
    locked_tables,
    oids,
    query_rows,
    views_over_tenant_tables,
)
from hardening_pipeline.hardening.status.model import CheckContext, check


@check("no_anon_grants", "anon and PUBLIC hold no privileges on tenant tables")
def check_anon_grants(conn: psycopg.Connection, ctx: CheckContext) -> tuple[bool, str, str]:
    tables = {t.oid: t for t in locked_tables(conn)}
    rows = query_rows(conn, "anon_and_public_grants_on_tables", {"tables": list(tables)})
    if not rows:
        return True, f"none on {len(tables)} tables", ""
    held = [
        f"{r['grantee']} {r['privilege_type']} on {tables[r['oid']].display}"
        + (f"({r['column_name']})" if r["column_name"] else "")
        for r in rows
    ]
    # Named table by table so the fix pastes as it is; a column grant goes with the table's.
    revokes = []
    for oid in dict.fromkeys(r["oid"] for r in rows):
        grantees = sorted({r["grantee"] for r in rows if r["oid"] == oid})
        columns = sorted({r["column_name"] for r in rows if r["oid"] == oid and r["column_name"]})
        revokes.append(f"REVOKE ALL ON {tables[oid].quoted} FROM {', '.join(grantees)};")
        if columns:
            quoted = ", ".join(sql.Identifier(c).as_string(conn) for c in columns)
            revokes.append(
                f"REVOKE ALL ({quoted}) ON {tables[oid].quoted} FROM {', '.join(grantees)};"
            )
    return False, listed(held), " ".join(revokes)


@check(
    "api_roles_no_trigger_or_truncate",
    "authenticated and service_role hold no TRIGGER, TRUNCATE or REFERENCES on tenant tables",
)
def check_api_ddl_privileges(conn: psycopg.Connection, ctx: CheckContext) -> tuple[bool, str, str]:
    # TRIGGER lets the role hang a trigger on every tenant's writes; TRUNCATE skips RLS. On
    # Supabase a table created after migrate gets both from the default privileges.
    tables = {t.oid: t for t in locked_tables(conn)}
    rows = query_rows(
        conn,
        "api_roles_ddl_privileges_on_tables",
        {"tables": list(tables), "roles": ["authenticated", "service_role"]},
    )
    if not rows:
        return True, f"none on {len(tables)} tables", ""
    held = [f"{r['role']} {r['priv']} on {tables[r['oid']].display}" for r in rows]
    named = ", ".join(tables[oid].quoted for oid in dict.fromkeys(r["oid"] for r in rows))
    fix = (
        f"REVOKE TRIGGER, TRUNCATE, REFERENCES ON {named} FROM PUBLIC, authenticated, "
        "service_role; and ALTER DEFAULT PRIVILEGES ... REVOKE TRIGGER, TRUNCATE, REFERENCES "
        "ON TABLES FROM authenticated, service_role."
    )
    return False, listed(held), fix


@check(
    "function_search_path_fixed",
    "SECURITY DEFINER functions have a fixed search_path",
)
def check_definer_path(conn: psycopg.Connection, ctx: CheckContext) -> tuple[bool, str, str]:
    bad = _mutable_path_functions(conn, definer=True)
    if not bad:
        return True, "every SECURITY DEFINER function sets search_path", ""
    fix = (
        "ALTER FUNCTION <name>(<args>) SET search_path = '' and schema-qualify every name in "
        "its body; otherwise a caller's objects can hijack it with the owner's rights."
    )
    return False, listed(bad), fix


@check(
    "function_search_path_mutable",
    "splinter function_search_path_mutable: other functions have a fixed search_path",
)
def check_invoker_path(conn: psycopg.Connection, ctx: CheckContext) -> tuple[bool, str, str]:
    bad = _mutable_path_functions(conn, definer=False)
    if not bad:
        return True, "every function sets search_path", ""
    fix = "ALTER FUNCTION <name>(<args>) SET search_path = '' (and schema-qualify its body)."
    return False, listed(bad), fix


def _mutable_path_functions(conn: psycopg.Connection, *, definer: bool) -> list[str]:
    rows = query_rows(conn, "functions_without_fixed_search_path", (list(SYSTEM_SCHEMAS), definer))
    return [r["fn"] for r in rows]


@check("security_definer_view", "splinter security_definer_view: API views use security_invoker")
def check_views(conn: psycopg.Connection, ctx: CheckContext) -> tuple[bool, str, str]:
    # Views that read tenant tables are tenant_views_security_invoker's (any schema).
    over_tenant = {r["oid"] for r in views_over_tenant_tables(conn)}
    rows = query_rows(conn, "views_without_security_invoker", (SCHEMA,))
    bad = [r["view"] for r in rows if r["oid"] not in over_tenant]
    if not bad:
        return True, "no views in public run with their owner's rights", ""
    fix = (
        "ALTER VIEW <view> SET (security_invoker = true): a view otherwise reads its tables as "
        "its owner, bypassing the caller's RLS."
    )
    return False, f"{listed(bad)} run as their owner", fix


@check(
    "tenant_views_security_invoker",
    "views over tenant tables run as the caller (security_invoker = true), in every schema",
)
def check_tenant_views(conn: psycopg.Connection, ctx: CheckContext) -> tuple[bool, str, str]:
    views = [v for v in views_over_tenant_tables(conn) if v["relkind"] == "v"]
    bad = [v for v in views if not v["security_invoker"]]
    if not bad:
        return True, f"{len(views)} view(s) over tenant tables, all security_invoker", ""
    detail = listed([f"{v['qualified']} (reads {', '.join(v['bases'])})" for v in bad], 5)
    fix = " ".join(f"ALTER VIEW {v['qualified']} SET (security_invoker = true);" for v in bad[:5])
    return (
        False,
        f"{detail} read tenant rows with the owner's rights, bypassing every tenant policy",
        fix,
    )


@check(
    "api_roles_reach_no_tenant_data",
    "anon/authenticated reach no tenant data around RLS: views, materialized views, sequences",
)
def check_api_privileges(conn: psycopg.Connection, ctx: CheckContext) -> tuple[bool, str, str]:
    problems: list[str] = []
    fixes: list[str] = []
    for v in views_over_tenant_tables(conn):
        # A materialized view has no RLS at all: any SELECT on it reads every tenant's rows.
        held = [
            p
            for p in v["api_privileges"]
            if p.startswith("anon ") or (v["relkind"] == "m" and p == "authenticated SELECT")
        ]
        if held:
            kind = "materialized view" if v["relkind"] == "m" else "view"
            problems.append(
                f"{', '.join(held)} on {kind} {v['qualified']} (reads {', '.join(v['bases'])})"
            )
            roles = sorted({p.split()[0] for p in held})
            # GRANT/REVOKE name views and materialized views as TABLE.
            fixes.append(f"REVOKE ALL ON TABLE {v['qualified']} FROM PUBLIC, {', '.join(roles)};")
    tables = oids(locked_tables(conn))
    for seq in query_rows(
        conn, "tenant_table_sequences", {"roles": list(API_ROLES), "tables": tables}
    ):
        if seq["api_privileges"]:
            problems.append(
                f"{', '.join(seq['api_privileges'])} on sequence {seq['qualified']} "
                f"(of {seq['tbl']})"
            )
            roles = sorted({p.split()[0] for p in seq["api_privileges"]})
            what = "ALL" if roles == ["anon"] else "SELECT, UPDATE"
            if "anon" in roles and "authenticated" in roles:
                fixes.append(f"REVOKE ALL ON SEQUENCE {seq['qualified']} FROM PUBLIC, anon;")
                what = "SELECT, UPDATE"
                roles = ["authenticated"]
            fixes.append(
                f"REVOKE {what} ON SEQUENCE {seq['qualified']} FROM PUBLIC, {', '.join(roles)};"
            )
    if not problems:
        return True, "no view, materialized view or sequence hands them tenant rows", ""
    return False, listed(problems, 5), " ".join(fixes[:6])
