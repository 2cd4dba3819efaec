"""Is the database still hardened? One named green/red line per guarantee, read from the catalog.

The migrations put the guarantees in place once; this checks they are still there, because any
superuser, console click or hand-written migration can quietly undo one (drop a foreign key,
disable a trigger, add a policy for ``anon``). Each check is a plain function taking a read-only
connection and returning a ``CheckLine`` with the reason and the fix when it is red.

Tables are *found*, not listed: every table with a ``tenant_id`` column, in ``public`` or any other
schema of the app (``db/tenant_tables.py``), is tenant-scoped, so a table added tomorrow is held to
the same rules. Besides the project's own guarantees it covers the RLS-related lints of Supabase's
database linter (splinter): RLS disabled in public, policies on a table whose RLS is off, RLS on
with no policy, mutable function search_path, per-row auth calls in policies (auth_rls_initplan),
multiple permissive policies, security-definer views and SECURITY DEFINER functions anon or
authenticated can call (0028/0029).
Beyond splinter it follows tenant data to where those roles reach it without RLS: views over
tenant tables in any schema without ``security_invoker``, and their privileges on such views,
materialized views and tenant tables' sequences. Where a lint and a project line would report
the same fact, the lint's scope is narrowed so one breakage turns one line red.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import psycopg
from psycopg import sql

from hardening_pipeline.db.connection import connect, table_exists
from hardening_pipeline.db.ddl_recording import EVENT_TRIGGERS as DDL_EVENT_TRIGGERS
from hardening_pipeline.db.ddl_recording import read_ddl_recording
from hardening_pipeline.db.migrations import (
    MIGRATIONS_DIR,
    compare,
    discover_migrations,
    read_applied,
)
from hardening_pipeline.db.service_role_mode import read_mode, unattributed_sources
from hardening_pipeline.db.shipped_functions import changed_functions, shipped_event_triggers
from hardening_pipeline.db.tenant_tables import (
    SYSTEM_SCHEMAS,
    TenantTable,
    display_name,
    find_tenant_tables,
)
from hardening_pipeline.errors import HardeningError
from hardening_pipeline.hardening.policy_exprs import (
    parse_node_tree,
    row_columns,
    tenant_comparisons,
)
from hardening_pipeline.hardening.seals import verify_seal_chain
from hardening_pipeline.hardening.seals.anchor import read_anchor

if TYPE_CHECKING:
    from hardening_pipeline.backup.crypto import Keyring
    from hardening_pipeline.backup.store import BackupStore

SCHEMA = "public"


@dataclass(frozen=True)
class CheckLine:
    """One guarantee: green or red, why, and (when red) how to fix it."""

    name: str
    passed: bool
    detail: str
    fix: str = ""
    title: str = ""

    @property
    def runbook_anchor(self) -> str:
        return "status-" + self.name.replace("_", "-")


@dataclass(frozen=True)
class StatusReport:
    """Every line of one run, with when and against what it ran."""

    lines: list[CheckLine]
    started_at: datetime
    seconds: float
    database: str
    migrations_dir: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return all(line.passed for line in self.lines)

    @property
    def red(self) -> list[CheckLine]:
        return [line for line in self.lines if not line.passed]

    def as_dict(self) -> dict:
        return {
            "passed": self.passed,
            "started_at": self.started_at.isoformat(timespec="seconds"),
            "seconds": round(self.seconds, 3),
            "database": self.database,
            "migrations_dir": self.migrations_dir,
            "red": [line.name for line in self.red],
            "lines": [
                asdict(line) | {"runbook_anchor": line.runbook_anchor} for line in self.lines
            ],
        }


@dataclass(frozen=True)
class CheckContext:
    """What the checks need besides the connection.

    ``store`` and ``keyring`` are optional: given, the audit seal line also compares the
    database's seals with their MAC'd copies in the backup store and checks every MAC.
    """

    migrations_dir: Path = MIGRATIONS_DIR
    store: BackupStore | None = None
    keyring: Keyring | None = None
    # The sealing host's anchor file (HARDENING_STATE_DIR/audit-seal-anchor.json), if any.
    seal_anchor: Path | None = None


CheckFn = Callable[[psycopg.Connection, CheckContext], CheckLine]
CHECKS: list[tuple[str, str, CheckFn]] = []


def check(name: str, title: str) -> Callable[[Callable], CheckFn]:
    """Register a check; the order of registration is the order of the checklist."""

    def register(fn: Callable) -> CheckFn:
        def run(conn: psycopg.Connection, ctx: CheckContext) -> CheckLine:
            passed, detail, fix = fn(conn, ctx)
            return CheckLine(name, passed, detail, "" if passed else fix, title)

        run.__name__ = fn.__name__
        run.__doc__ = fn.__doc__
        CHECKS.append((name, title, run))
        return run

    return register


def _rows(conn: psycopg.Connection, query: str, params: Sequence | None = None) -> list[dict]:
    return conn.execute(query, params).fetchall()


def _names(items: Sequence[str], limit: int = 8) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" (+{len(items) - limit} more)" if len(items) > limit else "")


def _locked_tables(conn: psycopg.Connection) -> list[TenantTable]:
    # tenants has no tenant_id (it is the tenant) but is locked down the same way.
    return find_tenant_tables(conn, with_tenants=True)


def _oids(tables: Sequence[TenantTable]) -> list[int]:
    return [t.oid for t in tables]


def _literal(conn: psycopg.Connection, value: str) -> str:
    return sql.Literal(value).as_string(conn)


def _relation_oid(conn: psycopg.Connection, qualified: str) -> int:
    """The table's oid, or 0 (matches nothing) when it does not exist."""
    row = conn.execute("SELECT coalesce(to_regclass(%s)::oid, 0) AS oid", (qualified,)).fetchone()
    return int(row["oid"])


# --- migrations and constraints -------------------------------------------------------------------


@check("migrations_applied", "every migration file applied and unchanged (checksum)")
def check_migrations(conn: psycopg.Connection, ctx: CheckContext) -> tuple[bool, str, str]:
    states = compare(discover_migrations(ctx.migrations_dir), read_applied(conn))
    bad = {
        kind: [s.filename for s in states if s.state == kind]
        for kind in ("pending", "changed", "unknown")
    }
    if not any(bad.values()):
        return True, f"{len(states)} applied, checksums match", ""
    detail = "; ".join(f"{kind}: {_names(files)}" for kind, files in bad.items() if files)
    fix = (
        "changed: restore the applied file(s) from git and put the change in a new numbered "
        "migration; pending: run `hardening migrate`; unknown: update the checkout."
    )
    return False, detail, fix


@check("messages_unit_id_not_null", "messages.unit_id (and development_id) NOT NULL")
def check_not_null(conn: psycopg.Connection, ctx: CheckContext) -> tuple[bool, str, str]:
    rows = _rows(
        conn,
        "SELECT a.attname, a.attnotnull FROM pg_catalog.pg_attribute a "
        "WHERE a.attrelid = to_regclass('public.messages') "
        "AND a.attname IN ('unit_id', 'development_id') AND NOT a.attisdropped",
    )
    nullable = sorted(r["attname"] for r in rows if not r["attnotnull"])
    missing = sorted({"unit_id", "development_id"} - {r["attname"] for r in rows})
    if not nullable and not missing:
        return True, "both NOT NULL", ""
    detail = "; ".join(
        part
        for part in (
            f"nullable: messages.{', messages.'.join(nullable)}" if nullable else "",
            f"missing column(s): {', '.join(missing)}" if missing else "",
        )
        if part
    )
    fix = (
        "find NULL rows with the orphaned_messages canary and fix them, then "
        "ALTER TABLE public.messages ALTER COLUMN unit_id SET NOT NULL (and development_id)."
    )
    return False, detail, fix


# (table, columns, parent, parent columns): single-column keys here, composite ones below.
REQUIRED_FOREIGN_KEYS: list[tuple[str, tuple[str, ...], str, tuple[str, ...]]] = [
    ("developments", ("tenant_id",), "tenants", ("id",)),
    ("units", ("tenant_id",), "tenants", ("id",)),
    ("messages", ("unit_id",), "units", ("id",)),
    ("messages", ("development_id",), "developments", ("id",)),
    ("messages", ("tenant_id",), "tenants", ("id",)),
    ("onboarding_attempts", ("tenant_id",), "tenants", ("id",)),
]
TENANT_CONSISTENCY_KEYS: list[tuple[str, tuple[str, ...], str, tuple[str, ...]]] = [
    ("units", ("development_id", "tenant_id"), "developments", ("id", "tenant_id")),
    (
        "messages",
        ("unit_id", "development_id", "tenant_id"),
        "units",
        ("id", "development_id", "tenant_id"),
    ),
]

_FOREIGN_KEYS = """
    SELECT c.conname, ch.relname AS tbl, pa.relname AS parent, c.convalidated, c.confdeltype,
           ARRAY(SELECT a.attname::text FROM unnest(c.conkey) WITH ORDINALITY k(num, pos)
                 JOIN pg_catalog.pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.num
                 ORDER BY k.pos) AS cols,
           ARRAY(SELECT a.attname::text FROM unnest(c.confkey) WITH ORDINALITY k(num, pos)
                 JOIN pg_catalog.pg_attribute a ON a.attrelid = c.confrelid AND a.attnum = k.num
                 ORDER BY k.pos) AS parent_cols,
           -- ALTER TABLE ... DISABLE TRIGGER ALL switches a key off while it still "exists"
           NOT EXISTS (SELECT 1 FROM pg_catalog.pg_trigger t
                       WHERE t.tgconstraint = c.oid AND t.tgenabled = 'D') AS enforced
    FROM pg_catalog.pg_constraint c
    JOIN pg_catalog.pg_class ch ON ch.oid = c.conrelid
    JOIN pg_catalog.pg_class pa ON pa.oid = c.confrelid
    JOIN pg_catalog.pg_namespace n ON n.oid = ch.relnamespace
    WHERE c.contype = 'f' AND n.nspname = %s
"""


def _check_keys(
    conn: psycopg.Connection, required: list[tuple[str, tuple[str, ...], str, tuple[str, ...]]]
) -> tuple[bool, str, list[str]]:
    present = _rows(conn, _FOREIGN_KEYS, (SCHEMA,))
    problems: list[str] = []
    for table, cols, parent, parent_cols in required:
        label = f"{table}({', '.join(cols)}) -> {parent}({', '.join(parent_cols)})"
        matches = [
            r
            for r in present
            if r["tbl"] == table
            and tuple(r["cols"]) == cols
            and r["parent"] == parent
            and tuple(r["parent_cols"]) == parent_cols
        ]
        if not matches:
            problems.append(f"missing {label}")
            continue
        good = [r for r in matches if r["convalidated"] and r["confdeltype"] == "r"]
        if not good:
            r = matches[0]
            why = []
            if not r["convalidated"]:
                why.append("NOT VALID")
            if r["confdeltype"] != "r":
                action = {"a": "NO ACTION", "c": "CASCADE", "n": "SET NULL", "d": "SET DEFAULT"}
                why.append(f"ON DELETE {action.get(r['confdeltype'], r['confdeltype'])}")
            problems.append(f"{r['conname']} ({label}) is {' and '.join(why)}")
        elif not any(r["enforced"] for r in good):
            problems.append(f"{good[0]['conname']} ({label}) has its triggers disabled")
    return not problems, f"{len(required)} present, validated, ON DELETE RESTRICT", problems


@check("foreign_keys_restrict", "required foreign keys present, validated, ON DELETE RESTRICT")
def check_foreign_keys(conn: psycopg.Connection, ctx: CheckContext) -> tuple[bool, str, str]:
    ok, good, problems = _check_keys(conn, REQUIRED_FOREIGN_KEYS)
    fix = (
        "recreate the key as ADD CONSTRAINT ... FOREIGN KEY ... ON DELETE RESTRICT NOT VALID, "
        "then VALIDATE CONSTRAINT (run the orphaned_messages canary first), in a new migration; "
        "re-enable disabled triggers with ALTER TABLE ... ENABLE TRIGGER ALL."
    )
    return ok, good if ok else "; ".join(problems), fix


@check("tenant_consistency_keys", "composite tenant-consistency keys present and validated")
def check_composite_keys(conn: psycopg.Connection, ctx: CheckContext) -> tuple[bool, str, str]:
    ok, good, problems = _check_keys(conn, TENANT_CONSISTENCY_KEYS)
    fix = (
        "run the tenant_misalignment canary and fix what it finds, then re-add the composite key "
        "(it needs the matching UNIQUE on the parent, e.g. units (id, development_id, tenant_id)) "
        "with ON DELETE RESTRICT NOT VALID + VALIDATE CONSTRAINT in a new migration."
    )
    return ok, good if ok else "; ".join(problems), fix


# --- audit log ------------------------------------------------------------------------------------

_TRIGGERS = """
    SELECT c.oid, c.relname, t.tgname, p.proname, t.tgenabled, t.tgtype
    FROM pg_catalog.pg_trigger t
    JOIN pg_catalog.pg_class c ON c.oid = t.tgrelid
    JOIN pg_catalog.pg_proc p ON p.oid = t.tgfoid
    JOIN pg_catalog.pg_namespace pn ON pn.oid = p.pronamespace
    WHERE NOT t.tgisinternal AND c.oid = ANY (%s::oid[]) AND pn.nspname = 'hardening'
"""
# Capture triggers with one argument cast the tenant column to uuid (011 marks the others with a
# second argument): on a column of another type every write to the table fails.
_UUID_CAST_ON_OTHER_TYPES = """
    SELECT n.nspname, c.relname, t.tgname, a.attname,
           format_type(a.atttypid, a.atttypmod) AS type
    FROM pg_catalog.pg_trigger t
    JOIN pg_catalog.pg_class c ON c.oid = t.tgrelid
    JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
    JOIN pg_catalog.pg_proc p ON p.oid = t.tgfoid
    JOIN pg_catalog.pg_namespace pn ON pn.oid = p.pronamespace
    JOIN pg_catalog.pg_attribute a ON a.attrelid = t.tgrelid
        AND a.attname = split_part(encode(t.tgargs, 'escape'), '\\000', 1)
    WHERE NOT t.tgisinternal AND c.oid = ANY (%s::oid[]) AND pn.nspname = 'hardening'
      AND p.proname IN ('audit_capture_insert', 'audit_capture_update', 'audit_capture_delete')
      AND t.tgnargs = 1 AND a.atttypid <> 'uuid'::regtype
    ORDER BY n.nspname, c.relname, t.tgname
"""
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


@check("audit_append_only_guard", "audit_events append-only guard present and ENABLE ALWAYS")
def check_append_only(conn: psycopg.Connection, ctx: CheckContext) -> tuple[bool, str, str]:
    guards = [
        r
        for r in _rows(conn, _TRIGGERS, ([_relation_oid(conn, "public.audit_events")],))
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
    tables = [t for t in _locked_tables(conn) if (t.schema, t.name) != ("public", "audit_events")]
    triggers = _rows(conn, _TRIGGERS, (_oids(tables),))
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
    problems += changed_functions(conn, list(CAPTURE_FUNCTIONS))
    for r in _rows(conn, _UUID_CAST_ON_OTHER_TYPES, (_oids(tables),)):
        problems.append(
            f"{display_name(r['nspname'], r['relname'])}: every write fails, {r['tgname']} casts "
            f"{r['attname']} ({r['type']}) to uuid"
        )
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
        f"SELECT hardening.lock_down_tenant_table({_literal(conn, t.quoted)}::regclass);"
        for t in uncovered
    )
    fix = (
        (f"for a table without them, as the migration role: {lock_down} " if uncovered else "")
        + "for a capture function that differs: re-create it as the last migration file that "
        "defines it has it (CREATE OR REPLACE) and find who changed it; "
        "for a set that casts a non-uuid tenant column: drop it and SELECT "
        "hardening.install_audit_capture('<schema>.<table>'::regclass, 'tenant_id') in a new "
        "migration; for a disabled one: ALTER TABLE <schema>.<table> ENABLE ALWAYS TRIGGER "
        "<trigger>."
    )
    return False, "; ".join(problems), fix


_ADOPTED_POLICIES = """
    SELECT m.table_name, m.tenant_policy, p.polpermissive
    FROM hardening.managed_tables m
    LEFT JOIN pg_catalog.pg_policy p
        ON p.polrelid = pg_catalog.to_regclass('public.' || quote_ident(m.table_name))
       AND p.polname = m.tenant_policy
    WHERE NOT m.created_by_kit AND m.rls_was_enabled
    ORDER BY m.table_name
"""


@check(
    "adopted_tables_policies_narrow",
    "the kit's tenant policy on each table it adopted is AS RESTRICTIVE (it only narrows)",
)
def check_adopted_policies(conn: psycopg.Connection, ctx: CheckContext) -> tuple[bool, str, str]:
    if not table_exists(conn, "hardening.managed_tables"):
        return False, "hardening.managed_tables is missing", "run hardening migrate."
    rows = _rows(conn, _ADOPTED_POLICIES)
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


_AUDIT_WRITE_GRANTS = """
    SELECT coalesce(r.rolname, 'PUBLIC') AS grantee, x.privilege_type, NULL::text AS column_name
    FROM pg_catalog.pg_class c
    CROSS JOIN LATERAL aclexplode(coalesce(c.relacl, acldefault('r', c.relowner))) x
    LEFT JOIN pg_catalog.pg_roles r ON r.oid = x.grantee
    WHERE c.oid = to_regclass('public.audit_events')
      AND x.privilege_type IN ('UPDATE', 'DELETE', 'TRUNCATE')
    UNION ALL
    SELECT coalesce(r.rolname, 'PUBLIC'), x.privilege_type, a.attname::text
    FROM pg_catalog.pg_attribute a
    CROSS JOIN LATERAL aclexplode(a.attacl) x
    LEFT JOIN pg_catalog.pg_roles r ON r.oid = x.grantee
    WHERE a.attrelid = to_regclass('public.audit_events') AND a.attacl IS NOT NULL
      AND x.privilege_type = 'UPDATE'
    ORDER BY 1, 2
"""


@check("audit_events_no_write_grants", "no role holds UPDATE, DELETE or TRUNCATE on audit_events")
def check_audit_grants(conn: psycopg.Connection, ctx: CheckContext) -> tuple[bool, str, str]:
    rows = _rows(conn, _AUDIT_WRITE_GRANTS)
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
    "audit_ddl_recorded",
    "DDL on audit and tenant tables is recorded in audit_events (event triggers and recording "
    "functions as the kit's migrations define them, compared by digest, ENABLE ALWAYS), or the "
    "server never allowed it and the line says so",
)
def check_ddl_recorded(conn: psycopg.Connection, ctx: CheckContext) -> tuple[bool, str, str]:
    state = read_ddl_recording(conn)
    if not state.migrated:
        return False, "hardening.record_ddl() is missing", "run hardening migrate."
    if not state.triggers and not state.meant_to_be_installed and not state.installs:
        # Informational green: a migration role that may not create event triggers is the
        # platform's limit, not a broken guarantee; the README's trust model says what it costs.
        # The note is the database's word; ddl_recording_installs (020) says it was never
        # installed, which the role that could drop the triggers cannot unsay.
        return (
            True,
            f"{state.note or 'not installed'}; DDL on audited tables is not recorded "
            "(Supabase: supautils lets postgres create event triggers; elsewhere a superuser "
            "runs SELECT hardening.install_ddl_recording())",
            "",
        )
    problems = []
    if state.installs and not state.triggers:
        problems.append(
            f"installed {state.installs[-1]} but both event triggers are gone (the note says "
            f"{state.note!r})"
        )
    # The reference is the kit's own migration files, never the database being checked.
    shipped = shipped_event_triggers()
    for name in DDL_EVENT_TRIGGERS:
        if name not in state.triggers:
            if state.triggers or not state.installs:
                problems.append(f"event trigger {name} is missing")
            continue
        enabled, function = state.triggers[name]
        event, tags = state.events[name]
        want = shipped[name]
        if enabled != "A":
            problems.append(f"event trigger {name} is {_EVENT_ENABLED.get(enabled, enabled)}")
        if event != want.event:
            problems.append(f"event trigger {name} fires on {event}, not {want.event}")
        if tags and not want.filtered:
            problems.append(f"event trigger {name} fires only for {', '.join(tags)}")
        expected = f"hardening.{want.function}()"
        if function != expected:
            problems.append(f"event trigger {name} runs {function}, not {expected}")
    problems += changed_functions(conn, list(DDL_RECORDING_FUNCTIONS))
    if not problems:
        return (
            True,
            f"{', '.join(DDL_EVENT_TRIGGERS)} ENABLE ALWAYS for every command; "
            f"{len(DDL_RECORDING_FUNCTIONS)} recording functions match the kit's migrations",
            "",
        )
    fix = (
        "as a superuser: SELECT hardening.install_ddl_recording(); for a function that differs, "
        "re-create it as the last migration file that defines it has it (its CREATE FUNCTION "
        "statement, as CREATE OR REPLACE); then find out who changed it (the server log: DDL on "
        "event triggers is not itself recorded) and look for DDL on the audited tables since."
    )
    return False, "; ".join(problems), fix


# What record_ddl() and record_ddl_drop() run: replacing any of them switches recording off.
DDL_RECORDING_FUNCTIONS = ("record_ddl", "record_ddl_drop", "ddl_audited_table", "ddl_object_table")


_EVENT_ENABLED = {"O": "ENABLE (skipped in replica mode)", "R": "ENABLE REPLICA", "D": "DISABLED"}


@check(
    "audit_seal_chain",
    "audit_events matches its hash-chain seals (no sealed row changed, deleted or forged) and "
    "the unsealed window its high-water marks recorded (no rewound sequence, reused id or "
    "back-dated row); the chain reaches the sealing host's anchor (no newest seal deleted) and "
    "sealing is not held back past HARDENING_SEAL_MAX_LAG_MINUTES",
)
def check_audit_seals(conn: psycopg.Connection, ctx: CheckContext) -> tuple[bool, str, str]:
    # The database alone cannot reveal a rewrite of rows and seals together; with the store and
    # key (ctx.store, ctx.keyring) it can. See docs/audit-seal-format.md.
    result = verify_seal_chain(
        conn, store=ctx.store, keyring=ctx.keyring, anchor=read_anchor(ctx.seal_anchor)
    )
    return result.passed, result.detail, result.fix


@check(
    "tenant_key_ledger",
    "the tenant key ledger's copies (store, database) agree and hold every key a retained "
    "backup uses, unless erase-tenant destroyed it",
)
def check_tenant_key_ledger(conn: psycopg.Connection, ctx: CheckContext) -> tuple[bool, str, str]:
    from hardening_pipeline.backup.tenant_keys import ledger_status

    return ledger_status(conn, ctx.store, ctx.keyring)


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
        "unattributed callers in the last 7 days: " + _names([s.describe() for s in sources], 5)
        if sources
        else "no unattributed service_role writes in the last 7 days"
    )
    fix = (
        "make each caller write through TenantScopedClient or set app.actor in its transaction "
        "(see the README, 'Service-role rule: report, then enforce'), then run "
        "`hardening service-role-mode enforce`."
    )
    return False, f"report mode since {state.set_at:%Y-%m-%d %H:%M} UTC; {seen}", fix


# --- row-level security ---------------------------------------------------------------------------

_RLS = """
    SELECT c.oid, c.relname, c.relrowsecurity, c.relforcerowsecurity,
           EXISTS (SELECT 1 FROM pg_catalog.pg_policy p WHERE p.polrelid = c.oid) AS has_policy,
           EXISTS (SELECT 1 FROM pg_catalog.pg_attribute a WHERE a.attrelid = c.oid
                   AND a.attname = 'tenant_id' AND NOT a.attisdropped) AS tenant_scoped,
           (has_table_privilege('authenticated', c.oid, 'SELECT, INSERT, UPDATE, DELETE')
            OR has_table_privilege('anon', c.oid, 'SELECT, INSERT, UPDATE, DELETE'))
               AS api_facing,
           n.nspname
    FROM pg_catalog.pg_class c
    JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
    WHERE c.relkind IN ('r', 'p') AND NOT (n.nspname = ANY (%s))
      AND n.nspname NOT LIKE 'pg\\_%%'
      AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d
                      WHERE d.objid = c.oid AND d.deptype = 'e')
    ORDER BY n.nspname, c.relname
"""


def _rls_rows(conn: psycopg.Connection) -> list[dict]:
    roles = {r["rolname"] for r in _rows(conn, "SELECT rolname FROM pg_catalog.pg_roles")}
    if not {"anon", "authenticated"} <= roles:
        # has_table_privilege on a missing role raises; this is not a Supabase-style database.
        raise RuntimeError("roles anon and authenticated are missing; apply 001_core_schema.sql")
    return _rows(conn, _RLS, (list(SYSTEM_SCHEMAS),))


@check(
    "rls_tenant_tables", "RLS enabled and forced on every tenant-scoped table (found, not listed)"
)
def check_rls_tenant(conn: psycopg.Connection, ctx: CheckContext) -> tuple[bool, str, str]:
    locked = {t.oid: t for t in _locked_tables(conn)}
    rows = [r | {"table": locked[r["oid"]]} for r in _rls_rows(conn) if r["oid"] in locked]
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
        return True, f"{len(rows)} tables: {_names([r['table'].display for r in rows])}", ""
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
    locked = set(_oids(_locked_tables(conn)))
    bad = [
        r["relname"]
        for r in _rls_rows(conn)
        if r["nspname"] == SCHEMA and r["oid"] not in locked and not r["relrowsecurity"]
    ]
    if not bad:
        return True, "no table in public without RLS", ""
    fix = (
        "public is what PostgREST exposes: "
        + " ".join(f"ALTER TABLE public.{name} ENABLE ROW LEVEL SECURITY;" for name in bad)
        + " and add policies, or move the table to a private schema."
    )
    return False, f"RLS disabled on {_names(bad)}", fix


@check(
    "policy_exists_rls_disabled",
    "splinter policy_exists_rls_disabled: no policies on a table with RLS off (other schemas)",
)
def check_policy_rls_off(conn: psycopg.Connection, ctx: CheckContext) -> tuple[bool, str, str]:
    # Tenant tables and the rest of public are covered by the two lines above, which name this
    # case in their detail.
    locked = set(_oids(_locked_tables(conn)))
    bad = [
        f"{r['nspname']}.{r['relname']}"
        for r in _rls_rows(conn)
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
    return False, f"policies exist but RLS is off on {_names(bad)}", fix


@check(
    "rls_enabled_no_policy",
    "splinter rls_enabled_no_policy: API-facing tables with RLS on have a policy",
)
def check_rls_no_policy(conn: psycopg.Connection, ctx: CheckContext) -> tuple[bool, str, str]:
    bad = [
        f"{r['nspname']}.{r['relname']}"
        for r in _rls_rows(conn)
        if r["relrowsecurity"] and not r["has_policy"] and r["api_facing"]
    ]
    if not bad:
        return True, "every API-facing table with RLS has a policy", ""
    fix = (
        "RLS with no policy denies every row to authenticated: add the intended policy, or "
        "REVOKE the grants if the table is not meant for the API."
    )
    return False, f"RLS on but no policy: {_names(bad)}", fix


_POLICIES = """
    SELECT n.nspname, c.relname, p.polname, p.polcmd, p.polpermissive,
           ARRAY(SELECT CASE WHEN r = 0 THEN 'PUBLIC' ELSE pg_catalog.pg_get_userbyid(r)::text END
                 FROM unnest(p.polroles) r) AS roles,
           pg_catalog.pg_get_expr(p.polqual, p.polrelid) AS qual,
           pg_catalog.pg_get_expr(p.polwithcheck, p.polrelid) AS with_check
    FROM pg_catalog.pg_policy p
    JOIN pg_catalog.pg_class c ON c.oid = p.polrelid
    JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
    WHERE NOT (n.nspname = ANY (%s))
    ORDER BY n.nspname, c.relname, p.polname
"""


def _policies(conn: psycopg.Connection) -> list[dict]:
    return _rows(conn, _POLICIES, (list(SYSTEM_SCHEMAS),))


@check("no_anon_or_public_policies", "no policy on tenant data applies to anon or PUBLIC")
def check_anon_policies(conn: psycopg.Connection, ctx: CheckContext) -> tuple[bool, str, str]:
    # A public read policy on a table without tenant data (profiles, say) is the app's intent.
    tenant_data = {(r["nspname"], r["relname"]) for r in _rls_rows(conn) if r["tenant_scoped"]}
    tenant_data.add(("public", "tenants"))
    bad = [
        f"{p['polname']} on {p['nspname']}.{p['relname']} (to {', '.join(p['roles'])})"
        for p in _policies(conn)
        if {"anon", "PUBLIC"} & set(p["roles"]) and (p["nspname"], p["relname"]) in tenant_data
    ]
    if not bad:
        return True, "policies on tenant data name authenticated or internal roles only", ""
    fix = "DROP POLICY <name> ON <table>; recreate it TO authenticated if it is needed."
    return False, _names(bad), fix


_ANON_GRANTS = """
    SELECT c.oid, coalesce(r.rolname, 'PUBLIC') AS grantee, x.privilege_type,
           NULL::text AS column_name
    FROM pg_catalog.pg_class c
    CROSS JOIN LATERAL aclexplode(c.relacl) x
    LEFT JOIN pg_catalog.pg_roles r ON r.oid = x.grantee
    WHERE c.oid = ANY (%(tables)s::oid[]) AND (x.grantee = 0 OR r.rolname = 'anon')
    UNION ALL
    SELECT c.oid, coalesce(r.rolname, 'PUBLIC'), x.privilege_type, a.attname::text
    FROM pg_catalog.pg_attribute a
    JOIN pg_catalog.pg_class c ON c.oid = a.attrelid
    CROSS JOIN LATERAL aclexplode(a.attacl) x
    LEFT JOIN pg_catalog.pg_roles r ON r.oid = x.grantee
    WHERE c.oid = ANY (%(tables)s::oid[]) AND a.attacl IS NOT NULL
      AND (x.grantee = 0 OR r.rolname = 'anon')
    ORDER BY 1, 2, 3
"""


@check("no_anon_grants", "anon and PUBLIC hold no privileges on tenant tables")
def check_anon_grants(conn: psycopg.Connection, ctx: CheckContext) -> tuple[bool, str, str]:
    tables = {t.oid: t for t in _locked_tables(conn)}
    rows = _rows(conn, _ANON_GRANTS, {"tables": list(tables)})
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
    return False, _names(held), " ".join(revokes)


_API_DDL_PRIVILEGES = """
    SELECT role, c.oid, priv
    FROM pg_catalog.pg_class c
    CROSS JOIN unnest(%(roles)s::text[]) role
    CROSS JOIN unnest(ARRAY['TRIGGER', 'TRUNCATE', 'REFERENCES']) priv
    WHERE c.oid = ANY (%(tables)s::oid[])
      -- CASE, not AND: has_table_privilege raises for a role that does not exist.
      AND CASE WHEN EXISTS (SELECT 1 FROM pg_catalog.pg_roles r WHERE r.rolname = role)
               THEN pg_catalog.has_table_privilege(role, c.oid, priv) END
    ORDER BY 1, 2, 3
"""


@check(
    "api_roles_no_trigger_or_truncate",
    "authenticated and service_role hold no TRIGGER, TRUNCATE or REFERENCES on tenant tables",
)
def check_api_ddl_privileges(conn: psycopg.Connection, ctx: CheckContext) -> tuple[bool, str, str]:
    # TRIGGER lets the role hang a trigger on every tenant's writes; TRUNCATE skips RLS. On
    # Supabase a table created after migrate gets both from the default privileges.
    tables = {t.oid: t for t in _locked_tables(conn)}
    rows = _rows(
        conn,
        _API_DDL_PRIVILEGES,
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
    return False, _names(held), fix


_TENANT_INDEXED = """
    SELECT c.oid,
           EXISTS (SELECT 1 FROM pg_catalog.pg_index i
                   JOIN pg_catalog.pg_attribute ia
                     ON ia.attrelid = i.indrelid AND ia.attnum = i.indkey[0]
                   WHERE i.indrelid = c.oid AND ia.attname = 'tenant_id'
                     AND i.indisvalid AND i.indpred IS NULL) AS indexed
    FROM pg_catalog.pg_class c
    WHERE c.oid = ANY (%s::oid[])
"""


@check("tenant_id_indexed", "tenant_id is the leading column of a valid index on every table")
def check_tenant_index(conn: psycopg.Connection, ctx: CheckContext) -> tuple[bool, str, str]:
    tables = {t.oid: t for t in find_tenant_tables(conn)}
    rows = _rows(conn, _TENANT_INDEXED, (list(tables),))
    bad = [tables[r["oid"]].display for r in rows if not r["indexed"]]
    if not bad:
        return True, f"{len(rows)} tables", ""
    fix = (
        "CREATE INDEX CONCURRENTLY <table>_tenant_id_idx ON <schema>.<table> (tenant_id) "
        "(policies filter on tenant_id; without it every query scans the table)."
    )
    return False, f"no usable tenant_id index on {_names(bad)}", fix


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
    for p in _policies(conn):
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
    return False, _names(bad), fix


@check(
    "multiple_permissive_policies",
    "splinter multiple_permissive_policies: one permissive policy per table, role and action",
)
def check_permissive(conn: psycopg.Connection, ctx: CheckContext) -> tuple[bool, str, str]:
    actions = {"r": ["SELECT"], "a": ["INSERT"], "w": ["UPDATE"], "d": ["DELETE"]}
    every = ["SELECT", "INSERT", "UPDATE", "DELETE"]
    seen: dict[tuple[str, str, str], list[str]] = {}
    for p in _policies(conn):
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
    return False, _names(bad, 5), fix


# --- what the policies and rules on tenant tables allow -------------------------------------------
# Judged from the expression trees Postgres evaluates (pg_policy.polqual/polwithcheck) and from
# pg_rewrite and pg_depend, then probed: never from policy names or deparsed text.

_TENANT_POLICIES = """
    SELECT c.oid, p.polname, p.polcmd, p.polpermissive,
           ARRAY(SELECT CASE WHEN r = 0 THEN 'PUBLIC' ELSE pg_catalog.pg_get_userbyid(r)::text END
                 FROM unnest(p.polroles) r) AS roles,
           p.polqual::text AS qual, p.polwithcheck::text AS with_check,
           pg_catalog.pg_get_expr(p.polqual, p.polrelid) AS qual_sql,
           pg_catalog.pg_get_expr(p.polwithcheck, p.polrelid) AS with_check_sql,
           (SELECT a.attnum FROM pg_catalog.pg_attribute a
            WHERE a.attrelid = c.oid AND NOT a.attisdropped
              AND a.attname = CASE WHEN c.oid = pg_catalog.to_regclass('public.tenants')
                                   THEN 'id' ELSE 'tenant_id' END)
               AS tenant_attnum
    FROM pg_catalog.pg_policy p
    JOIN pg_catalog.pg_class c ON c.oid = p.polrelid
    WHERE c.oid = ANY (%(tables)s::oid[])
    ORDER BY c.oid, p.polname
"""
# Equality as initdb defined it: an operator someone added (even one named =) proves nothing.
_BUILTIN_EQUALITY = """
    SELECT o.oid FROM pg_catalog.pg_operator o
    WHERE o.oid = ANY (%(opnos)s::oid[]) AND o.oprname = '='
      AND o.oprnamespace = 'pg_catalog'::regnamespace AND o.oid < %(first)s
"""
_POLICY_COMMANDS = {"r": "SELECT", "a": "INSERT", "w": "UPDATE", "d": "DELETE"}


def _policy_trees(conn: psycopg.Connection) -> list[dict]:
    """The policies on tenant tables, each expression parsed and judged."""
    tables = {t.oid: t for t in _locked_tables(conn)}
    rows = _rows(conn, _TENANT_POLICIES, {"tables": list(tables)})
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
        for e in _rows(
            conn, _BUILTIN_EQUALITY, {"opnos": sorted(opnos), "first": _FIRST_NORMAL_OID}
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
            for r in _rows(conn, "SELECT table_name, tenant_policy FROM hardening.managed_tables")
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
            many = _rows(conn, "SELECT kind = 'membership' AS many FROM hardening.tenant_resolver")
            fixes.append(
                "SELECT hardening.use_tenant_policies("
                f"{'true' if many and many[0]['many'] else 'false'});"
            )
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
    detail = _names(
        [f"{what}: {', '.join(dict.fromkeys(how))}" for what, how in problems.items()], 5
    )
    fixes.append(
        "make each named app policy compare the row with the caller, e.g. USING (tenant_id = "
        "(SELECT hardening.current_tenant_id())), or add the kit's AS RESTRICTIVE tenant policy "
        "to the table; a policy that admits every row of a tenant table admits other tenants'."
    )
    return False, detail + " admit every row whatever the tenant", " ".join(fixes)


_TENANT_RULES = """
    SELECT r.rulename, r.is_instead,
           (SELECT pg_catalog.format('%%I.%%I', n.nspname, c.relname)
            FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
            WHERE c.oid = r.ev_class) AS on_rel,
           CASE r.ev_type WHEN '1' THEN 'SELECT' WHEN '2' THEN 'UPDATE' WHEN '3' THEN 'INSERT'
                          ELSE 'DELETE' END AS event,
           pg_catalog.format('%%I', r.rulename) AS quoted,
           ARRAY(SELECT DISTINCT d.refobjid::regclass::text
                 FROM pg_catalog.pg_depend d
                 WHERE d.classid = 'pg_catalog.pg_rewrite'::regclass AND d.objid = r.oid
                   AND d.refclassid = 'pg_catalog.pg_class'::regclass
                   AND d.refobjid = ANY (%(tables)s::oid[])
                   AND d.refobjid <> r.ev_class) AS touches
    FROM pg_catalog.pg_rewrite r
    WHERE r.rulename <> '_RETURN'
      AND (r.ev_class = ANY (%(tables)s::oid[])
           OR EXISTS (SELECT 1 FROM pg_catalog.pg_depend d
                      WHERE d.classid = 'pg_catalog.pg_rewrite'::regclass AND d.objid = r.oid
                        AND d.refclassid = 'pg_catalog.pg_class'::regclass
                        AND d.refobjid = ANY (%(tables)s::oid[])))
    ORDER BY 3, 1
"""


@check(
    "no_rules_on_tenant_tables",
    "no rewrite rule on a tenant table or reading/writing one (a rule's actions run with the "
    "table owner's rights, around the caller's policies)",
)
def check_tenant_rules(conn: psycopg.Connection, ctx: CheckContext) -> tuple[bool, str, str]:
    tables = _oids(_locked_tables(conn))
    rules = _rows(conn, _TENANT_RULES, {"tables": tables})
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
    return False, _names(found, 5), fix.strip()


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
        first = _rows(conn, "SELECT id::text AS id FROM public.tenants ORDER BY id LIMIT 1")
        tenant = first[0]["id"] if first else tenant
    resolver = (
        _rows(conn, "SELECT * FROM hardening.tenant_resolver")
        if table_exists(conn, "hardening.tenant_resolver")
        else []
    )
    claims: dict = {"sub": str(uuid.uuid4()), "role": "authenticated", "aud": "authenticated"}
    own = [tenant]
    r = resolver[0] if resolver else {"kind": "claim", "claim_paths": None}
    if r["kind"] == "membership":
        member = _rows(
            conn,
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
        )
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
    _require_api_roles(conn)
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
    tables = _locked_tables(conn)
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
    return False, _names(leaks + failures, 5), fix


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
    return False, _names(bad), fix


@check(
    "function_search_path_mutable",
    "splinter function_search_path_mutable: other functions have a fixed search_path",
)
def check_invoker_path(conn: psycopg.Connection, ctx: CheckContext) -> tuple[bool, str, str]:
    bad = _mutable_path_functions(conn, definer=False)
    if not bad:
        return True, "every function sets search_path", ""
    fix = "ALTER FUNCTION <name>(<args>) SET search_path = '' (and schema-qualify its body)."
    return False, _names(bad), fix


def _mutable_path_functions(conn: psycopg.Connection, *, definer: bool) -> list[str]:
    rows = _rows(
        conn,
        """
        SELECT n.nspname || '.' || p.proname
               || '(' || pg_catalog.pg_get_function_identity_arguments(p.oid) || ')' AS fn
        FROM pg_catalog.pg_proc p
        JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
        WHERE NOT (n.nspname = ANY (%s)) AND n.nspname NOT LIKE 'pg\\_%%'
          AND p.prosecdef = %s
          AND p.prokind IN ('f', 'p')
          AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d
                          WHERE d.objid = p.oid AND d.deptype = 'e')
          AND NOT EXISTS (SELECT 1 FROM unnest(coalesce(p.proconfig, '{}')) cfg
                          WHERE cfg LIKE 'search\\_path=%%')
        ORDER BY 1
        """,
        (list(SYSTEM_SCHEMAS), definer),
    )
    return [r["fn"] for r in rows]


@check("security_definer_view", "splinter security_definer_view: API views use security_invoker")
def check_views(conn: psycopg.Connection, ctx: CheckContext) -> tuple[bool, str, str]:
    # Views that read tenant tables are tenant_views_security_invoker's (any schema).
    over_tenant = {r["oid"] for r in _views_over_tenant_tables(conn)}
    rows = _rows(
        conn,
        """
        SELECT c.oid, n.nspname || '.' || c.relname AS view
        FROM pg_catalog.pg_class c
        JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
        WHERE c.relkind IN ('v', 'm') AND n.nspname = %s
          AND NOT EXISTS (SELECT 1 FROM unnest(coalesce(c.reloptions, '{}')) o
                          WHERE lower(o) IN ('security_invoker=true', 'security_invoker=on',
                                             'security_invoker=1'))
          AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d
                          WHERE d.objid = c.oid AND d.deptype = 'e')
        ORDER BY 1
        """,
        (SCHEMA,),
    )
    bad = [r["view"] for r in rows if r["oid"] not in over_tenant]
    if not bad:
        return True, "no views in public run with their owner's rights", ""
    fix = (
        "ALTER VIEW <view> SET (security_invoker = true): a view otherwise reads its tables as "
        "its owner, bypassing the caller's RLS."
    )
    return False, f"{_names(bad)} run as their owner", fix


# --- what anon and authenticated can reach around RLS (splinter 0028/0029 and beyond) -------------

API_ROLES = ("anon", "authenticated")
_INVOKER_OPTION = "security_invoker=(t|tr|tru|true|y|ye|yes|on|1)"


def _require_api_roles(conn: psycopg.Connection) -> None:
    roles = {r["rolname"] for r in _rows(conn, "SELECT rolname FROM pg_catalog.pg_roles")}
    if not set(API_ROLES) <= roles:
        # has_*_privilege on a missing role raises; this is not a Supabase-style database.
        raise RuntimeError("roles anon and authenticated are missing; apply 001_core_schema.sql")


_DEFINER_FUNCTIONS = """
    SELECT p.oid, n.nspname, p.proname, pg_catalog.pg_get_function_identity_arguments(p.oid) AS args
    FROM pg_catalog.pg_proc p
    JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
    WHERE p.prosecdef AND p.prokind IN ('f', 'p')
      -- trigger functions cannot be called, only fired
      AND p.prorettype NOT IN ('pg_catalog.trigger'::regtype, 'pg_catalog.event_trigger'::regtype)
      AND NOT (n.nspname = ANY (%(system)s)) AND n.nspname NOT LIKE 'pg\\_%%'
      -- a role reaches a function only through a schema it may use
      AND pg_catalog.has_schema_privilege(%(role)s, n.oid, 'USAGE')
      AND pg_catalog.has_function_privilege(%(role)s, p.oid, 'EXECUTE')
      AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d
                      WHERE d.objid = p.oid AND d.deptype = 'e')
    ORDER BY 2, 3, 4
"""
# What calls a function as the querying role, and which of the roles a fix could touch need
# EXECUTE for it to keep working. From the dependencies Postgres itself records: a policy's roles
# (RLS is not evaluated for BYPASSRLS roles), who may read a view, who may insert (a column
# default) or write (a CHECK, a trigger's WHEN), who may execute a function with a SQL-standard
# body. And, since SQL and PL/pgSQL bodies are stored as text, bodies that name it (by_name): a
# trigger function runs as whoever writes its tables, any other as whoever may execute it. A name
# found there only makes the fix more careful; it never turns a line green.
_FUNCTION_USERS = """
    SELECT d.refobjid AS fn,
           CASE d.classid
               WHEN 'pg_catalog.pg_policy'::regclass THEN
                   (SELECT pg_catalog.format('policy %%I on %%s (to %%s)', p.polname,
                                             p.polrelid::regclass,
                                             array_to_string(ARRAY(
                                                 SELECT CASE WHEN r = 0 THEN 'PUBLIC'
                                                             ELSE pg_catalog.pg_get_userbyid(r)
                                                        END FROM unnest(p.polroles) r), ', '))
                    FROM pg_catalog.pg_policy p WHERE p.oid = d.objid)
               WHEN 'pg_catalog.pg_rewrite'::regclass THEN
                   (SELECT 'view ' || r.ev_class::regclass::text
                    FROM pg_catalog.pg_rewrite r WHERE r.oid = d.objid)
               ELSE pg_catalog.pg_describe_object(d.classid, d.objid, d.objsubid)
           END AS used_by,
           ARRAY(
               SELECT role FROM unnest(%(roles)s::text[]) role
               JOIN pg_catalog.pg_roles pr ON pr.rolname = role
               WHERE CASE d.classid
                   WHEN 'pg_catalog.pg_policy'::regclass THEN
                       NOT pr.rolbypassrls AND EXISTS (
                           SELECT 1 FROM pg_catalog.pg_policy p WHERE p.oid = d.objid
                             AND (0 = ANY (p.polroles) OR pr.oid = ANY (p.polroles)))
                   WHEN 'pg_catalog.pg_rewrite'::regclass THEN EXISTS (
                       SELECT 1 FROM pg_catalog.pg_rewrite r WHERE r.oid = d.objid
                         AND pg_catalog.has_table_privilege(pr.oid, r.ev_class,
                                                            'SELECT, INSERT, UPDATE, DELETE'))
                   WHEN 'pg_catalog.pg_attrdef'::regclass THEN EXISTS (
                       SELECT 1 FROM pg_catalog.pg_attrdef a WHERE a.oid = d.objid
                         AND pg_catalog.has_any_column_privilege(pr.oid, a.adrelid, 'INSERT'))
                   WHEN 'pg_catalog.pg_constraint'::regclass THEN EXISTS (
                       SELECT 1 FROM pg_catalog.pg_constraint c WHERE c.oid = d.objid
                         AND c.conrelid <> 0
                         AND pg_catalog.has_any_column_privilege(pr.oid, c.conrelid,
                                                                 'INSERT, UPDATE'))
                   WHEN 'pg_catalog.pg_trigger'::regclass THEN EXISTS (
                       SELECT 1 FROM pg_catalog.pg_trigger t WHERE t.oid = d.objid
                         AND pg_catalog.has_table_privilege(pr.oid, t.tgrelid,
                                                            'INSERT, UPDATE, DELETE'))
                   WHEN 'pg_catalog.pg_proc'::regclass THEN
                       pg_catalog.has_function_privilege(pr.oid, d.objid, 'EXECUTE')
                   ELSE false
               END
               ORDER BY 1) AS needed_by,
           false AS by_name
    FROM pg_catalog.pg_depend d
    WHERE d.refclassid = 'pg_catalog.pg_proc'::regclass AND d.refobjid = ANY (%(fns)s::oid[])
      AND d.deptype = 'n'
    UNION ALL
    SELECT f.oid,
           'the body of ' || b.oid::regprocedure::text || ' (by name)',
           ARRAY(
               SELECT role FROM unnest(%(roles)s::text[]) role
               JOIN pg_catalog.pg_roles pr ON pr.rolname = role
               WHERE CASE WHEN b.prorettype = 'pg_catalog.trigger'::regtype
                          THEN EXISTS (
                              SELECT 1 FROM pg_catalog.pg_trigger t WHERE t.tgfoid = b.oid
                                AND pg_catalog.has_table_privilege(pr.oid, t.tgrelid,
                                                                   'INSERT, UPDATE, DELETE'))
                          ELSE pg_catalog.has_function_privilege(pr.oid, b.oid, 'EXECUTE') END
               ORDER BY 1),
           true
    FROM pg_catalog.pg_proc f
    JOIN pg_catalog.pg_proc b ON b.oid <> f.oid
     AND b.prosrc ~ ('\\m' || regexp_replace(f.proname, '([^[:alnum:]_])', '\\\\\\1', 'g')
                     || '\\M')
    JOIN pg_catalog.pg_namespace bn ON bn.oid = b.pronamespace
    JOIN pg_catalog.pg_language l ON l.oid = b.prolang AND l.lanname IN ('sql', 'plpgsql')
    WHERE f.oid = ANY (%(fns)s::oid[])
      AND NOT (bn.nspname = ANY (%(system)s)) AND bn.nspname NOT LIKE 'pg\\_%%'
    ORDER BY 1, 2
"""
# Roles a REVOKE ... FROM PUBLIC could take EXECUTE from besides the one the line is about.
_FIX_KEEPS = ("service_role",)
# A schema the API roles cannot use: PostgREST only calls functions in schemas they may use, while
# policies, views and defaults call functions by OID, so moving one there keeps them working.
_PRIVATE_SCHEMA_NAMES = ("private", "app_private", "private_functions")
_PRIVATE_SCHEMA = """
    SELECT s.name,
           n.oid IS NOT NULL AS present,
           n.oid IS NOT NULL AND EXISTS (
               SELECT 1 FROM unnest(%(roles)s::text[]) role
               WHERE EXISTS (SELECT 1 FROM pg_catalog.pg_roles r WHERE r.rolname = role)
                 AND pg_catalog.has_schema_privilege(role, n.oid, 'USAGE')) AS api_usable
    FROM unnest(%(names)s::text[]) WITH ORDINALITY AS s(name, pos)
    LEFT JOIN pg_catalog.pg_namespace n ON n.nspname = s.name
    ORDER BY s.pos
"""


def _private_schema(conn: psycopg.Connection) -> tuple[str, bool]:
    """The first candidate schema the API roles cannot use, and whether it exists already."""
    rows = _rows(
        conn, _PRIVATE_SCHEMA, {"names": list(_PRIVATE_SCHEMA_NAMES), "roles": list(API_ROLES)}
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
            if r != role
            and _rows(
                conn,
                "SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = %s "
                "AND pg_catalog.has_function_privilege(oid, %s::oid, 'EXECUTE')",
                (r, fn["oid"]),
            )
        ]
        fix = f"REVOKE EXECUTE ON FUNCTION {name} FROM PUBLIC, {role};"
        if keep:
            fix += f" GRANT EXECUTE ON FUNCTION {name} TO {', '.join(keep)};"
        note = (
            f"{fn['nspname']}.{fn['proname']} is used by {_names([u['used_by'] for u in users], 3)}"
            f", run as {', '.join(needed_by)}, which keep EXECUTE"
            if needed_by
            else ""
        )
        return fix, note
    by_name = [u["used_by"] for u in users if u["by_name"]]
    if by_name:
        # Moving it would break those calls, revoking it would break the role's: no SQL is safe.
        return (
            f"{fn['nspname']}.{fn['proname']} is called by name from {_names(by_name, 3)} and "
            f"{role} needs it: make it SECURITY INVOKER if it needs no owner rights, or move it "
            "to a schema the API cannot use and make those bodies name the new schema.",
            f"{fn['nspname']}.{fn['proname']} is used by "
            f"{_names([u['used_by'] for u in users if role in u['needed_by']], 3)}, which need "
            f"{role} to keep EXECUTE: no REVOKE is printed",
        )
    schema, present = private
    target = sql.Identifier(schema).as_string(conn)
    # IF NOT EXISTS: the other API role's line may print a move for the same report.
    create = "" if present else f"CREATE SCHEMA IF NOT EXISTS {target}; "
    fix = f"{create}ALTER FUNCTION {name} SET SCHEMA {target};"
    note = (
        f"{fn['nspname']}.{fn['proname']} is used by "
        f"{_names([u['used_by'] for u in users if role in u['needed_by']], 3)}, which need "
        f"{role} to keep EXECUTE: revoking it would break them, so the fix moves the function "
        f"to schema {schema}, which {role} cannot use (they call it by OID and keep working; "
        "calls by name elsewhere must name the new schema)"
    )
    return fix, note


def _definer_functions_for(conn: psycopg.Connection, role: str) -> tuple[bool, str, str]:
    _require_api_roles(conn)
    rows = _rows(conn, _DEFINER_FUNCTIONS, {"role": role, "system": list(SYSTEM_SCHEMAS)})
    if not rows:
        return True, f"no SECURITY DEFINER function is callable by {role}", ""
    names = [f"{r['nspname']}.{r['proname']}({r['args']})" for r in rows]
    users = _rows(
        conn,
        _FUNCTION_USERS,
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
        f"{role} can call {_names(names, 5)} with its owner's rights (RLS bypassed), e.g. "
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


_VIEWS_OVER_TENANT_TABLES = """
    WITH RECURSIVE view_deps AS (
        SELECT DISTINCT r.ev_class AS view_oid, d.refobjid AS dep_oid
        FROM pg_catalog.pg_rewrite r
        JOIN pg_catalog.pg_depend d
          ON d.classid = 'pg_catalog.pg_rewrite'::regclass AND d.objid = r.oid
         AND d.refclassid = 'pg_catalog.pg_class'::regclass AND d.refobjid <> r.ev_class
    ),
    over_tenant (view_oid, base_oid) AS (
        SELECT view_oid, dep_oid FROM view_deps WHERE dep_oid = ANY (%(tables)s::oid[])
        UNION
        SELECT vd.view_oid, o.base_oid
        FROM view_deps vd JOIN over_tenant o ON vd.dep_oid = o.view_oid
    )
    SELECT c.oid, c.relkind, n.nspname, c.relname,
           pg_catalog.format('%%I.%%I', n.nspname, c.relname) AS qualified,
           array_agg(DISTINCT b.relname::text ORDER BY b.relname::text) AS bases,
           EXISTS (SELECT 1 FROM unnest(coalesce(c.reloptions, '{}')) opt
                   WHERE opt ~* %(invoker)s) AS security_invoker,
           ARRAY(SELECT role || ' ' || priv
                 FROM unnest(%(roles)s::text[]) role,
                      unnest(ARRAY['SELECT', 'INSERT', 'UPDATE', 'DELETE', 'TRUNCATE',
                                   'REFERENCES', 'TRIGGER']) priv
                 WHERE pg_catalog.has_table_privilege(role, c.oid, priv)
                 ORDER BY 1) AS api_privileges
    FROM over_tenant o
    JOIN pg_catalog.pg_class c ON c.oid = o.view_oid
    JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
    JOIN pg_catalog.pg_class b ON b.oid = o.base_oid
    WHERE c.relkind IN ('v', 'm')
      AND NOT (n.nspname = ANY (%(system)s)) AND n.nspname NOT LIKE 'pg\\_%%'
    GROUP BY c.oid, c.relkind, n.nspname, c.relname, c.reloptions
    ORDER BY n.nspname, c.relname
"""


def _views_over_tenant_tables(conn: psycopg.Connection) -> list[dict]:
    """Views and materialized views that read a tenant table, directly or through other views."""
    _require_api_roles(conn)
    tables = _oids(_locked_tables(conn))
    return _rows(
        conn,
        _VIEWS_OVER_TENANT_TABLES,
        {
            "tables": tables,
            "invoker": f"^{_INVOKER_OPTION}$",
            "roles": list(API_ROLES),
            "system": list(SYSTEM_SCHEMAS),
        },
    )


@check(
    "tenant_views_security_invoker",
    "views over tenant tables run as the caller (security_invoker = true), in every schema",
)
def check_tenant_views(conn: psycopg.Connection, ctx: CheckContext) -> tuple[bool, str, str]:
    views = [v for v in _views_over_tenant_tables(conn) if v["relkind"] == "v"]
    bad = [v for v in views if not v["security_invoker"]]
    if not bad:
        return True, f"{len(views)} view(s) over tenant tables, all security_invoker", ""
    detail = _names([f"{v['qualified']} (reads {', '.join(v['bases'])})" for v in bad], 5)
    fix = " ".join(f"ALTER VIEW {v['qualified']} SET (security_invoker = true);" for v in bad[:5])
    return (
        False,
        f"{detail} read tenant rows with the owner's rights, bypassing every tenant policy",
        fix,
    )


_TENANT_SEQUENCES = """
    SELECT pg_catalog.format('%%I.%%I', sn.nspname, s.relname) AS qualified, t.relname AS tbl,
           ARRAY(SELECT role || ' ' || priv
                 FROM unnest(%(roles)s::text[]) role,
                      unnest(ARRAY['USAGE', 'SELECT', 'UPDATE']) priv
                 -- authenticated needs USAGE (nextval) to insert; SELECT shows every tenant's
                 -- volume (last_value) and UPDATE (setval) breaks every tenant's inserts.
                 WHERE NOT (role = 'authenticated' AND priv = 'USAGE')
                   AND pg_catalog.has_sequence_privilege(role, s.oid, priv)
                 ORDER BY 1) AS api_privileges
    FROM pg_catalog.pg_class s
    JOIN pg_catalog.pg_namespace sn ON sn.oid = s.relnamespace
    JOIN pg_catalog.pg_depend d
      ON d.classid = 'pg_catalog.pg_class'::regclass AND d.objid = s.oid
     AND d.refclassid = 'pg_catalog.pg_class'::regclass AND d.deptype IN ('a', 'i')
    JOIN pg_catalog.pg_class t ON t.oid = d.refobjid
    WHERE s.relkind = 'S' AND t.oid = ANY (%(tables)s::oid[])
    ORDER BY 1
"""


@check(
    "api_roles_reach_no_tenant_data",
    "anon/authenticated reach no tenant data around RLS: views, materialized views, sequences",
)
def check_api_privileges(conn: psycopg.Connection, ctx: CheckContext) -> tuple[bool, str, str]:
    problems: list[str] = []
    fixes: list[str] = []
    for v in _views_over_tenant_tables(conn):
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
    tables = _oids(_locked_tables(conn))
    for seq in _rows(conn, _TENANT_SEQUENCES, {"roles": list(API_ROLES), "tables": tables}):
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
    return False, _names(problems, 5), " ".join(fixes[:6])


# --- who can reach the audit owner, the kit's own objects, pg_catalog (015) ---------------------

AUDIT_OWNER = "hardening_audit_owner"
# The resolver functions every tenant policy calls as the querying role, and the report-mode
# hook the guard calls as service_role: the only kit functions the API roles may execute.
KIT_FUNCTIONS_FOR_API_ROLES = {
    "current_tenant_id": ("authenticated", "service_role"),
    "current_tenant_ids": ("authenticated", "service_role"),
    "membership_tenant_ids": ("authenticated", "service_role"),
    "as_uuid": ("authenticated", "service_role"),
    "allow_unattributed_write": ("service_role",),
}
_KIT_GRANTEES = ("PUBLIC", "anon", "authenticated", "service_role")

# A login role that is a member (directly or through other roles) and may SET ROLE to it or
# inherits it. PG16 added the SET option; before it, membership alone allows SET ROLE.
_AUDIT_OWNER_MEMBERS = """
    SELECT r.rolname
    FROM pg_catalog.pg_roles r
    WHERE r.rolcanlogin AND NOT r.rolsuper AND r.rolname <> %(owner)s
      AND (pg_catalog.pg_has_role(r.oid, %(owner)s, 'USAGE')
           OR pg_catalog.pg_has_role(r.oid, %(owner)s,
                  CASE WHEN current_setting('server_version_num')::int >= 160000
                       THEN 'SET' ELSE 'MEMBER' END))
    ORDER BY 1
"""
# Login roles that could grant themselves the membership: ADMIN OPTION on it, or (before PG16)
# CREATEROLE. That is the migration role on Supabase; the trust model trusts it like the owner.
_AUDIT_OWNER_ADMINS = """
    SELECT r.rolname
    FROM pg_catalog.pg_roles r
    WHERE r.rolcanlogin AND NOT r.rolsuper
      AND (EXISTS (SELECT 1 FROM pg_catalog.pg_auth_members m
                   WHERE m.roleid = %(owner)s::regrole AND m.member = r.oid AND m.admin_option)
           OR (r.rolcreaterole AND current_setting('server_version_num')::int < 160000))
    ORDER BY 1
"""


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
    members = [r["rolname"] for r in _rows(conn, _AUDIT_OWNER_MEMBERS, params)]
    admins = [r["rolname"] for r in _rows(conn, _AUDIT_OWNER_ADMINS, params)]
    if members:
        return (
            False,
            f"login role(s) {_names(members)} can SET ROLE {AUDIT_OWNER} or inherit it",
            f"REVOKE {AUDIT_OWNER} FROM <role>; (for a role that holds it through another "
            "role, revoke that role's membership instead).",
        )
    detail = "no login role is a member (superusers aside)"
    if admins:
        detail += (
            f"; {_names(admins)} could grant the membership (ADMIN OPTION, or CREATEROLE "
            "before PG16): "
            "trusted like the migration role; what they do is detected by the seals"
        )
    return True, detail, ""


_KIT_FUNCTION_GRANTS = """
    SELECT p.proname, p.oid::regprocedure::text AS fn, coalesce(r.rolname, 'PUBLIC') AS grantee,
           p.prosecdef
    FROM pg_catalog.pg_proc p
    CROSS JOIN LATERAL aclexplode(coalesce(p.proacl, acldefault('f', p.proowner))) x
    LEFT JOIN pg_catalog.pg_roles r ON r.oid = x.grantee
    WHERE p.pronamespace = 'hardening'::regnamespace
      AND coalesce(r.rolname, 'PUBLIC') = ANY(%(grantees)s)
    ORDER BY 2, 3
"""
_KIT_SEQUENCE_GRANTS = """
    SELECT c.oid::regclass::text AS seq, coalesce(r.rolname, 'PUBLIC') AS grantee,
           x.privilege_type,
           c.oid = pg_catalog.pg_get_serial_sequence('public.audit_events', 'id')::regclass AS audit
    FROM pg_catalog.pg_class c
    CROSS JOIN LATERAL aclexplode(coalesce(c.relacl, acldefault('s', c.relowner))) x
    LEFT JOIN pg_catalog.pg_roles r ON r.oid = x.grantee
    WHERE c.relkind = 'S'
      AND (c.relnamespace = 'hardening'::regnamespace
           OR c.oid = pg_catalog.pg_get_serial_sequence('public.audit_events', 'id')::regclass)
      AND coalesce(r.rolname, 'PUBLIC') = ANY(%(grantees)s)
    ORDER BY 1, 2, 3
"""
_KIT_DEFAULT_GRANTS = """
    SELECT pg_catalog.pg_get_userbyid(d.defaclrole) AS owner, d.defaclobjtype AS kind,
           coalesce(r.rolname, 'PUBLIC') AS grantee
    FROM pg_catalog.pg_default_acl d
    CROSS JOIN LATERAL aclexplode(d.defaclacl) x
    LEFT JOIN pg_catalog.pg_roles r ON r.oid = x.grantee
    WHERE d.defaclnamespace = 'hardening'::regnamespace
      AND coalesce(r.rolname, 'PUBLIC') = ANY(%(grantees)s)
    ORDER BY 1, 2, 3
"""


@check(
    "kit_objects_closed_to_api_roles",
    "the kit's functions and sequences are closed to PUBLIC, anon, authenticated and "
    "service_role (the tenant resolver and the report-mode hook aside), default privileges too",
)
def check_kit_objects(conn: psycopg.Connection, ctx: CheckContext) -> tuple[bool, str, str]:
    params = {"grantees": list(_KIT_GRANTEES)}
    problems: list[str] = []
    fixes: list[str] = []
    for r in _rows(conn, _KIT_FUNCTION_GRANTS, params):
        if r["grantee"] in KIT_FUNCTIONS_FOR_API_ROLES.get(r["proname"], ()):
            continue
        if r["prosecdef"] and r["grantee"] in API_ROLES:
            continue  # the *_security_definer_function_executable lines name these
        problems.append(f"{r['grantee']} EXECUTE on {r['fn']}")
        fixes.append(f"REVOKE EXECUTE ON FUNCTION {r['fn']} FROM {r['grantee']};")
    for r in _rows(conn, _KIT_SEQUENCE_GRANTS, params):
        if r["audit"] and (
            r["grantee"] == "anon"
            or (r["grantee"] == "authenticated" and r["privilege_type"] != "USAGE")
        ):
            continue  # api_roles_reach_no_tenant_data names these
        problems.append(f"{r['grantee']} {r['privilege_type']} on sequence {r['seq']}")
        fixes.append(f"REVOKE ALL ON SEQUENCE {r['seq']} FROM {r['grantee']};")
    kinds = {"r": "TABLES", "S": "SEQUENCES", "f": "FUNCTIONS", "T": "TYPES", "n": "SCHEMAS"}
    for r in _rows(conn, _KIT_DEFAULT_GRANTS, params):
        kind = kinds.get(r["kind"], r["kind"])
        problems.append(f"default privileges of {r['owner']} give {r['grantee']} new {kind}")
        fixes.append(
            f"ALTER DEFAULT PRIVILEGES FOR ROLE {r['owner']} IN SCHEMA hardening "
            f"REVOKE ALL ON {kind} FROM {r['grantee']};"
        )
    if not problems:
        return True, "only the tenant resolver and the report-mode hook are open, as needed", ""
    return False, _names(sorted(set(problems)), 6), " ".join(dict.fromkeys(fixes).keys())


# Objects initdb put in pg_catalog have OIDs below FirstNormalObjectId (16384) and belong to the
# bootstrap superuser (OID 10). Anything else there was added or taken over later: a function
# that shadows a built-in for every schema, or a replaced one.
_FIRST_NORMAL_OID = 16384
_PG_CATALOG_INTRUDERS = """
    SELECT kind, name, owner FROM (
        SELECT 'function' AS kind, p.oid::regprocedure::text AS name, p.proowner AS owner_oid,
               p.oid, 'pg_proc'::regclass AS catalog
        FROM pg_catalog.pg_proc p WHERE p.pronamespace = 'pg_catalog'::regnamespace
        UNION ALL
        SELECT CASE c.relkind WHEN 'v' THEN 'view' WHEN 'S' THEN 'sequence' ELSE 'relation' END,
               c.oid::regclass::text, c.relowner, c.oid, 'pg_class'::regclass
        FROM pg_catalog.pg_class c WHERE c.relnamespace = 'pg_catalog'::regnamespace
        UNION ALL
        SELECT 'type', t.oid::regtype::text, t.typowner, t.oid, 'pg_type'::regclass
        FROM pg_catalog.pg_type t WHERE t.typnamespace = 'pg_catalog'::regnamespace
        UNION ALL
        SELECT 'operator', o.oid::regoperator::text, o.oprowner, o.oid, 'pg_operator'::regclass
        FROM pg_catalog.pg_operator o WHERE o.oprnamespace = 'pg_catalog'::regnamespace
    ) o
    CROSS JOIN LATERAL (SELECT pg_catalog.pg_get_userbyid(o.owner_oid) AS owner) w
    WHERE (o.oid >= %(first)s OR o.owner_oid <> 10)
      -- an extension's own members (installed into pg_catalog by CREATE EXTENSION) are its
      -- business; extensions are listed by the migration plan.
      AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d
                      WHERE d.classid = o.catalog AND d.objid = o.oid AND d.deptype = 'e')
    ORDER BY 1, 2
"""


@check(
    "pg_catalog_untouched",
    "pg_catalog holds only what initdb put there (no added or taken-over functions, types, "
    "operators or relations)",
)
def check_pg_catalog(conn: psycopg.Connection, ctx: CheckContext) -> tuple[bool, str, str]:
    rows = _rows(conn, _PG_CATALOG_INTRUDERS, {"first": _FIRST_NORMAL_OID})
    if not rows:
        return True, "every object in pg_catalog is initdb's, owned by the bootstrap superuser", ""
    found = [f"{r['kind']} {r['name']} (owner {r['owner']})" for r in rows]
    return (
        False,
        _names(found, 5),
        "find out who added it and why (a superuser did: see the audit seals and the server "
        "log), then DROP it; nothing the kit ships lives in pg_catalog.",
    )


# --- running --------------------------------------------------------------------------------------


def describe_database(url: str) -> str:
    """Host and database name for the report, never the password."""
    try:
        info = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "(unparseable URL)"
    host = info.get("host") or "localhost"
    if host.startswith("/"):
        host = "local socket"
    return f"{info.get('dbname') or info.get('user') or '?'} on {host}:{info.get('port') or 5432}"


def run_checks(
    conn: psycopg.Connection, ctx: CheckContext | None = None, names: Sequence[str] | None = None
) -> list[CheckLine]:
    """Run the checks in checklist order; a check that errors is a red line, not a crash."""
    ctx = ctx or CheckContext()
    lines = []
    for name, title, fn in CHECKS:
        if names is not None and name not in names:
            continue
        try:
            with conn.transaction():  # a savepoint: one broken check does not abort the rest
                lines.append(fn(conn, ctx))
        except (psycopg.Error, HardeningError, RuntimeError, OSError, ValueError) as exc:
            lines.append(
                CheckLine(
                    name,
                    False,
                    f"check could not run: {type(exc).__name__}: {str(exc).strip()[:300]}",
                    "fix the error above (is the database migrated? is the role a superuser or "
                    "the schema owner?) and run the status check again.",
                    title,
                )
            )
    return lines


def run_status_check(
    url: str,
    migrations_dir: Path = MIGRATIONS_DIR,
    *,
    store: BackupStore | None = None,
    keyring: Keyring | None = None,
    seal_anchor: Path | None = None,
) -> StatusReport:
    """Run every check in one read-only transaction against ``url``.

    ``store``/``keyring`` let the audit seal line check the store copies and MACs too;
    ``seal_anchor`` (a path, used when the file exists) is the newest seal it must reach.
    """
    started_at = datetime.now(UTC)
    started = time.perf_counter()
    ctx = CheckContext(
        migrations_dir=migrations_dir, store=store, keyring=keyring, seal_anchor=seal_anchor
    )
    with connect(url) as conn:
        conn.read_only = True
        with conn.transaction():
            conn.execute("SELECT set_config('statement_timeout', '30s', true)")
            # A login that may not read the kit's schema is misconfigured, not a red report.
            table_exists(conn, "hardening.schema_migrations")
            lines = run_checks(conn, ctx)
    return StatusReport(
        lines=lines,
        started_at=started_at,
        seconds=time.perf_counter() - started,
        database=describe_database(url),
        migrations_dir=str(migrations_dir),
    )
