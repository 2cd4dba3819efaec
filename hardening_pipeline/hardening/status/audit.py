"""Status lines on the audit log's write path: the append-only guard, the capture triggers on
every tenant table, who may rewrite audit_events, and the service-role rule.
"""

from __future__ import annotations

from collections.abc import Sequence

import psycopg

from hardening_pipeline.db.service_role_mode import read_mode, unattributed_sources
from hardening_pipeline.db.shipped_functions import changed_functions
from hardening_pipeline.db.tenant_tables import TenantTable, display_name
from hardening_pipeline.hardening.status.catalog import (
    listed,
    locked_tables,
    oids,
    query_rows,
    relation_oid,
    sql_literal,
)
from hardening_pipeline.hardening.status.model import CheckContext, check


def _stale_capture_keys(conn: psycopg.Connection, tables: Sequence[TenantTable]) -> list[str]:
    problems = []
    for r in query_rows(conn, "capture_trigger_keys_and_primary_keys", (oids(tables),)):
        keyed_on = r["args"].split("\\000")[2:-1] or ["id"]
        expected = r["primary_key"] or ["id"]
        if keyed_on != expected:
            problems.append(
                f"{display_name(r['nspname'], r['relname'])}: {r['tgname']} names rows by "
                f"({', '.join(keyed_on)}), the "
                f"primary key is ({', '.join(expected)})"
            )
    return problems


_ENABLED = {"O": "enabled (skipped in replica mode)", "D": "disabled", "R": "replica only"}
# pg_trigger.tgtype bits: BEFORE 2, DELETE 8, UPDATE 16, TRUNCATE 32.
_GUARD_BITS = 2 | 8 | 16 | 32
CAPTURE_FUNCTIONS = (
    "audit_write_guard",
    "audit_capture_insert",
    "audit_capture_update",
    "audit_capture_delete",
    "audit_capture_truncate",
)
# What those call: who wrote (statement_identity, and request_claims for a JWT's sub) and the
# service-role rule's report mode. Replaced, they forge the log as surely as the capture.
CAPTURE_HELPERS = ("statement_identity", "request_claims", "allow_unattributed_write")


@check("audit_append_only_guard", "audit_events append-only guard present and ENABLE ALWAYS")
def check_append_only(conn: psycopg.Connection, ctx: CheckContext) -> tuple[bool, str, str]:
    guards = [
        r
        for r in query_rows(
            conn, "kit_triggers_on_tables", ([relation_oid(conn, "public.audit_events")],)
        )
        if r["proname"] == "audit_events_append_only"
    ]
    fix = (
        "ALTER TABLE public.audit_events ENABLE ALWAYS TRIGGER audit_events_append_only "
        "(recreate it from 002_audit_events.sql if it is gone)."
    )
    if not guards:
        return False, "no append-only guard trigger on audit_events", fix
    good = [g for g in guards if g["tgenabled"] == "A" and g["tgtype"] & _GUARD_BITS == _GUARD_BITS]
    if good:
        return True, f"{good[0]['tgname']} BEFORE UPDATE/DELETE/TRUNCATE, ALWAYS", ""
    g = guards[0]
    state = _ENABLED.get(g["tgenabled"], "ALWAYS")
    if g["tgtype"] & _GUARD_BITS != _GUARD_BITS:
        state += ", but not BEFORE UPDATE OR DELETE OR TRUNCATE"
    return False, f"{g['tgname']} is {state}", fix


@check(
    "audit_capture_triggers",
    "audit guard and capture triggers on every tenant-scoped table, ENABLE ALWAYS, their "
    "functions as the kit's migrations define them (compared by digest)",
)
def check_capture(conn: psycopg.Connection, ctx: CheckContext) -> tuple[bool, str, str]:
    tables = [t for t in locked_tables(conn) if (t.schema, t.name) != ("public", "audit_events")]
    triggers = query_rows(conn, "kit_triggers_on_tables", (oids(tables),))
    problems = []
    for t in tables:
        table = t.display
        have = {r["proname"]: r for r in triggers if r["oid"] == t.oid}
        missing = [f for f in CAPTURE_FUNCTIONS if f not in have]
        off = [
            f"{have[f]['tgname']} {_ENABLED[have[f]['tgenabled']]}"
            for f in CAPTURE_FUNCTIONS
            if f in have and have[f]["tgenabled"] != "A"
        ]
        if missing:
            problems.append(f"{table}: missing {', '.join(missing)}")
        if off:
            problems.append(f"{table}: {', '.join(off)}")
    # A capture function replaced by one that does nothing keeps every trigger in place.
    problems += changed_functions(conn, [*CAPTURE_FUNCTIONS, *CAPTURE_HELPERS])
    for r in query_rows(conn, "capture_triggers_casting_other_types_to_uuid", (oids(tables),)):
        problems.append(
            f"{display_name(r['nspname'], r['relname'])}: every write fails, {r['tgname']} casts "
            f"{r['attname']} ({r['type']}) to uuid"
        )
    problems.extend(_stale_capture_keys(conn, tables))
    if not problems:
        return True, f"5 triggers ALWAYS on each of {len(tables)} tables", ""
    # A table with none of the triggers is named, so its fix pastes as it is: 019's function
    # locks it down the way migrate did the others (RLS, grants, index, capture).
    uncovered = [
        t
        for t in tables
        if t.tenant_column == "tenant_id" and not any(r["oid"] == t.oid for r in triggers)
    ]
    lock_down = " ".join(
        f"SELECT hardening.lock_down_tenant_table({sql_literal(conn, t.quoted)}::regclass);"
        for t in uncovered
    )
    fix = (
        (f"for a table without them, as the migration role: {lock_down} " if uncovered else "")
        + "for a capture function that differs: re-create it as the last migration file that "
        "defines it has it (CREATE OR REPLACE) and find who changed it; "
        "for a set that casts a non-uuid tenant column or one keyed on another primary key: "
        "drop it and SELECT "
        "hardening.install_audit_capture('<schema>.<table>'::regclass, 'tenant_id') in a new "
        "migration; for a disabled one: ALTER TABLE <schema>.<table> ENABLE ALWAYS TRIGGER "
        "<trigger>."
    )
    return False, "; ".join(problems), fix


@check("audit_events_no_write_grants", "no role holds UPDATE, DELETE or TRUNCATE on audit_events")
def check_audit_grants(conn: psycopg.Connection, ctx: CheckContext) -> tuple[bool, str, str]:
    rows = query_rows(conn, "audit_events_write_grants")
    if not rows:
        return True, "only SELECT/INSERT granted (superusers aside)", ""
    held = [
        f"{r['grantee']}: {r['privilege_type']}"
        + (f" ({r['column_name']})" if r["column_name"] else "")
        for r in rows
    ]
    fix = "REVOKE UPDATE, DELETE, TRUNCATE ON public.audit_events FROM <role> (column grants too)."
    return False, "; ".join(held), fix


@check(
    "service_role_rule_enforced",
    "service-role rule in enforce mode: raw service_role writes without an actor are refused",
)
def check_service_role_mode(conn: psycopg.Connection, ctx: CheckContext) -> tuple[bool, str, str]:
    state = read_mode(conn)
    if state is None:
        return False, "no service-role mode (012 not applied)", "run `hardening migrate`."
    if state.mode == "enforce":
        return True, f"enforce since {state.set_at:%Y-%m-%d %H:%M} UTC ({state.set_by})", ""
    sources = unattributed_sources(conn)
    seen = (
        "unattributed callers in the last 7 days: " + listed([s.describe() for s in sources], 5)
        if sources
        else "no unattributed service_role writes in the last 7 days"
    )
    fix = (
        "make each caller write through TenantScopedClient or set app.actor in its transaction "
        "(see the README, 'Service-role rule: report, then enforce'), then run "
        "`hardening service-role-mode enforce`."
    )
    return False, f"report mode since {state.set_at:%Y-%m-%d %H:%M} UTC; {seen}", fix
