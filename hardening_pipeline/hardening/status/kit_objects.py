"""Status lines on the kit's own objects (015): who can act as the audit owner, grants on the
kit's functions and sequences, and objects added to pg_catalog.
"""

from __future__ import annotations

import psycopg

from hardening_pipeline.hardening.status.catalog import (
    API_ROLES,
    FIRST_NORMAL_OID,
    listed,
    query_rows,
)
from hardening_pipeline.hardening.status.model import CheckContext, check

AUDIT_OWNER = "hardening_audit_owner"
# The resolver functions every tenant policy calls as the querying role, and the report-mode
# hook the guard calls as service_role: the only kit functions the API roles may execute.
KIT_FUNCTIONS_FOR_API_ROLES = {
    "current_tenant_id": ("authenticated", "service_role"),
    "current_tenant_ids": ("authenticated", "service_role"),
    "membership_tenant_ids": ("authenticated", "service_role"),
    "as_uuid": ("authenticated", "service_role"),
    "request_claims": ("authenticated", "service_role"),
    "allow_unattributed_write": ("service_role",),
}
_KIT_GRANTEES = ("PUBLIC", "anon", "authenticated", "service_role")


@check(
    "audit_owner_unreachable",
    "no login role can act as hardening_audit_owner (switch the guard off, rewrite the log)",
)
def check_audit_owner_members(conn: psycopg.Connection, ctx: CheckContext) -> tuple[bool, str, str]:
    exists = conn.execute(
        "SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = %s", (AUDIT_OWNER,)
    ).fetchone()
    if not exists:
        return False, f"role {AUDIT_OWNER} is missing", "run hardening migrate."
    params = {"owner": AUDIT_OWNER}
    members = [r["rolname"] for r in query_rows(conn, "audit_owner_login_members", params)]
    admins = [r["rolname"] for r in query_rows(conn, "audit_owner_login_admins", params)]
    if members:
        return (
            False,
            f"login role(s) {listed(members)} can SET ROLE {AUDIT_OWNER} or inherit it",
            f"REVOKE {AUDIT_OWNER} FROM <role>; (for a role that holds it through another "
            "role, revoke that role's membership instead).",
        )
    detail = "no login role is a member (superusers aside)"
    if admins:
        detail += (
            f"; {listed(admins)} could grant the membership (ADMIN OPTION, or CREATEROLE "
            "before PG16): "
            "trusted like the migration role; what they do is detected by the seals"
        )
    return True, detail, ""


@check(
    "kit_objects_closed_to_api_roles",
    "the kit's functions and sequences are closed to PUBLIC, anon, authenticated and "
    "service_role (the tenant resolver and the report-mode hook aside), default privileges too",
)
def check_kit_objects(conn: psycopg.Connection, ctx: CheckContext) -> tuple[bool, str, str]:
    params = {"grantees": list(_KIT_GRANTEES)}
    problems: list[str] = []
    fixes: list[str] = []
    for r in query_rows(conn, "kit_function_grants", params):
        if r["grantee"] in KIT_FUNCTIONS_FOR_API_ROLES.get(r["proname"], ()):
            continue
        if r["prosecdef"] and r["grantee"] in API_ROLES:
            continue  # the *_security_definer_function_executable lines name these
        problems.append(f"{r['grantee']} EXECUTE on {r['fn']}")
        fixes.append(f"REVOKE EXECUTE ON FUNCTION {r['fn']} FROM {r['grantee']};")
    for r in query_rows(conn, "kit_sequence_grants", params):
        if r["audit"] and (
            r["grantee"] == "anon"
            or (r["grantee"] == "authenticated" and r["privilege_type"] != "USAGE")
        ):
            continue  # api_roles_reach_no_tenant_data names these
        problems.append(f"{r['grantee']} {r['privilege_type']} on sequence {r['seq']}")
        fixes.append(f"REVOKE ALL ON SEQUENCE {r['seq']} FROM {r['grantee']};")
    kinds = {"r": "TABLES", "S": "SEQUENCES", "f": "FUNCTIONS", "T": "TYPES", "n": "SCHEMAS"}
    for r in query_rows(conn, "kit_default_privileges", params):
        kind = kinds.get(r["kind"], r["kind"])
        problems.append(f"default privileges of {r['owner']} give {r['grantee']} new {kind}")
        fixes.append(
            f"ALTER DEFAULT PRIVILEGES FOR ROLE {r['owner']} IN SCHEMA hardening "
            f"REVOKE ALL ON {kind} FROM {r['grantee']};"
        )
    if not problems:
        return True, "only the tenant resolver and the report-mode hook are open, as needed", ""
    return False, listed(sorted(set(problems)), 6), " ".join(dict.fromkeys(fixes).keys())


@check(
    "pg_catalog_untouched",
    "pg_catalog holds only what initdb put there (no added or taken-over functions, types, "
    "operators or relations)",
)
def check_pg_catalog(conn: psycopg.Connection, ctx: CheckContext) -> tuple[bool, str, str]:
    rows = query_rows(conn, "pg_catalog_added_objects", {"first": FIRST_NORMAL_OID})
    if not rows:
        return True, "every object in pg_catalog is initdb's, owned by the bootstrap superuser", ""
    found = [f"{r['kind']} {r['name']} (owner {r['owner']})" for r in rows]
    return (
        False,
        listed(found, 5),
        "find out who added it and why (a superuser did: see the audit seals and the server "
        "log), then DROP it; nothing the kit ships lives in pg_catalog.",
    )
