"""Status lines on what the policies and rules on tenant tables allow.

Judged from the expression trees Postgres evaluates (pg_policy.polqual/polwithcheck) and from
pg_rewrite and pg_depend, then probed: never from policy names or deparsed text. The kit's own
tenant policy on adopted tables and the tenant resolver's claims are judged here too.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass

import psycopg
from psycopg import sql

from hardening_pipeline.db.connection import table_exists
from hardening_pipeline.db.tenant_resolver import user_writable_paths
from hardening_pipeline.db.tenant_tables import TenantTable
from hardening_pipeline.hardening.policy_exprs import (
    parse_node_tree,
    row_columns,
    tenant_comparisons,
)
from hardening_pipeline.hardening.status.catalog import (
    API_ROLES,
    FIRST_NORMAL_OID,
    listed,
    locked_tables,
    oids,
    query_rows,
    require_api_roles,
)
from hardening_pipeline.hardening.status.model import CheckContext, check


@check(
    "adopted_tables_policies_narrow",
    "the kit's tenant policy on each table it adopted is AS RESTRICTIVE (it only narrows)",
)
def check_adopted_policies(conn: psycopg.Connection, ctx: CheckContext) -> tuple[bool, str, str]:
    if not table_exists(conn, "hardening.managed_tables"):
        return False, "hardening.managed_tables is missing", "run hardening migrate."
    rows = query_rows(conn, "adopted_tables_tenant_policies")
    bad = [
        f"{r['table_name']}: {r['tenant_policy']} is "
        + ("missing" if r["polpermissive"] is None else "permissive")
        for r in rows
        if r["polpermissive"] is not False
    ]
    if not bad:
        return True, f"{len(rows)} adopted table(s) with RLS, each narrowed by the kit", ""
    fix = (
        "recreate it AS RESTRICTIVE: DROP POLICY <policy> ON public.<table>; CREATE POLICY "
        "<policy> ON public.<table> AS RESTRICTIVE FOR ALL TO authenticated USING (tenant_id = "
        "(SELECT hardening.current_tenant_id())) WITH CHECK (the same), then run hardening "
        "tenant-resolver again to keep the resolver's form."
    )
    return False, "; ".join(bad), fix


_RESOLVER_FIX = (
    "put the tenant in app_metadata (only the service key writes it) and run "
    "`hardening tenant-resolver claim app_metadata.tenant_id`."
)


@check(
    "tenant_resolver_not_user_writable",
    "the tenant resolver reads no claim a user sets for themselves (user_metadata)",
)
def check_resolver_claims(conn: psycopg.Connection, ctx: CheckContext) -> tuple[bool, str, str]:
    if not table_exists(conn, "hardening.tenant_resolver"):
        return False, "hardening.tenant_resolver is missing", "run hardening migrate."
    resolver = query_rows(conn, "tenant_resolver")
    if not resolver:
        return False, "hardening.tenant_resolver is empty", _RESOLVER_FIX
    row = resolver[0]
    if row["kind"] != "claim":
        return True, "membership resolver: tenants come from the membership table", ""
    writable = user_writable_paths(row["claim_paths"])
    if not writable:
        return True, "claim " + ", then ".join(row["claim_paths"]), ""
    return (
        False,
        f"the tenant comes from {', '.join(writable)}, which every user can edit for "
        "themselves: anyone can pick any tenant",
        _RESOLVER_FIX,
    )


_POLICY_COMMANDS = {"r": "SELECT", "a": "INSERT", "w": "UPDATE", "d": "DELETE"}


def _policy_trees(conn: psycopg.Connection) -> list[dict]:
    """The policies on tenant tables, each expression parsed and judged."""
    tables = {t.oid: t for t in locked_tables(conn)}
    rows = query_rows(conn, "tenant_table_policies", {"tables": list(tables)})
    for r in rows:
        r["relname"] = tables[r["oid"]].display  # bare in public, as managed_tables has it
    opnos: set[int] = set()
    for r in rows:
        for key in ("qual", "with_check"):
            tree = parse_node_tree(r[key]) if r[key] else None
            r[f"{key}_tree"] = tree
            r[f"{key}_reads_row"] = tree is None or bool(row_columns(tree))
            found = tenant_comparisons(tree, r["tenant_attnum"] or 0) if tree else []
            r[f"{key}_comparisons"] = found
            opnos |= {c.operator for c in found}
    equal = {
        e["oid"]
        for e in query_rows(
            conn, "builtin_equality_operators", {"opnos": sorted(opnos), "first": FIRST_NORMAL_OID}
        )
    }
    for r in rows:
        for key in ("qual", "with_check"):
            # NULL (no such clause) is judged by the other clause, as Postgres applies it.
            r[f"{key}_pins_tenant"] = r[f"{key}_tree"] is None or any(
                c.operator in equal for c in r[f"{key}_comparisons"]
            )
    return rows


def _clauses_for(policy: dict, command: str) -> list[str]:
    """Which expressions of a policy Postgres applies to one command (USING for existing rows,
    WITH CHECK, or USING when there is none, for new ones)."""
    new_rows = "with_check" if policy["with_check"] is not None else "qual"
    return {"r": ["qual"], "d": ["qual"], "a": [new_rows], "w": ["qual", new_rows]}[command]


def _applies(policy: dict, role: str, command: str) -> bool:
    return bool({role, "PUBLIC"} & set(policy["roles"])) and policy["polcmd"] in (command, "*")


@check(
    "tenant_policies_constrain_rows",
    "policies on tenant tables constrain the row: the kit's tenant policy pins the tenant column "
    "to a per-request value, and no permissive policy for anon/authenticated admits every row "
    "unless a restrictive tenant policy narrows it",
)
def check_policies_constrain(conn: psycopg.Connection, ctx: CheckContext) -> tuple[bool, str, str]:
    policies = _policy_trees(conn)
    problems: dict[str, list[str]] = {}
    fixes: list[str] = []
    if table_exists(conn, "hardening.managed_tables"):
        kit = {
            (r["table_name"], r["tenant_policy"])
            for r in query_rows(conn, "kit_tenant_policies_by_table")
        }
        for p in policies:
            if (p["relname"], p["polname"]) not in kit:
                continue
            loose = [
                f"{'USING' if key == 'qual' else 'WITH CHECK'} ({p[key + '_sql']})"
                for key in ("qual", "with_check")
                if not p[f"{key}_pins_tenant"]
            ]
            if "authenticated" not in p["roles"] and "PUBLIC" not in p["roles"]:
                loose.append(f"applies to {', '.join(p['roles'])}, not authenticated")
            if loose:
                problems.setdefault(f"the kit's {p['polname']} on {p['relname']}", []).extend(loose)
        if any(k.startswith("the kit's") for k in problems):
            resolver = query_rows(conn, "tenant_resolver")
            many = bool(resolver) and resolver[0]["kind"] == "membership"
            fixes.append(f"SELECT hardening.use_tenant_policies({'true' if many else 'false'});")
    for table in sorted({p["relname"] for p in policies}):
        on_table = [p for p in policies if p["relname"] == table]
        for role in API_ROLES:
            for command, action in _POLICY_COMMANDS.items():
                applying = [p for p in on_table if _applies(p, role, command)]
                narrowed = any(
                    not p["polpermissive"]
                    and all(p[f"{k}_pins_tenant"] for k in _clauses_for(p, command))
                    for p in applying
                )
                if narrowed:
                    continue
                for p in applying:
                    open_clauses = [
                        k
                        for k in _clauses_for(p, command)
                        if p["polpermissive"]
                        and not p[f"{k}_reads_row"]
                        and (p[f"{k}_sql"] or "").strip().lower() != "false"
                    ]
                    for k in open_clauses:
                        clause = "USING" if k == "qual" else "WITH CHECK"
                        problems.setdefault(
                            f'policy "{p["polname"]}" on {table} ({clause} ({p[k + "_sql"]}))', []
                        ).append(f"{action} by {role}")
    if not problems:
        return True, f"{len(policies)} policies on tenant tables constrain the row", ""
    detail = listed(
        [f"{what}: {', '.join(dict.fromkeys(how))}" for what, how in problems.items()], 5
    )
    fixes.append(
        "make each named app policy compare the row with the caller, e.g. USING (tenant_id = "
        "(SELECT hardening.current_tenant_id())), or add the kit's AS RESTRICTIVE tenant policy "
        "to the table; a policy that admits every row of a tenant table admits other tenants'."
    )
    return False, detail + " admit every row whatever the tenant", " ".join(fixes)


@check(
    "no_rules_on_tenant_tables",
    "no rewrite rule on a tenant table or reading/writing one (a rule's actions run with the "
    "table owner's rights, around the caller's policies)",
)
def check_tenant_rules(conn: psycopg.Connection, ctx: CheckContext) -> tuple[bool, str, str]:
    tables = oids(locked_tables(conn))
    rules = query_rows(conn, "rules_on_or_into_tenant_tables", {"tables": tables})
    if not rules:
        return True, f"none on or into {len(tables)} tenant tables", ""
    found = [
        f"{r['rulename']} ON {r['event']} TO {r['on_rel']} DO "
        f"{'INSTEAD' if r['is_instead'] else 'ALSO'}"
        + (f" (reads or writes {', '.join(r['touches'])})" if r["touches"] else "")
        for r in rules
    ]
    # A DO ALSO rule only adds a statement: dropping it leaves the app's own write as it was.
    # A DO INSTEAD rule replaces the write, so dropping it changes what the app does.
    drops = [f"DROP RULE {r['quoted']} ON {r['on_rel']};" for r in rules if not r["is_instead"]]
    instead = [r["rulename"] for r in rules if r["is_instead"]]
    fix = " ".join(drops)
    if instead:
        fix += (
            f" For {', '.join(instead)} (DO INSTEAD): move what it does into a trigger on the "
            "table, which runs as the caller under its policies, then drop the rule."
        )
    return False, listed(found, 5), fix.strip()


_PROBE_LIMIT = 1000
# PostgREST's search_path on Supabase (db-extra-search-path): the app's functions may rely on it.
_PROBE_SEARCH_PATH = "public, extensions"


@dataclass(frozen=True)
class _ProbeCaller:
    role: str
    claims: dict
    own_tenants: list[str]
    label: str


def _probe_callers(conn: psycopg.Connection) -> list[_ProbeCaller]:
    """A signed-in caller of one tenant, as the configured resolver knows tenants, and anon.

    Under a claim resolver the caller carries the first tenant's id in every claim path and a
    user id nobody has, so the app's per-user policies grant it nothing of their own; under a
    membership resolver it is the first member, and its tenants are that member's.
    """
    tenant = str(uuid.uuid4())
    if table_exists(conn, "public.tenants"):
        first = query_rows(conn, "first_tenant")
        tenant = first[0]["id"] if first else tenant
    resolver = (
        query_rows(conn, "tenant_resolver")
        if table_exists(conn, "hardening.tenant_resolver")
        else []
    )
    claims: dict = {"sub": str(uuid.uuid4()), "role": "authenticated", "aud": "authenticated"}
    own = [tenant]
    r = resolver[0] if resolver else {"kind": "claim", "claim_paths": None}
    if r["kind"] == "membership":
        member = conn.execute(
            sql.SQL(
                "SELECT {u}::text AS sub, array_agg(DISTINCT {t}::text) AS tenants FROM {m} "
                "GROUP BY 1 ORDER BY 1 LIMIT 1"
            )
            .format(
                u=sql.Identifier(r["user_column"]),
                t=sql.Identifier(r["tenant_column"]),
                m=sql.Identifier(r["membership_schema"], r["membership_table"]),
            )
            .as_string(conn),
        ).fetchall()
        if member:
            claims["sub"], own = member[0]["sub"], member[0]["tenants"]
    else:
        for path in r["claim_paths"] or ["tenant_id", "app_metadata.tenant_id"]:
            *parents, leaf = path.split(".")
            target: object = claims
            for part in parents:
                target = target.setdefault(part, {}) if isinstance(target, dict) else None
            if isinstance(target, dict):
                target[leaf] = tenant
    return [
        _ProbeCaller("authenticated", claims, own, f"authenticated of tenant {', '.join(own)}"),
        _ProbeCaller("anon", {"role": "anon"}, [], "anon"),
    ]


def _visible_foreign_rows(
    conn: psycopg.Connection, caller: _ProbeCaller, table: TenantTable
) -> int | str | None:
    """Rows of other tenants ``caller`` reads in ``table``; None if it may not even try, or why
    the query failed."""
    query = sql.SQL(
        "SELECT pg_catalog.count(*) AS n FROM (SELECT 1 FROM {table} AS x "
        "WHERE NOT coalesce((x.{column})::pg_catalog.text OPERATOR(pg_catalog.=) "
        "ANY (%(own)s::pg_catalog.text[]), false) LIMIT {limit}) AS seen"
    ).format(
        table=table.identifier(),
        column=sql.Identifier(table.tenant_column),
        limit=sql.Literal(_PROBE_LIMIT),
    )
    try:
        with conn.transaction(force_rollback=True):
            conn.execute(
                "SELECT set_config('request.jwt.claims', %s, true), "
                "set_config('search_path', %s, true)",
                (json.dumps(caller.claims), _PROBE_SEARCH_PATH),
            )
            conn.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(caller.role)))
            return conn.execute(query, {"own": caller.own_tenants}).fetchone()["n"]
    except psycopg.errors.InsufficientPrivilege:
        return None
    except psycopg.Error as exc:
        return f"{exc.sqlstate}: {str(exc).strip().splitlines()[0][:120]}"


@check(
    "tenant_isolation_probe",
    "probed: a signed-in caller with one tenant's claims, and anon, read no other tenant's rows "
    "in any tenant table (as the role itself, in a rolled-back savepoint)",
)
def check_isolation_probe(conn: psycopg.Connection, ctx: CheckContext) -> tuple[bool, str, str]:
    require_api_roles(conn)
    for role in API_ROLES:
        try:
            with conn.transaction(force_rollback=True):
                conn.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(role)))
        except psycopg.errors.InsufficientPrivilege:
            # The catalog lines still judge the policies; this login cannot act as the caller.
            return (
                True,
                f"not probed: this login may not SET ROLE {role} (GRANT {role} TO the status "
                "login to probe)",
                "",
            )
    tables = locked_tables(conn)
    callers = _probe_callers(conn)
    leaks, failures = [], []
    for table in tables:
        for caller in callers:
            seen = _visible_foreign_rows(conn, caller, table)
            if isinstance(seen, str):
                failures.append(f"{caller.role} on {table.display}: {seen}")
            elif seen:
                many = f"{_PROBE_LIMIT}+" if seen >= _PROBE_LIMIT else str(seen)
                leaks.append(
                    f"{caller.label} reads {many} row(s) of other tenants in {table.display}"
                )
    if not leaks and not failures:
        return True, f"{len(tables)} tenant tables: no other tenant's row visible", ""
    fix = (
        "find the policy or function that admits them: SELECT polname, polpermissive, "
        "pg_get_expr(polqual, polrelid) FROM pg_policy WHERE polrelid = 'public.<table>'"
        "::regclass; and check hardening.current_tenant_id() and the resolver "
        "(`hardening tenant-resolver`); a failing query means a policy raised for a caller."
    )
    return False, listed(leaks + failures, 5), fix
